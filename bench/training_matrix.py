"""Every fleetgrid strategy's shipped defaults over a matrix of fleets, against Flower and centralized training.

Runs the in-process harness (``SimulatedFleet``) for each cell (task, Dirichlet alpha, cars, churn) and seed:

- fleetgrid ``diloco_int4``, ``diloco_int8``, ``fedavg_fp32``, ``fedadam``, ``fedbuff``: each strategy's config
  class with its defaults, changed only in the budget every peer shares (rounds, local steps H), the seed, the
  compression the label names, and the reports wanted per round, capped so the over-selected cohort fits a small fleet
  (``min(default, cars // over_selection)``). FedBuff gets ``rounds x reports per round / K`` versions: as many
  reports as a synchronous strategy. No setting is tuned per cell. ``diloco_int4_down2`` is ``diloco_int4`` with
  each new global version sent down as a 2-bit (ternary) delta: the coordinator's error feedback keeps the global
  on what the cars can rebuild exactly; ``diloco_int4_scaffold`` (``..05``) is ``diloco_int4`` with SCAFFOLD-style
  drift correction of strength 1 (0.5) (``DiLoCoConfig.drift_correction``; each car's mean gradient goes up and the
  fleet's down, int4-coded, counted); ``diloco_int4_fp32snap`` is ``diloco_int4`` without the int8 compact
  snapshot on the downlink (``StrategyConfig.snapshot_bits`` None: a car far behind fetches the exact float32
  snapshot, and a car's first download is one); ``diloco_int4_nola`` is ``diloco_int4`` whose cars train on the
  plain loss, not the logit-adjusted one (``LocalTrainingConfig.logit_adjustment`` 0; 1 is DiLoCo's default),
  ``diloco_int4_la05`` on the adjusted one at tau 0.5; ``fedbuff_nola`` and ``fedadam_nola`` are ``fedbuff`` and
  ``fedadam`` on the plain loss, ``fedbuff_lr1`` is ``fedbuff`` with server lr 1.0 (its default before 0.5);
- Flower ``flower_fedavg``, ``flower_fedadam``, ``flower_fedprox`` (``bench/flower_peers.py``; skipped with a
  message where Flower is not installed): Flower's defaults, the same rounds, H, partition, batch order and cars
  asked per round, the cars' local loop being fleetgrid FedAvg's on the plain loss (Flower has no logit adjustment);
- ``centralized``: all cars' data on one machine, AdamW lr 3e-3 with a cosine schedule, batch as the cars', for the
  budget's optimizer steps, ``rounds x reports per round x H`` (a synchronous fleet with churn does fewer, as its
  partial reports count; Flower trains every car it asks, 1.3x as many without churn); ``ceiling``: the same for
  ``--ceiling-factor`` times the steps of the default cohort; ``sync_dp``: synchronous data-parallel training of
  the same cohort for the same wall clock (``rounds x H`` all-reduced steps of every reporting car's batch, no
  churn), the run the byte ratio ``vs syncDP`` is taken against, so a row shows what its bytes saved cost.

Churn "on" preempts half of the dispatched cars at a random step (they report partial work; Flower's fail). The char
LM is split by source file, so alpha does not apply to it (its rows show alpha "-"). Bytes are counted as
``bench/training_runs.py`` says: every upload sent (refused ones too), every download (revoked and retried work
too), each fleetgrid car's first being the whole model it trains from, as a real car holding none fetches it;
``sync_dp_bytes = 2 x params x 4 B x local steps done``.

Per row: mean, min and max over seeds of quality (accuracy, or perplexity for the char LM) and held-out loss, bytes
up and down, quality relative to centralized, the ceiling and sync DP (points for accuracy, a ratio for perplexity),
``sync_dp_bytes / bytes moved``, and ``bytes_vs_flower``: Flower FedAvg's bytes until its global first matched the
row's final quality (all its bytes if it never did) over the row's bytes. The issue's targets are checked per row.

    python bench/training_matrix.py --json                     # the whole matrix (hours on 2 cores)
    python bench/training_matrix.py --quick --json --png m.png  # a subset in minutes
    python bench/training_matrix.py --tasks mnist1d --alphas 0.3 --cars 16 --churn on --seeds 0 \\
        --strategies diloco_int4,flower_fedavg                  # one cell
    python bench/training_matrix.py --strategies diloco_int4,flower_fedavg --reuse before.json --json  # Flower reused

``bench/training.py`` runs a point of the matrix through the real coordinator and agents
(``--alpha``, ``--cars``, ``--seed``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

import torch
from tqdm import tqdm
from training_matrix_report import markdown, plot, print_table
from training_runs import CENTRAL_LR, TASKS, Task, centralized, fleet_run, sync_dp_bytes

from fleetgrid.workloads.training.compression import CompressionConfig
from fleetgrid.workloads.training.config import (
    DiLoCoConfig,
    FedAdamConfig,
    FedAvgConfig,
    FedBuffConfig,
    StrategyConfig,
    to_dict,
)
from fleetgrid.workloads.training.simulate import SimulationConfig
from fleetgrid.workloads.training.tasks import DataSpec, build_model

FLEET_PEERS = {  # label -> (strategy, config class, uplink bits, downlink bits)
    "diloco_int4": ("diloco", DiLoCoConfig, 4, 4),
    "diloco_int4_down2": ("diloco", DiLoCoConfig, 4, 2),  # the downlink in 256-value chunks (shipped_config)
    "diloco_int4_scaffold": ("diloco", DiLoCoConfig, 4, 4),  # with drift correction (PEER_SETTINGS)
    "diloco_int4_scaffold05": ("diloco", DiLoCoConfig, 4, 4),
    "diloco_int4_fp32snap": ("diloco", DiLoCoConfig, 4, 4),  # float32 snapshots only (PEER_SETTINGS)
    "diloco_int4_nola": ("diloco", DiLoCoConfig, 4, 4),  # without the logit-adjusted loss (LOCAL_SETTINGS)
    "diloco_int4_la05": ("diloco", DiLoCoConfig, 4, 4),  # with it at tau 0.5
    "diloco_int8": ("diloco", DiLoCoConfig, 8, 8),
    "fedavg_fp32": ("fedavg", FedAvgConfig, None, None),
    "fedbuff": ("fedbuff", FedBuffConfig, None, None),
    "fedbuff_nola": ("fedbuff", FedBuffConfig, None, None),  # without the logit-adjusted loss
    "fedbuff_lr1": ("fedbuff", FedBuffConfig, None, None),  # server lr 1.0, its default before 2026-12-03
    "fedadam": ("fedadam", FedAdamConfig, None, None),
    "fedadam_nola": ("fedadam", FedAdamConfig, None, None),  # without the logit-adjusted loss
}
PEER_SETTINGS = {  # label -> config fields it changes beyond the budget and compression
    "diloco_int4_scaffold": {"drift_correction": 1.0},
    "diloco_int4_scaffold05": {"drift_correction": 0.5},
    "diloco_int4_fp32snap": {"snapshot_bits": None},
    "fedbuff_lr1": {"server_lr": 1.0},
}
LOCAL_SETTINGS = {  # label -> fields of its cars' local loop it changes
    "diloco_int4_nola": {"logit_adjustment": 0.0},
    "diloco_int4_la05": {"logit_adjustment": 0.5},
    "fedbuff_nola": {"logit_adjustment": 0.0},
    "fedadam_nola": {"logit_adjustment": 0.0},
}
FLOWER_PEERS = ("flower_fedavg", "flower_fedadam", "flower_fedprox")
PEERS = (*FLEET_PEERS, *FLOWER_PEERS)
REFERENCES = ("centralized", "ceiling", "sync_dp")
"""Runs every cell gets, whatever peers are asked for; each peer's quality is compared with each."""


