"""Privacy and trust, one run: secure aggregation, differential privacy, poisoning under secure aggregation, cheating.

    python bench/trust.py [--quick] [--json] [--only secagg,secagg_fleet,dp,cheating]

Each section is its own benchmark with a ``run(quick)`` function; this one runs them in turn and prints one table
per section, then one JSON object on the last line holding every section's figures and whether its targets were met:

- ``secagg`` and ``poisoned_secagg`` (bench/trust_secagg.py): bytes and wall time per round with secure
  aggregation vs without, cohorts of 8 and 32 with 0/10/30% dropouts; accuracy vs the unmasked run; 10% of cars
  sending scaled or sign-flipped updates while secure aggregation is on, vs the clean run.
- ``secagg_fleet`` (bench/trust_secagg_fleet.py): the same through a real coordinator process and a cohort of 8
  agent processes (6 with --quick): bytes and wall time per round, secure vs the same job plain, with 0, 1 and 2
  cars of the cohort frozen after masking in every round; accuracy vs the plain run.
- ``dp`` (bench/trust_dp.py): final accuracy and epsilon at delta 1e-5 for noise multipliers giving epsilon about
  1, 3 and 8, beside the non-private run.
- ``cheating`` (bench/trust_cheating.py): 10% of inference cars return wrong results through the real coordinator
  app: the fraction caught, wrong rows delivered to tenants, the extra compute spent on checks.

Writes bench/results/trust.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

SECTIONS = {"secagg": "trust_secagg", "secagg_fleet": "trust_secagg_fleet", "dp": "trust_dp",
            "cheating": "trust_cheating"}
"""Section name -> the module whose ``run(quick) -> dict`` measures it."""


def _scalars(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """The figures of a result as (dotted name, value) rows, lists of rows left to ``_tables``."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _scalars(v, f"{prefix}{k}.")
        elif not isinstance(v, list):
            out.append((f"{prefix}{k}", v))
    return out


def _tables(d: dict[str, Any], prefix: str = "") -> list[tuple[str, list[dict[str, Any]]]]:
    """Every list of row dicts in a result, by dotted name."""
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _tables(v, f"{prefix}{k}.")
        elif isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            out.append((f"{prefix}{k}", v))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def print_section(name: str, result: dict[str, Any]) -> None:
    print(f"\n== {name} ==")
    for title, rows in _tables(result):
        cols = list(dict.fromkeys(c for r in rows for c in r))
        cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        print(f"-- {title}")
        print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
        for row in cells:
            print("  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)))
    for key, value in _scalars(result):
        print(f"{key:>40}  {_fmt(value)}")


def run(quick: bool, only: list[str] | None = None) -> dict[str, Any]:
    summary: dict[str, Any] = {"quick": quick}
    for section in only or list(SECTIONS):
        module = importlib.import_module(SECTIONS[section])
        t0 = time.perf_counter()
        result = module.run(quick)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        summary[section] = result
        print_section(section, result)
    met: dict[str, Any] = {}
    for section in (s for s in SECTIONS if s in summary):
        # A module may measure several of the figures (secagg and poisoned_secagg): each keeps its own flag.
        parts = {k: v["met"] for k, v in summary[section].items() if isinstance(v, dict) and "met" in v}
        met.update(parts or {section: summary[section].get("met")})
    summary["met"] = met
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller fleets and fewer rounds (minutes, not an hour)")
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    parser.add_argument("--only", default="", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    unknown = sorted(set(only or []) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; expected any of {', '.join(SECTIONS)}")
    summary = run(args.quick, only)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / ("trust_quick.json" if args.quick else "trust.json")).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
