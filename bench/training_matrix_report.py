"""How ``bench/training_matrix.py`` shows its rows: a text table and a figure of quality vs bytes moved."""

from __future__ import annotations

from collections import defaultdict

__all__ = ["markdown", "plot", "print_table"]

_FLOWER_MARKERS = {"flower_fedavg": "s", "flower_fedadam": "D", "flower_fedprox": "^"}
_HOLLOW = {*_FLOWER_MARKERS, "sync_dp"}


def _cell_name(row: dict) -> str:
    alpha = "-" if row["alpha"] is None else f"{row['alpha']:g}"
    return f"{row['task']} a={alpha} cars={row['cars']} churn={'on' if row['churn'] else 'off'}"


def _quality(row: dict) -> str:
    q = row["quality"]
    if row["task"] == "mnist1d":
        return f"{100 * q['mean']:.1f} [{100 * q['min']:.1f}-{100 * q['max']:.1f}]"
    return f"{q['mean']:.2f} [{q['min']:.2f}-{q['max']:.2f}]"


def _vs(row: dict, key: str) -> str:
    """Points for accuracy, a ratio for perplexity."""
    if f"points_{key}" in row:
        p = row[f"points_{key}"]
        return f"{p['mean']:+.1f} [{p['min']:+.1f},{p['max']:+.1f}]"
    if key in row:
        return f"x{row[key]['mean']:.2f}"
    return "-"


def _x(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    v = row[key]
    return f"{v['mean']:.0f}x" if v["mean"] >= 100 else f"{v['mean']:.1f}x"


def print_table(rows: list[dict], budgets: dict) -> None:
    """One block per cell: each peer's quality (mean [min-max] over seeds), loss, bytes and ratios."""
    for task, b in budgets.items():
        print(f"{task}: {b.rounds} rounds, H={b.local_steps or 'shipped default'}; quality = "
              f"{'accuracy %' if task == 'mnist1d' else 'perplexity'} (mean [min-max] over seeds)")
    header = (f"{'peer':<21}{'quality':>24}{'loss':>7}{'MB up':>8}{'MB down':>8}{'vs central':>22}"
              f"{'vs ceiling':>22}{'q vs syncDP':>22}{'vs syncDP':>10}{'vs flwr@q':>10}{'steps':>8}  targets missed")
    by_cell: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_cell[_cell_name(row)].append(row)
    for name, cell_rows in by_cell.items():
        print(f"\n{name} ({cell_rows[0]['seeds']} seed(s))")
        print(header)
        for r in cell_rows:
            missed = [k for k, ok in r.get("targets", {}).items() if not ok]
            print(f"{r['peer']:<21}{_quality(r):>24}{r['loss']['mean']:>7.2f}"
                  f"{r['bytes_up']['mean'] / 1e6:>8.2f}{r['bytes_down']['mean'] / 1e6:>8.2f}"
                  f"{_vs(r, 'vs_centralized'):>22}{_vs(r, 'vs_ceiling'):>22}{_vs(r, 'vs_sync_dp'):>22}"
                  f"{_x(r, 'reduction_vs_sync_dp'):>10}"
                  f"{_x(r, 'bytes_vs_flower'):>10}{r['steps']['mean']:>8.0f}  "
                  f"{', '.join(missed) if missed else ('-' if not r.get('targets') else 'none')}")


def markdown(rows: list[dict], *, focus: str = "diloco_int4") -> str:
    """A Markdown table, one line per cell: ``focus``'s quality, loss and byte ratios beside every other peer's
    and reference's quality (what the README shows)."""
    by_cell: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        by_cell[_cell_name(row)][row["peer"]] = row
    others = list(dict.fromkeys(r["peer"] for r in rows if r["peer"] != focus))
    lines = [f"| cell (seeds) | {focus} | loss | vs centralized | vs sync DP | bytes vs sync DP | bytes vs Flower | "
             + " | ".join(others) + " |", "|---" * (7 + len(others)) + "|"]
    for name, peers in by_cell.items():
        f = peers.get(focus)
        if f is None:
            continue
        cols = [f"{name} ({f['seeds']})", _quality(f), f"{f['loss']['mean']:.2f}", _vs(f, "vs_centralized"),
                _vs(f, "vs_sync_dp"), _x(f, "reduction_vs_sync_dp"), _x(f, "bytes_vs_flower")]
        cols += [_quality(peers[o]) if o in peers else "-" for o in others]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Quality vs bytes moved (log x; perplexity on log y too), one panel per cell: fleetgrid strategies with
    min-max bars, Flower and synchronous data-parallel as hollow points, centralized (same steps) as a solid line
    and the ceiling as a dashed one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_cell: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_cell[_cell_name(row)].append(row)
    cols = min(3, len(by_cell))
    nrows = -(-len(by_cell) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 4 * nrows), squeeze=False)
    for ax, (name, cell_rows) in zip(axes.flat, by_cell.items(), strict=False):  # spare panels stay empty
        percent = 100 if cell_rows[0]["task"] == "mnist1d" else 1
        for r in cell_rows:
            q = r["quality"]
            if r["peer"] in ("centralized", "ceiling"):
                ax.axhline(percent * q["mean"], color="black", linestyle="-" if r["peer"] == "centralized" else "--",
                           label=r["peer"])
                continue
            moved = r["bytes_up"]["mean"] + r["bytes_down"]["mean"]
            err = [[percent * (q["mean"] - q["min"])], [percent * (q["max"] - q["mean"])]]
            marker = {**_FLOWER_MARKERS, "sync_dp": "P"}.get(r["peer"], "o")
            ax.errorbar([moved], [percent * q["mean"]], yerr=err, fmt=marker, capsize=3, label=r["peer"],
                        markerfacecolor="none" if r["peer"] in _HOLLOW else None)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("bytes moved (up + down)")
        ax.set_ylabel("accuracy %" if percent == 100 else "perplexity (log)")
        if percent == 1:  # a diverged peer's perplexity would flatten every other point
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(by_cell):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
