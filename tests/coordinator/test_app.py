"""The coordinator app in process (httpx.ASGITransport, lifespan run by hand): failures a real process cannot be
made to have on demand, such as a full disk or a store that dies half-way through a submission."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
from collections.abc import Awaitable, Callable

import httpx
import numpy as np
import pytest

from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.store import LedgerRecord
from fleetgrid.protocol import JobSubmit
from fleetgrid.workloads.inputs import encode_items
from harness import OPERATOR, TENANT

X = np.random.default_rng(2).normal(size=(50, 40)).astype(np.float32)


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def coord(tmp_path):
    config = CoordinatorConfig(data_dir=tmp_path, operator_token=OPERATOR, tenant_tokens={"acme": TENANT})
    coordinator = Coordinator(config)
    yield coordinator
    coordinator.store.close()


def serve(coord: Coordinator, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    """Run ``scenario`` against the app, inside its lifespan, on a fresh event loop."""
    app = create_app(coordinator=coord)

    async def main() -> None:
        async with app.app.router.lifespan_context(app.app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://coordinator/v1", timeout=30) as client:
                await scenario(client)

    asyncio.run(main())


def no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_answers_507(coord, monkeypatch):
    inputs = npy(X)

    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.put(f"/artifacts/{sha(inputs)}", content=inputs, headers=auth(TENANT))
        assert r.status_code == 201, r.text
        monkeypatch.setattr(coord.artifacts, "_write", no_space)
        more = npy(X + 1.0)
        r = await client.put(f"/artifacts/{sha(more)}", content=more, headers=auth(TENANT))
        assert r.status_code == 507 and r.json()["error"] == "insufficient_storage", r.text
        assert "space" in r.json()["message"]
        r = await client.post("/jobs", headers=auth(TENANT),
                              json={"model": "mnist1d-cnn", "inputs": sha(inputs), "input_format": "npy",
                                    "unit_items": 20})
        assert r.status_code == 507, r.text
        assert (await client.get("/jobs", headers=auth(TENANT))).json() == []

    serve(coord, scenario)
    assert list((coord.config.artifacts_path / "tmp").iterdir()) == []  # no half-written temp files remain
    assert not coord.artifacts.exists(sha(npy(X + 1.0)))


def test_a_submission_that_fails_half_way_leaves_no_orphans(coord, monkeypatch):
    """Shards the submission created are removed again; one that existed before (content-addressed, shared) stays."""
    now = coord.clock.now()
    inputs = npy(X)
    coord.artifacts.put_bytes(inputs)
    coord.store.add_artifact(sha(inputs), len(inputs), "tenant:acme", now)
    first, _ = encode_items(X[:25])
    second, _ = encode_items(X[25:])
    coord.artifacts.put_bytes(first)
    coord.store.add_artifact(sha(first), len(first), "tenant:acme", now)

    def store_dies(*_args, **_kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(coord.store, "create_job", store_dies)
    with pytest.raises(RuntimeError, match="went away"):
        coord.scheduler.submit("acme", JobSubmit(model="mnist1d-cnn", inputs=sha(inputs), input_format="npy",
                                                 unit_items=25))
    assert coord.artifacts.exists(sha(first)) and coord.store.get_artifact(sha(first)) is not None
    assert not coord.artifacts.exists(sha(second))
    assert coord.store.get_artifact(sha(second)) is None
    assert coord.store.list_jobs() == []


def test_the_ledger_survives_absurd_old_rows(coord):
    """Rows written before counters were bounded (or by a buggy car) must not take the ledger down for good."""
    for i in range(3):
        coord.store.record_ledger(LedgerRecord(lease_id=f"old-{i}", vehicle_id="v-old", job_id="job-old", items=10,
                                               compute_s=1e308, cellular_bytes=2**62, wifi_bytes=2**62, at=1.0))

    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.get("/ledger", headers=auth(OPERATOR))
        assert r.status_code == 200, r.text
        (row,) = r.json()
        assert row["units"] == 3 and row["items"] == 30
        assert row["wifi_bytes"] >= 3 * 2**62 - 2**20 and row["compute_s"] >= 1e308

    serve(coord, scenario)
