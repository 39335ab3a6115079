"""Secure aggregation on real cars, in figures: one coordinator process and a cohort of agent processes train the
MNIST-1D CNN with every update masked, against the same job in clear, with 0, 1 and 2 cars of the cohort lost
after masking in every round.

    python bench/trust_secagg_fleet.py [--quick]

Every car is in every round's cohort (``clients_per_round`` = the fleet, no over-selection), so the secure and the
plain job train the same cars on the same shards, with the same seed and the same fixed clip (``norm_bound:
fixed``). A car "drops" as in tests/integration/test_secure_training.py: the first ``k`` cars to log that their
masked input of a round was sent are frozen (SIGSTOP of the agent's process group) before they answer the unmasking
phase (which opens only once every masked input is in), and thawed (SIGCONT) once the round closed; the
coordinator rebuilds their self-masks from their neighbours' shares, so they stay in the sum. The unmasking phase
then waits out ``rounds.secagg_phase_s``, set to 3 s here (30 s by default), which is most of a dropout round's
extra time.

Rows: ``plain`` (float32 updates, the mean weighted by examples), ``plain_int8`` (the same with 8-bit updates, the
baseline of bench/trust_secagg.py's ratios), ``plain_unweighted`` (float32, every report counted once: a trimmed
mean trimming nothing), then ``secure`` with 0, 1 and 2 cars dropped a round. Per row: ``up_per_car`` /
``down_per_car``: the job's bytes as the coordinator counts them (``training.bytes_up`` / ``bytes_down``: update
artifacts, masked inputs, the protocol's messages at their binary size, model downloads) per round and cohort car;
``car_up_per_car`` / ``car_down_per_car``: the same as the cars counted them on the wire (each agent's
``stats.json`` ``train_bytes_up`` / ``down``: artifact bodies, and every secure phase's JSON bodies both ways,
base64 and "not ready yet" polls included); ``ratio``: up + down against ``plain``; ``up_vs_int8`` /
``car_up_vs_int8``: the uplink against ``plain_int8``'s (the issue's target: at most 2x); ``round_s``: mean wall
time between versions (from the history's times, so the first round's start-up is left out); ``dropped``: each
round's ``secagg_dropped`` as the coordinator recorded it; ``accuracy``: held-out accuracy of the final model,
``points_vs_plain`` and ``points_vs_unweighted``.

The secure sum counts every car once, as ``plain_unweighted`` does, where ``plain`` weights cars by their examples
(the Dirichlet split gives them unequal shards): that is the fair comparison for accuracy. What still differs is
the 8-bit grid each clipped update is quantized on, in a random Hadamard rotation fresh each round (stochastic
rounding drawn on the car, so not replayable): the secure model is equal to the unweighted plain one within that
rounding, not bit for bit. Cohorts of 32 and the
exact-sum checks are bench/trust_secagg.py's (every party in one process).

Prints a table and, last, one JSON line; writes bench/results/trust_secagg_fleet.json (``_quick`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

from fleetgrid.client import FleetgridClient
from fleetgrid.localfleet import AgentProcess, CoordinatorProcess, stop_fleet

OUT = Path(__file__).parent / "results"
MASKED = re.compile(r"masked input of secure round (\S+) sent")
PHASE_S = 3.0
"""``rounds.secagg_phase_s``: how long each phase after advertising waits for a missing car."""
MAX_RATIO = 2.0
"""Secure uplink at most this many times ``plain_int8``'s, and whole-round bytes at most this many times ``plain``."""
MAX_POINTS = 2.0
"""Secure within this many points of ``plain_unweighted``: one seed, and the 8-bit grid's stochastic rounding."""


