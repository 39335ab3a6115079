"""Cheating cars against verified inference: 10% of the cars return wrong but plausible results.

    python bench/trust_cheating.py [--quick] [--json]

One coordinator in this process (the real app over HTTP through Starlette's TestClient, SQLite, a manual clock)
with ``verify_results`` on, and a fleet of simulated cars that lease units of mnist1d-cnn jobs and complete them
with their results inline. An honest car returns the model's true outputs with a relative error of 1e-6 (another
car's hardware); a cheating car returns them plus noise of a tenth of their spread: finite, the right shape, only a
comparison can tell. The fleet runs several jobs one after another, as a fleet's cars would.

Figures: the fraction of cheating cars caught (suspended), the rows of the tenants' results that are wrong
(delivered_wrong), the extra compute (items computed by honest cars beyond the jobs' own items, over those items:
the verification replicas and the recomputations), and the same counting the cheaters' wasted items too. Targets:
all cheaters caught, 0 wrong rows, <= 15% extra. A second scenario, ``sneaky``, has the cheaters behave until they
are trusted and then cheat on half their units: the figures show what the spot-check rate lets through.

Prints a table and, last, one JSON line; writes bench/results/trust_cheating.json.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.workloads.inference import run_local

ENROLL, OPERATOR, TENANT = "fge_bench-enroll", "fgo_bench-operator", "fgt_bench-tenant"
PARKED = {"drive": "parked", "soc": 0.8, "network": "wifi", "plugged_in": False, "eligible": True}
MODEL = "mnist1d-cnn"


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    cars: int
    cheaters: int
    jobs: int
    units_per_job: int
    unit_items: int = 10
    sneaky: bool = False
    """Cheaters are honest until trusted, then cheat on every other unit."""


@dataclass
class Car:
    name: str
    cred: str
    cheater: bool
    leases: int = 0
    items: int = 0


@dataclass
class Tally:
    honest_items: int = 0
    cheat_items: int = 0
    wrong_sent: int = 0
    per_job: list[dict] = field(default_factory=list)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def run_scenario(sc: Scenario, seed: int = 0) -> dict:
    from starlette.testclient import TestClient

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="fleetgrid-trust-") as tmp:
        clock = ManualClock(1_000_000.0)
        config = CoordinatorConfig(data_dir=Path(tmp), enroll_token=ENROLL, operator_token=OPERATOR,
                                   tenant_tokens={"bench": TENANT}, verify_results=True, lease_ttl_s=3600.0)
        coord = Coordinator(config, clock)
        assert coord.scheduler.verifier is not None
        coord.scheduler.verifier.draw = random.Random(seed).random  # spot checks reproducible run to run
        try:
            with TestClient(create_app(coordinator=coord)) as api:
                return _run(api, coord, clock, sc, rng)
        finally:
            coord.store.close()


def _run(api, coord: Coordinator, clock: ManualClock, sc: Scenario, rng: np.random.Generator) -> dict:
    cars = []
    for i in range(sc.cars):
        r = api.post("/v1/vehicles/enroll", json={"enrollment_token": ENROLL, "name": f"car-{i}", "hardware": "ai4"})
        cars.append(Car(f"car-{i}", r.json()["credential"], cheater=i < sc.cheaters))
    rng.shuffle(cars)  # type: ignore[arg-type]
    tally = Tally()
    for j in range(sc.jobs):
        x = rng.normal(size=(sc.units_per_job * sc.unit_items, 40)).astype(np.float32)
        reference = run_local(MODEL, x, threads=1)
        data = _npy(x)
        digest = hashlib.sha256(data).hexdigest()
        api.put(f"/v1/artifacts/{digest}", content=data, headers=_auth(TENANT))
        job = api.post("/v1/jobs", headers=_auth(TENANT), json={
            "model": MODEL, "inputs": digest, "input_format": "npy", "unit_items": sc.unit_items}).json()
        lookup = {i: reference[i * sc.unit_items:(i + 1) * sc.unit_items] for i in range(sc.units_per_job)}
        state = _drive(api, coord, clock, cars, job["job_id"], lookup, sc, rng, tally)
        wrong = 0  # a job that did not finish delivered nothing
        if state == "done":
            got = api.get(f"/v1/jobs/{job['job_id']}/result", headers=_auth(TENANT)).content
            wrong = int((~np.isclose(np.load(io.BytesIO(got)), reference, rtol=1e-3, atol=1e-4).all(axis=1)).sum())
        tally.per_job.append({"job": j, "state": state, "wrong_rows": wrong})
    items_needed = sc.jobs * sc.units_per_job * sc.unit_items
    cheaters = [c for c in cars if c.cheater]
    caught = sum(bool(coord.store.get_vehicle(c.cred.split(".")[1]).suspended) for c in cheaters)  # type: ignore[union-attr]
    honest_suspended = sum(bool(coord.store.get_vehicle(c.cred.split(".")[1]).suspended)  # type: ignore[union-attr]
                           for c in cars if not c.cheater)
    return {
        "scenario": sc.name, "cars": sc.cars, "cheaters": sc.cheaters, "jobs": sc.jobs,
        "units": sc.jobs * sc.units_per_job, "items": items_needed,
        "caught_fraction": caught / len(cheaters) if cheaters else 1.0,
        "honest_suspended": honest_suspended,
        "delivered_wrong_rows": sum(j["wrong_rows"] for j in tally.per_job),
        "wrong_results_sent": tally.wrong_sent,
        "extra_compute": (tally.honest_items - items_needed) / items_needed,
        "extra_compute_with_cheaters": (tally.honest_items + tally.cheat_items - items_needed) / items_needed,
        "jobs_done": sum(j["state"] == "done" for j in tally.per_job),
    }


def _drive(api, coord: Coordinator, clock: ManualClock, cars: list[Car], job_id: str,
           lookup: dict[int, np.ndarray], sc: Scenario, rng: np.random.Generator, tally: Tally) -> str:
    """Every car in turn leases one unit and completes it, until the job is finished."""
    policy = coord.config.trust
    for _ in range(100_000):
        for car in cars:
            r = api.post("/v1/leases", json={"state": PARKED}, headers=_auth(car.cred))
            if r.status_code != 200:
                continue
            grant = r.json()
            out = lookup[grant["unit_index"]]
            cheat = car.cheater and (not sc.sneaky or (
                policy.trusted(coord.store.get_reputation(car.cred.split(".")[1])) and rng.random() < 0.5))
            if cheat:
                out = out + rng.normal(scale=0.1 * float(out.std()) + 1e-3, size=out.shape)
                tally.wrong_sent += 1
            else:
                out = out * (1 + rng.normal(scale=1e-6, size=out.shape))  # another car's hardware
            data = _npy(out.astype(np.float32))
            clock.advance(0.01)
            body = {"result": hashlib.sha256(data).hexdigest(), "inline": base64.b64encode(data).decode(),
                    "compute_s": 0.005}
            done = api.post(f"/v1/leases/{grant['lease_id']}/complete", json=body, headers=_auth(car.cred))
            if done.status_code == 200:
                if car.cheater:
                    tally.cheat_items += grant["items"]
                else:
                    tally.honest_items += grant["items"]
        state = api.get(f"/v1/jobs/{job_id}", headers=_auth(TENANT)).json()["state"]
        if state != "running" and state != "queued":
            return state
    return "stuck"


def run(quick: bool) -> dict:
    scenarios = [
        Scenario(name="cheating", cars=10, cheaters=1, jobs=3, units_per_job=300) if quick else
        Scenario(name="cheating", cars=20, cheaters=2, jobs=4, units_per_job=400),
        Scenario(name="sneaky", cars=10, cheaters=1, jobs=3, units_per_job=300, sneaky=True) if quick else
        Scenario(name="sneaky", cars=20, cheaters=2, jobs=4, units_per_job=400, sneaky=True),
    ]
    rows = [run_scenario(sc) for sc in scenarios]
    main = rows[0]
    return {
        "cheating_caught_fraction": main["caught_fraction"],
        "cheating_delivered_wrong": main["delivered_wrong_rows"],
        "cheating_extra_compute": main["extra_compute"],
        "targets": {"caught_fraction": 1.0, "delivered_wrong": 0, "extra_compute_max": 0.15},
        "met": bool(main["caught_fraction"] == 1.0 and main["delivered_wrong_rows"] == 0
                    and main["extra_compute"] <= 0.15),
        "scenarios": rows, "quick": quick,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller fleet and fewer units")
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = parser.parse_args()
    summary = run(args.quick)
    cols = ("scenario", "cars", "cheaters", "units", "caught_fraction", "honest_suspended", "wrong_results_sent",
            "delivered_wrong_rows", "extra_compute", "extra_compute_with_cheaters", "jobs_done")
    print("  ".join(f"{c:>14}" for c in cols))
    for row in summary["scenarios"]:
        print("  ".join(f"{row[c]:>14.3f}" if isinstance(row[c], float) else f"{row[c]!s:>14}" for c in cols))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "trust_cheating.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