@dataclass(frozen=True, kw_only=True)
class Budget:
    """What every peer of a task gets; nothing here is a strategy setting."""

    rounds: int
    """Global versions of a synchronous strategy (Flower rounds too)."""
    local_steps: int | None = None
    """H for every peer; None keeps the shipped default."""
    num_samples: int = 10000
    """MNIST-1D samples generated (80% train)."""
    max_files: int | None = None
    """Standard-library files the char LM reads (None: all)."""
    eval_windows: int = 512
    """Held-out char LM windows."""
    ceiling_factor: float = 4.0


@dataclass(frozen=True)
class Cell:
    task: str
    alpha: float | None
    cars: int
    churn: bool

    def spec(self, budget: Budget, seed: int) -> DataSpec:
        return DataSpec(dataset=TASKS[self.task].dataset, num_vehicles=self.cars, seed=seed,
                        alpha=self.alpha or 1.0, num_samples=budget.num_samples, max_files=budget.max_files)

    @property
    def key(self) -> dict:
        return {"task": self.task, "alpha": self.alpha, "cars": self.cars, "churn": self.churn}


BUDGETS = {"mnist1d": Budget(rounds=30), "charlm": Budget(rounds=10)}
QUICK_BUDGETS = {"mnist1d": Budget(rounds=8, ceiling_factor=2.0),
                 "charlm": Budget(rounds=2, local_steps=8, max_files=40, eval_windows=256, ceiling_factor=1.0)}