class Fleet:
    """A coordinator and ``cars`` agent processes, reused by every run."""

    def __init__(self, root: Path, cars: int) -> None:
        self.coordinator = CoordinatorProcess(root / "coordinator").start()
        creds = self.coordinator.credentials()
        self.token = creds.tenants["default"]
        self.agents: list[AgentProcess] = []
        for i in range(cars):  # one at a time, so car i enrolls i-th
            agent = AgentProcess(self.coordinator.url, root / f"car-{i}", creds.enroll, name=f"car-{i}",
                                 extra_args=["--heartbeat", "1", "--lease-wait", "1", "--progress-interval",
                                             "0.5"]).start()
            _until(lambda a=agent: (a.state_dir / "enrollment.json").exists() or not a.alive(), 120)
            self.agents.append(agent)
        self._read = [0] * cars
        self.frozen: list[AgentProcess] = []

    def new_masked(self) -> list[tuple[AgentProcess, str]]:
        """(agent, round id) for each "masked input sent" line logged since the last call, in log order per car."""
        seen = []
        for i, agent in enumerate(self.agents):
            path = agent.state_dir / "agent.log"
            with open(path, "rb") as f:
                f.seek(self._read[i])
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # a half-written line is read next time
            self._read[i] += end
            seen += [(agent, round_id) for round_id in MASKED.findall(chunk[:end].decode(errors="replace"))]
        return seen

    def freeze(self, agent: AgentProcess) -> None:
        assert agent.proc is not None
        os.killpg(agent.proc.pid, signal.SIGSTOP)  # the agent and its worker
        self.frozen.append(agent)

    def thaw(self) -> None:
        for agent in self.frozen:
            assert agent.proc is not None
            os.killpg(agent.proc.pid, signal.SIGCONT)
        self.frozen = []

    def car_bytes(self) -> tuple[int, int]:
        """(up, down) training bytes all cars counted themselves so far (``stats.json``, saved after each lease)."""
        up = down = 0
        for agent in self.agents:
            try:
                stats = json.loads((agent.state_dir / "stats.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            up, down = up + stats.get("train_bytes_up", 0), down + stats.get("train_bytes_down", 0)
        return up, down

    def settled_car_bytes(self, quiet_s: float = 2.0, timeout_s: float = 20.0) -> tuple[int, int]:
        """:meth:`car_bytes` once no car has saved for ``quiet_s``: the job is done before the last leases end."""
        last, since = self.car_bytes(), time.monotonic()
        until = since + timeout_s
        while time.monotonic() < until and time.monotonic() - since < quiet_s:
            time.sleep(0.25)
            now = self.car_bytes()
            if now != last:
                last, since = now, time.monotonic()
        return last

    def close(self) -> None:
        self.thaw()
        stop_fleet(self.coordinator, self.agents)


def _drive(fleet: Fleet, client: FleetgridClient, job_id: str, drop: int) -> None:
    """Follow the job to its end, freezing the first ``drop`` cars of each secure round to send their masked input
    and thawing them once the round closed (a new version) or was abandoned (a new round attempt)."""
    frozen_at: tuple[int, int] | None = None  # (version, round attempt) when cars were frozen
    counted: dict[str, int] = {}  # round id -> cars frozen in it
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = client.job(job_id)
        if status.state not in ("running", "queued"):
            return
        now = (status.training.version, status.training.round) if status.training else (0, 0)
        if frozen_at is not None and (now[0] > frozen_at[0] or now[1] > frozen_at[1]):
            fleet.thaw()  # they find their round closed and ask for the next one
            frozen_at = None
        for agent, round_id in fleet.new_masked() if drop else []:
            if counted.get(round_id, 0) < drop:
                fleet.freeze(agent)  # its masked input is in; the unmasking phase is not open yet
                counted[round_id] = counted.get(round_id, 0) + 1
                frozen_at = now
        time.sleep(0.01 if drop else 0.1)


def _until(predicate, timeout_s: float) -> None:
    until = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > until:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


def settings(cars: int, secure: bool, quick: bool, bits: int | None = None, unweighted: bool = False
             ) -> dict[str, Any]:
    """The job's settings; ``unweighted``: every report counts once (a trimmed mean trimming nothing), as in the
    secure sum, instead of the plain mean's weighting by examples."""
    rounds: dict[str, Any] = {"clients_per_round": cars, "over_selection": 1.0, "min_reports": 3, "deadline_s": 120,
                              "max_retries": 3}
    if secure:
        # 2 of 6 cars (quick) is 33%: above the default 30% the masks are dealt to survive
        rounds |= {"secagg_phase_s": PHASE_S, "secagg_max_dropout": 0.34 if quick else 0.3}
    robust: dict[str, Any] = {"norm_bound": "fixed", "max_norm": 5.0}
    if unweighted:
        robust |= {"aggregator": "trimmed_mean", "trim_fraction": 0.0}
    local: dict[str, Any] = {"steps": 20, "batch_size": 32, "lr": 0.05, "momentum": 0.9}
    if bits is not None:
        local["compression"] = {"bits": bits}
    return {"local": local,
            "secure_aggregation": secure, "robust": robust,
            "rounds": rounds, "seed": 0}


def fleet_run(fleet: Fleet, label: str, secure: bool, drop: int, data: dict, rounds: int, quick: bool,
              bits: int | None = None, unweighted: bool = False, init_seed: int = 0) -> dict:
    cars = len(fleet.agents)
    fleet.new_masked()  # skip what earlier runs logged
    car_up, car_down = fleet.settled_car_bytes()
    with FleetgridClient(fleet.coordinator.url, fleet.token) as client:
        job = client.submit_train("mnist1d-cnn", data=data, strategy="fedavg", rounds=rounds, name=label,
                                  init_seed=init_seed, settings=settings(cars, secure, quick, bits, unweighted))
        started = time.perf_counter()
        try:
            _drive(fleet, client, job.job_id, drop)
        finally:
            fleet.thaw()
        final = client.job(job.job_id)
        wall = time.perf_counter() - started
    car_up, car_down = (b - a for a, b in zip((car_up, car_down), fleet.settled_car_bytes(), strict=True))
    if final.state != "done":
        raise RuntimeError(f"{label}: job ended {final.state}: {final.error}")
    t = final.training
    history = t.history[1:]
    times = [h["time"] for h in history]  # version 0 (the initial model's evaluation) has none
    per = max(len(history) * cars, 1)
    return {"run": label, "cars": cars, "dropped_per_round": drop, "rounds": len(history),
            "up_per_car": round(t.bytes_up / per), "down_per_car": round(t.bytes_down / per),
            "car_up_per_car": round(car_up / per), "car_down_per_car": round(car_down / per),
            "round_s": round((times[-1] - times[0]) / max(len(times) - 1, 1), 2), "wall_s": round(wall, 1),
            "dropped": [h.get("secagg_dropped", 0) for h in history],
            "attempts": sum(h.get("attempts", 1) for h in history),
            "accuracy": round(t.history[-1]["accuracy"], 4)}


def run(quick: bool) -> dict[str, Any]:
    cars, rounds = (6, 4) if quick else (8, 10)
    data = {"dataset": "mnist1d", "num_vehicles": cars, "alpha": 1.0, "num_samples": 2000 if quick else 4000,
            "seed": 3}
    root = Path(tempfile.mkdtemp(prefix="fleetgrid-bench-secagg-fleet-"))
    fleet = Fleet(root, cars)
    rows = []
    try:
        # Workers started, data built: not in any row. Another initial model, or cars would hold the next job's
        # version 0 already and skip downloading it.
        fleet_run(fleet, "warm-up", False, 0, data, 1, quick, init_seed=1)
        for label, secure, drop, bits, unweighted in [
                ("plain", False, 0, None, False), ("plain_int8", False, 0, 8, False),
                ("plain_unweighted", False, 0, None, True), ("secure", True, 0, None, False),
                ("secure", True, 1, None, False), ("secure", True, 2, None, False)]:
            rows.append(fleet_run(fleet, label, secure, drop, data, rounds, quick, bits, unweighted))
            print(f"  {rows[-1]}", file=sys.stderr)
    finally:
        fleet.close()
        shutil.rmtree(root, ignore_errors=True)
    plain, int8, unweighted = rows[0], rows[1], rows[2]
    for r in rows:
        r["ratio"] = round((r["up_per_car"] + r["down_per_car"]) / (plain["up_per_car"] + plain["down_per_car"]), 2)
        r["up_vs_int8"] = round(r["up_per_car"] / int8["up_per_car"], 2)
        r["car_up_vs_int8"] = round(r["car_up_per_car"] / int8["car_up_per_car"], 2)
        r["points_vs_plain"] = round(100 * (r["accuracy"] - plain["accuracy"]), 2)
        r["points_vs_unweighted"] = round(100 * (r["accuracy"] - unweighted["accuracy"]), 2)
    secure = rows[3:]
    met = {"bytes_2x": all(r["ratio"] <= MAX_RATIO for r in secure),
           "uplink_2x_int8": all(max(r["up_vs_int8"], r["car_up_vs_int8"]) <= MAX_RATIO for r in secure),
           "accuracy_as_plain": all(abs(r["points_vs_unweighted"]) <= MAX_POINTS for r in secure),
           "dropouts_recorded": all(r["dropped"] == [r["dropped_per_round"]] * r["rounds"] for r in secure)}
    return {"cars": cars, "rounds": rounds, "secagg_phase_s": PHASE_S, "rows": rows, "met": met}


def _print(result: dict[str, Any]) -> None:
    print(f"MNIST-1D CNN, {result['cars']} agent processes (all in every cohort), {result['rounds']} rounds, "
          f"secagg_phase_s {result['secagg_phase_s']:g}")
    cols = ["run", "dropped_per_round", "up_per_car", "down_per_car", "car_up_per_car", "car_down_per_car", "ratio",
            "up_vs_int8", "car_up_vs_int8", "round_s", "dropped", "accuracy", "points_vs_plain",
            "points_vs_unweighted"]
    cells = [[json.dumps(r[c], separators=(",", ":")) if isinstance(r[c], list) else str(r[c]) for c in cols]
             for r in result["rows"]]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)))
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["met"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 cars, 4 rounds (8 cars, 10 rounds without)")
    args = parser.parse_args()
    result = run(args.quick)
    _print(result)
    OUT.mkdir(exist_ok=True)
    name = "trust_secagg_fleet_quick.json" if args.quick else "trust_secagg_fleet.json"
    (OUT / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