def shipped_config(label: str, budget: Budget, cars: int | None, seed: int) -> tuple[str, StrategyConfig, int]:
    """(strategy, config, versions) for ``label``: the config class's defaults with the budget applied, on a
    fleet of ``cars`` (None: one large enough for the default cohort)."""
    strategy, cls, bits, down_bits = FLEET_PEERS[label]
    default = cls()
    rounds = default.rounds
    wanted = rounds.clients_per_round
    if cars is not None:
        wanted = max(rounds.min_reports, min(wanted, int(cars / rounds.over_selection)))
    local = dataclasses.replace(default.local, **LOCAL_SETTINGS.get(label, {}))
    if budget.local_steps is not None:
        local = dataclasses.replace(local, steps=budget.local_steps)
    if bits is not None:
        local = dataclasses.replace(local, compression=dataclasses.replace(local.compression, bits=bits))
    changes: dict = {"local": local, "rounds": dataclasses.replace(rounds, clients_per_round=wanted), "seed": seed}
    if down_bits is not None:  # ternary values want a scale per 256 (what is owed stays nearer each value's size)
        chunk = 256 if down_bits == 2 else default.downlink.chunk_size
        changes["downlink"] = dataclasses.replace(default.downlink, bits=down_bits, chunk_size=chunk)
    config = dataclasses.replace(default, **changes, **PEER_SETTINGS.get(label, {}))
    versions = budget.rounds
    if isinstance(config, FedBuffConfig):  # as many usable reports as a synchronous strategy gets
        versions = math.ceil(budget.rounds * wanted / config.buffer_size)
    return strategy, config, versions


def budget_steps(budget: Budget, cars: int | None) -> int:
    """The optimizer steps a synchronous fleet's budget holds: rounds x reports per round x H."""
    _, config, _ = shipped_config("diloco_int4", budget, cars, 0)
    return budget.rounds * config.rounds.clients_per_round * config.local.steps


class Saved:
    """The reference and Flower runs of earlier ``--json`` outputs, taken instead of running them again where the
    cell, seed and task budget match (the ceiling's ``ceiling_factor`` too), so a rerun of the fleetgrid rows after
    a fleetgrid change costs only those. Each taken run says where it came from (``reused_from``)."""

    reusable = (*REFERENCES, *FLOWER_PEERS)

    def __init__(self, paths: list[str]) -> None:
        self.runs: dict[tuple, tuple[dict, dict]] = {}  # (cell key, seed, label) -> (run, its task's budget)
        for path in paths:
            saved = _load_output(path)
            for run in saved["runs"]:
                budget = saved["budgets"].get(run.get("task"))
                if run.get("label") in self.reusable and isinstance(budget, dict):
                    key = (run["task"], run["alpha"], run["cars"], run["churn"], run["seed"], run["label"])
                    self.runs[key] = (run | {"reused_from": path}, budget)

    def get(self, cell: Cell, seed: int, label: str, budget: Budget) -> dict | None:
        found = self.runs.get((cell.task, cell.alpha, cell.cars, cell.churn, seed, label))
        if found is None:
            return None
        run, saved_budget = found
        wanted = dataclasses.asdict(budget)
        if label != "ceiling":
            wanted.pop("ceiling_factor")
        return dict(run) if all(saved_budget.get(k) == v for k, v in wanted.items()) else None


def _load_output(path: str) -> dict:
    """The last line of a ``--json`` output; ValueError naming the file if it is not one."""
    try:
        with open(path) as f:
            saved = json.loads(f.read().strip().splitlines()[-1])
        if not isinstance(saved.get("rows"), list) or not isinstance(saved.get("budgets"), dict):
            raise KeyError("rows and budgets")
        saved.setdefault("runs", [])
        return saved
    except (OSError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"{path}: not the output of training_matrix.py --json ({exc!r})") from exc


def run_seed(cell: Cell, seed: int, budget: Budget, peers: list[str], cache: dict, bar: tqdm | None,
             saved: Saved | None = None) -> dict:
    """Every wanted peer on one cell and seed: {label: result}; centralized runs are cached across cells, and
    reference and Flower runs come from ``saved`` where it holds them."""
    task = TASKS[cell.task]
    spec = cell.spec(budget, seed)
    sim = SimulationConfig(preempt_prob=0.5 if cell.churn else 0.0, seed=seed)
    out: dict[str, dict] = {}

    def step(label: str) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{cell.task} a={cell.alpha} cars={cell.cars} churn={cell.churn} s={seed} {label}")

    for label in peers:
        if label in FLEET_PEERS:
            step(label)
            strategy, config, versions = shipped_config(label, budget, cell.cars, seed)
            out[label] = fleet_run(task, label, strategy, config, spec, sim, versions, seed=seed,
                                   eval_windows=budget.eval_windows, evaluate_every_version=False)
            _advance(bar)
    reused = {label: run for label in (*[p for p in peers if p in FLOWER_PEERS], *REFERENCES)
              if saved is not None and (run := saved.get(cell, seed, label, budget)) is not None}
    for label, run in reused.items():
        if label in FLOWER_PEERS:
            out[label] = run
            _advance(bar)
    wanted = [p for p in peers if p in FLOWER_PEERS and p not in reused]
    if wanted:
        out |= _flower_runs(cell, seed, budget, wanted, bar, step)
    batch = DiLoCoConfig().local.batch_size
    ceiling = int(budget.ceiling_factor * budget_steps(budget, None))
    for label, n in (("centralized", budget_steps(budget, cell.cars)), ("ceiling", ceiling)):
        step(label)
        key = (cell.task, seed, n, batch, budget.num_samples, budget.max_files, budget.eval_windows)
        if label in reused:
            out[label] = reused[label]
        else:
            if key not in cache:
                cache[key] = centralized(task, spec, n, seed, batch_size=batch, eval_windows=budget.eval_windows)
            out[label] = cache[key] | {"label": label}
        _advance(bar)
    step("sync_dp")
    out["sync_dp"] = reused.get("sync_dp") or sync_dp_reference(task, spec, budget, cell.cars, seed)
    _advance(bar)
    return out


def sync_dp_reference(task: Task, spec: DataSpec, budget: Budget, cars: int, seed: int) -> dict:
    """What the bytes are compared with: synchronous data-parallel training of the same cohort for the same wall
    clock, one all-reduced step of the cohort's batches per local step (``rounds x H`` steps of ``reports x batch``
    examples, no churn), which moves ``sync_dp_bytes`` for its ``reports x steps`` car-steps. Its AdamW lr grows
    with the square root of the batch (Malladi et al. 2022): at centralized's lr, 10x the batch reached 89-91% on
    MNIST-1D where the scaled lr reaches ~95%, which would flatter every fleet row."""
    _, config, _ = shipped_config("diloco_int4", budget, cars, 0)
    reports, local = config.rounds.clients_per_round, config.local
    steps = budget.rounds * local.steps
    run = centralized(task, spec, steps, seed, batch_size=reports * local.batch_size,
                      lr=CENTRAL_LR * math.sqrt(reports), eval_windows=budget.eval_windows)
    params = sum(p.numel() for p in build_model(task.model).parameters())
    moved = sync_dp_bytes(params, reports * steps)
    return run | {"label": "sync_dp", "bytes_up": moved // 2, "bytes_down": moved // 2, "steps": reports * steps,
                  "reduction_vs_sync_dp": 1.0}


def _advance(bar: tqdm | None) -> None:
    if bar is not None:
        bar.update()


@functools.cache
def _flower():
    """bench/flower_peers.py, or None (said once) where Flower is not installed."""
    try:
        import flower_peers
    except ImportError as exc:
        print(f"Flower columns skipped: Flower is not installed ({exc}); pip install -e '.[bench]'", file=sys.stderr)
        return None
    return flower_peers


def _flower_runs(cell: Cell, seed: int, budget: Budget, labels: list[str], bar, step) -> dict:
    flower = _flower()
    if flower is None:
        for _ in labels:
            _advance(bar)
        return {}
    _, config, _ = shipped_config("fedavg_fp32", budget, cell.cars, seed)
    fb = flower.FlowerBudget(rounds=budget.rounds, cohort=min(cell.cars, config.rounds.cohort_size),
                      local=dataclasses.replace(config.local, compression=CompressionConfig(),
                                                logit_adjustment=0.0),  # Flower's clients: the plain loss
                      preempt_prob=0.5 if cell.churn else 0.0)
    out = {}
    for label in labels:
        step(label)
        out[label] = flower.run_flower(label, TASKS[cell.task], cell.spec(budget, seed), fb, seed=seed,
                                eval_windows=budget.eval_windows)
        _advance(bar)
    return out


def compare(task: Task, runs: dict[str, dict]) -> None:
    """Add each peer's quality vs centralized and the ceiling, and its bytes vs Flower's at equal quality."""
    refs = {ref: runs[ref]["quality"] for ref in REFERENCES if ref in runs}
    for label, r in runs.items():
        if label in REFERENCES:
            continue
        for ref, q in refs.items():
            r[f"vs_{ref}"] = r["quality"] / q
            if task.metric == "accuracy":
                r[f"points_vs_{ref}"] = 100 * (r["quality"] - q)
        flower = runs.get("flower_fedavg")
        if flower is not None and label != "flower_fedavg":
            reached = next((b for q, b in flower["curve"] if task.at_least_as_good(q, r["quality"])), None)
            r["flower_reached_quality"] = reached is not None
            r["bytes_vs_flower"] = (reached or flower["bytes_up"] + flower["bytes_down"]) / (
                r["bytes_up"] + r["bytes_down"])


def summarize(cell: Cell, seeds: list[dict[str, dict]]) -> list[dict]:
    """One row per peer: mean, min and max over seeds of every figure."""
    rows = []
    fields = ("quality", "accuracy", "loss", "bytes_up", "bytes_down", "initial_download_bytes", "steps",
              "vs_centralized", "vs_ceiling", "vs_sync_dp", "points_vs_centralized", "points_vs_ceiling",
              "points_vs_sync_dp", "reduction_vs_sync_dp",
              "bytes_vs_flower", "seconds")
    for label in seeds[0]:
        row = {**cell.key, "peer": label, "seeds": len(seeds)}
        for f in fields:
            values = [s[label][f] for s in seeds if f in s[label]]
            if values:
                row[f] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                          "std": statistics.pstdev(values)}
        reached = [s[label]["flower_reached_quality"] for s in seeds if "flower_reached_quality" in s[label]]
        if reached:
            row["flower_reached_quality"] = sum(reached)
        row["targets"] = targets(cell, row) if label in FLEET_PEERS else {}
        rows.append(row)
    return rows


def targets(cell: Cell, row: dict) -> dict[str, bool]:
    """The issue's targets, on the row's mean (quality) and on its worst seed (bytes)."""
    out = {}
    if "points_vs_centralized" in row:
        allowed = 1.5 if (cell.alpha or 1.0) >= 0.3 else 3.0
        out[f"within_{allowed}_points"] = row["points_vs_centralized"]["mean"] >= -allowed
    elif "vs_centralized" in row:
        out["perplexity_within_15%"] = row["vs_centralized"]["mean"] <= 1.15
    if "reduction_vs_sync_dp" in row:
        out["500x_vs_sync_dp"] = row["reduction_vs_sync_dp"]["min"] >= 500
    if "bytes_vs_flower" in row:
        out["4x_vs_flower_at_quality"] = row["bytes_vs_flower"]["min"] >= 4
    return out


def cells(tasks: list[str], alphas: list[float], cars: list[int], churn: list[bool]) -> list[Cell]:
    out = []
    for task in tasks:
        for alpha in (alphas if TASKS[task].dataset == "mnist1d" else [None]):
            out += [Cell(task, alpha, n, c) for n in cars for c in churn]
    return out


def run_matrix(cell_list: list[Cell], seeds: list[int], budgets: dict[str, Budget], peers: list[str],
               *, progress: bool = True, saved: Saved | None = None) -> tuple[list[dict], list[dict]]:
    """(rows, runs): the per-peer summaries of every cell, and every single run behind them (reference and Flower
    runs taken from ``saved`` where it holds them)."""
    cache: dict = {}
    rows, runs = [], []
    work = len(cell_list) * len(seeds) * (len(peers) + 3)
    with tqdm(total=work, desc="matrix", unit="run", disable=not progress, file=sys.stderr) as bar:
        for cell in cell_list:
            per_seed = []
            for seed in seeds:
                result = run_seed(cell, seed, budgets[cell.task], peers, cache, bar, saved)
                compare(TASKS[cell.task], result)
                per_seed.append(result)
                runs += [{**cell.key, "seed": seed, **r} for r in result.values()]
            rows += summarize(cell, per_seed)
    return rows, runs


def _csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def _churn(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(f"churn is 'on' or 'off', got {text!r}")
    return text == "on"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print a last line of JSON")
    ap.add_argument("--quick", action="store_true", help="a subset: MNIST-1D alpha 0.3 and 0.1, 16 cars, churn on, "
                    "seed 0, 8 rounds, and one tiny char LM cell (4 cars, 2 rounds of H=8, 40 files)")
    ap.add_argument("--tasks", type=_csv(str), default=list(TASKS))
    ap.add_argument("--alphas", type=_csv(float), default=[0.1, 0.3, 1.0])
    ap.add_argument("--cars", type=_csv(int), default=[8, 16, 64])
    ap.add_argument("--churn", type=_csv(_churn), default=[False, True],
                    help="comma-separated 'off' (no preemption) and/or 'on' (half the dispatched cars preempted)")
    ap.add_argument("--seeds", type=_csv(int), default=[0, 1, 2])
    ap.add_argument("--strategies", type=_csv(str), default=list(PEERS), help=f"peers to run, from {list(PEERS)}")
    ap.add_argument("--rounds", type=int, default=None, help="rounds for every task (default: per task)")
    ap.add_argument("--local-steps", type=int, default=None, help="H for every peer (default: shipped default)")
    ap.add_argument("--ceiling-factor", type=float, default=None, help="ceiling steps / budget steps")
    ap.add_argument("--num-samples", type=int, default=None, help="MNIST-1D samples generated (default 10000)")
    ap.add_argument("--max-files", type=int, default=None, help="stdlib files the char LM reads (default: all)")
    ap.add_argument("--png", default=None, help="write quality vs bytes moved per cell to this PNG")
    ap.add_argument("--markdown", nargs="?", const="diloco_int4", default=None, metavar="PEER",
                    help="also print a Markdown table, one line per cell, PEER's figures first (diloco_int4)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--from-json", nargs="+", default=None, metavar="FILE",
                    help="run nothing: show earlier --json outputs (their last lines) together, each cell's runs "
                    "pooled over the files' seeds")
    ap.add_argument("--reuse", nargs="+", default=None, metavar="FILE",
                    help="take the reference and Flower runs of earlier --json outputs where cell, seed and budget "
                    "match, and run only the rest (e.g. the fleetgrid rows after a fleetgrid change)")
    args = ap.parse_args(argv)
    if args.from_json:
        return show_saved(args.from_json, focus=args.markdown, png=args.png, as_json=args.json)
    unknown = sorted(set(args.strategies) - set(PEERS)) + sorted(set(args.tasks) - set(TASKS))
    if unknown:
        ap.error(f"unknown strategies or tasks {unknown}; accepted: {list(PEERS)} and {list(TASKS)}")
    try:
        saved = Saved(args.reuse) if args.reuse else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    torch.set_num_threads(1)

    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    overrides = {k: getattr(args, k) for k in ("rounds", "local_steps", "ceiling_factor", "num_samples", "max_files")
                 if getattr(args, k) is not None}
    budgets = {t: dataclasses.replace(b, **overrides) for t, b in budgets.items()}
    if args.quick:
        cell_list = [Cell("mnist1d", a, 16, True) for a in (0.3, 0.1)] + [Cell("charlm", None, 4, True)]
        cell_list = [c for c in cell_list if c.task in args.tasks]
        seeds = [0]
    else:
        cell_list, seeds = cells(args.tasks, args.alphas, args.cars, args.churn), args.seeds

    started = time.perf_counter()
    rows, runs = run_matrix(cell_list, seeds, budgets, args.strategies, progress=not args.no_progress, saved=saved)
    reused = sorted({r["reused_from"] for r in runs if "reused_from" in r})
    if reused:
        print(f"reference and Flower runs reused from: {', '.join(reused)}")
    wall = time.perf_counter() - started
    print_table(rows, budgets)
    print(f"wall time: {wall:.0f} s")
    if args.markdown:
        print(markdown(rows, focus=args.markdown))
    if args.png:
        plot(rows, args.png)
        print(f"figure: {args.png}")
    if args.json:
        configs = {t: {label: to_dict(shipped_config(label, b, 16, 0)[1]) for label in FLEET_PEERS}
                   for t, b in budgets.items()}
        print(json.dumps({"benchmark": "training_matrix", "args": vars(args), "wall_s": round(wall, 1),
                          "budgets": {t: dataclasses.asdict(b) for t, b in budgets.items()},
                          "configs_16_cars": configs, "rows": rows, "runs": runs}))
    return 0


def show_saved(paths: list[str], *, focus: str | None, png: str | None, as_json: bool = False) -> int:
    """The table (and Markdown, figure) of earlier runs, e.g. a matrix run in pieces: the single runs of every file
    are pooled per cell and seed (a later file's run of the same cell, seed and peer replaces an earlier one), so
    pieces split by seed or by peer show as one row per peer over all its seeds. Files from before runs were saved
    add their rows as they are. ``as_json`` prints a last line of JSON of the pooled rows and runs."""
    rows, budgets, pooled = [], {}, {}
    for path in paths:
        try:
            saved = _load_output(path)
            for task, b in saved["budgets"].items():
                budget = Budget(**b)
                if budgets.setdefault(task, budget) != budget:
                    raise ValueError(f"{path}: its {task} budget {b} differs from an earlier file's "
                                     f"{dataclasses.asdict(budgets[task])}; show runs of one budget together")
        except (ValueError, TypeError) as exc:
            print(exc, file=sys.stderr)
            return 2
        if not saved["runs"]:
            rows += saved["rows"]
        for run in saved["runs"]:
            cell = Cell(run["task"], run["alpha"], run["cars"], run["churn"])
            pooled.setdefault(cell, {}).setdefault(run["seed"], {})[run["label"]] = dict(run)
    for cell, by_seed in pooled.items():
        seeds = [by_seed[s] for s in sorted(by_seed)]
        for runs in seeds:
            compare(TASKS[cell.task], runs)
        labels = dict.fromkeys(label for runs in seeds for label in runs)
        for label in labels:
            rows += summarize(cell, [{label: runs[label]} for runs in seeds if label in runs])
    print_table(rows, budgets)
    if focus:
        print(markdown(rows, focus=focus))
    if png:
        plot(rows, png)
        print(f"figure: {png}")
    if as_json:
        runs = [run for by_seed in pooled.values() for _, by_label in sorted(by_seed.items())
                for run in by_label.values()]  # each run carries its cell and seed already
        print(json.dumps({"benchmark": "training_matrix", "merged_from": paths,
                          "budgets": {t: dataclasses.asdict(b) for t, b in budgets.items()},
                          "rows": rows, "runs": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
