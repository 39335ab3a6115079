"""Federated training on the whole system: a coordinator process, agent processes, HTTP on 127.0.0.1.

Covers the issue's end-to-end promises: a job trains to completion on real cars; no byte a car uploads contains
any training sample (checked on the wire, through a recording proxy); a car whose link drops mid-download resumes
the global's artifact where it stopped, paying for each byte once; a coordinator SIGKILLed mid-job resumes from its
last checkpointed version with nothing lost.
"""

from __future__ import annotations

import json
import re
import socket
import threading

import numpy as np
import pytest
from safetensors.torch import load as st_load

from fleetgrid.workloads.training import CompressionConfig, FlatLayout, build_model, encoded_nbytes

from .conftest import wait_for

pytestmark = pytest.mark.timeout(300)

DATA = {"dataset": "mnist1d", "num_vehicles": 2, "alpha": 1.0, "num_samples": 800, "seed": 3}
SETTINGS = {"local": {"steps": 20, "batch_size": 32, "lr": 0.05, "momentum": 0.9,
                      "compression": {"bits": 8}},
            "downlink": {"bits": 8},
            "rounds": {"clients_per_round": 2, "over_selection": 1.0, "min_reports": 1, "deadline_s": 60}}


class RecordingProxy:
    """A TCP relay on 127.0.0.1 that keeps every byte the client side sends (what a car puts on its link)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if record:
                    with self._lock:
                        self.sent += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()


class CuttingProxy(RecordingProxy):
    """A :class:`RecordingProxy` whose link drops once, as a car's does when it loses signal mid-download: the
    response to the first ``GET /v1/artifacts/...`` is cut after ``keep`` bytes and its connection closed."""

    def __init__(self, target_port: int, keep: int) -> None:
        self.keep = keep
        self.cut = threading.Event()
        super().__init__(target_port)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            armed = threading.Event()  # this connection carries the download to cut
            threading.Thread(target=self._up, args=(client, upstream, armed), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, armed), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket, armed: threading.Event) -> None:
        try:
            while chunk := src.recv(65536):
                with self._lock:
                    self.sent += chunk
                if not self.cut.is_set() and b"GET /v1/artifacts/" in chunk:
                    armed.set()  # before the request goes on: every byte back from here on is its response
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(src, dst)

    def _down(self, src: socket.socket, dst: socket.socket, armed: threading.Event) -> None:
        passed = 0
        try:
            while chunk := src.recv(65536):
                if armed.is_set() and not self.cut.is_set():
                    if passed + len(chunk) >= self.keep:
                        dst.sendall(chunk[: self.keep - passed])
                        self.cut.set()
                        return
                    passed += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(src, dst)


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _training_windows(width: int = 16) -> set[bytes]:
    """Every ``width``-byte run of every training sample's float32 (and float64) encoding."""
    from fleetgrid.workloads.training.tasks import DataSpec, _mnist1d

    spec = DataSpec(**DATA)
    raw = _mnist1d(spec.seed, spec.num_samples)
    windows = set()
    for dtype in ("<f4", "<f8"):
        for row in raw["x"].astype(dtype):
            b = row.tobytes()
            windows.update(b[i : i + width] for i in range(0, len(b) - width + 1, 4))
    return windows


def test_a_training_job_on_real_cars_never_uploads_a_training_sample(fleet):
    coordinator = fleet.start_coordinator()
    port = int(coordinator.url.rsplit(":", 1)[1])
    proxy = RecordingProxy(port)
    try:
        for name in ("car-a", "car-b"):  # the cars dial the proxy
            fleet.start_agent(name, url=f"http://127.0.0.1:{proxy.port}")
        with fleet.client() as client:
            # with the logit-adjusted loss: each car's label prior is computed and used on the car, never sent
            settings = {**SETTINGS, "local": {**SETTINGS["local"], "logit_adjustment": 1.0}}
            job = client.submit_train("mnist1d-cnn", data=DATA, strategy="fedavg", settings=settings, rounds=3)
            final = client.wait(job.job_id, timeout_s=240)
            assert final.state == "done", final.error
            model_bytes = client.result_bytes(job.job_id)
    finally:
        proxy.close()
    t = final.training
    assert [h["version"] for h in t.history] == [0, 1, 2, 3]
    assert t.bytes_up > 0 and t.bytes_down > 0
    assert t.history[-1]["accuracy"] > t.history[0]["accuracy"]  # it learned something in 3 rounds

    uploaded = bytes(proxy.sent)
    assert b"PUT /v1/artifacts/" in uploaded  # the updates did go through the proxy, as artifacts,
    assert b"/train/leases/" in uploaded and b"/update" in uploaded  # and were reported
    width = 16  # four consecutive float32 values of a sample (or two float64)
    sent_windows = {uploaded[i : i + width] for i in range(len(uploaded) - width + 1)}
    leaked = sent_windows & _training_windows(width)
    assert not leaked, f"{len(leaked)} byte runs of training samples appear in what the cars uploaded"

    # The final model is a loadable safetensors file with its metrics history.
    model = build_model("mnist1d-cnn")
    model.load_state_dict(st_load(model_bytes))
    meta = json.loads(json.loads(model_bytes[8 : 8 + int.from_bytes(model_bytes[:8], "little")])
                      ["__metadata__"]["fleetgrid"])
    assert [h["version"] for h in meta["history"]] == [0, 1, 2, 3]

    # Every car's training bytes are charged to its data plan and metered in the ledger.
    stats = [a.stats() for a in fleet.agents]
    assert sum(s.get("train_updates", 0) for s in stats) >= 3
    assert all(s.get("wifi_bytes", 0) > 0 for s in stats if s.get("train_updates", 0))
    with fleet.operator() as op:
        ledger = {e.vehicle_id: e for e in op.ledger()}
    assert sum(e.wifi_bytes for e in ledger.values()) > 0 and sum(e.units for e in ledger.values()) >= 3


def test_a_car_whose_link_drops_mid_download_resumes_the_global_with_range(fleet):
    """The car's first fetch of the global's snapshot artifact is cut a third of the way in: it asks for the rest
    with Range, lands on the grant's digest, trains, and is charged for each byte of the snapshot once."""
    coordinator = fleet.start_coordinator()
    proxy = CuttingProxy(int(coordinator.url.rsplit(":", 1)[1]), keep=12_000)  # of a ~32 kB snapshot
    try:
        car = fleet.start_agent("car-a", url=f"http://127.0.0.1:{proxy.port}")
        with fleet.client() as client:
            settings = {**SETTINGS, "rounds": {**SETTINGS["rounds"], "clients_per_round": 1},
                        "snapshot_bits": None}  # the float32 snapshot, not the compact one
            job = client.submit_train("mnist1d-cnn", data=DATA, strategy="fedavg", settings=settings, rounds=1)
            final = client.wait(job.job_id, timeout_s=240)
        assert final.state == "done", final.error
    finally:
        proxy.close()
    assert proxy.cut.is_set()
    sent = bytes(proxy.sent)
    gets = re.findall(rb"GET /v1/artifacts/([0-9a-f]{64})", sent)
    resumed = re.findall(rb"(?i)\r\nrange: bytes=(\d+)-", sent)
    assert len(gets) == 2 and gets[0] == gets[1], gets  # the snapshot, fetched in two pieces
    assert len(resumed) == 1 and 0 < int(resumed[0]) < 12_000, resumed
    stats = car.stats()
    snapshot = encoded_nbytes(FlatLayout.of(build_model("mnist1d-cnn")).numel, CompressionConfig())
    assert stats["model_downloads"] == 1 and stats["train_updates"] == 1
    assert stats["train_bytes_down"] == snapshot  # the piece before the cut and the rest: no byte paid twice
    assert stats["wifi_bytes"] == stats["train_bytes_down"] + stats["train_bytes_up"]


def test_coordinator_sigkill_mid_training_resumes_from_the_last_version(fleet):
    coordinator = fleet.start_coordinator()
    fleet.start_agent("car-a")
    fleet.start_agent("car-b")
    with fleet.client() as client:
        # Enough data and steps that six versions learn well past version 0 (800 samples and 20 steps stay near
        # chance, where the accuracy check below is a coin toss), with DiLoCo's own inner AdamW: inner SGD under
        # its weight decay and proximal term stayed at chance on 2 of 3 seeds of this setting in-process (a CI run
        # ended at 10.1% against version 0's 11.1%), AdamW reached 54-56% on all three.
        local = {k: v for k, v in SETTINGS["local"].items() if k not in ("lr", "momentum")} | {"steps": 60}
        job = client.submit_train("mnist1d-cnn", data={**DATA, "num_samples": 4000}, strategy="diloco",
                                  settings={**SETTINGS, "local": local}, rounds=6)
        wait_for(lambda: client.job(job.job_id).units_done >= 2, 180, "two checkpointed versions")
        before = client.job(job.job_id)
    coordinator.kill()
    kept = before.units_done
    coordinator.start()  # same data directory and port: the job's round loop restarts from its checkpoint
    with fleet.client() as client:
        resumed = client.job(job.job_id)
        assert resumed.state == "running" and resumed.units_done >= kept
        assert resumed.training.history[: kept + 1] == before.training.history[: kept + 1]
        final = client.wait(job.job_id, timeout_s=240)
    assert final.state == "done", final.error
    history = final.training.history
    assert [h["version"] for h in history] == list(range(7))  # no version lost, none done twice
    assert history[: kept + 1] == before.training.history[: kept + 1]
    # The outer optimizer's momentum was restored too: the resumed versions kept improving on average.
    assert np.mean([h["accuracy"] for h in history[-2:]]) > history[0]["accuracy"]


def test_cars_install_a_compact_snapshot_then_apply_deltas_to_their_approximate_copy(fleet):
    """With ``snapshot_bits`` on, each car's first model is the int8 compact snapshot (never the float32 one) and
    its later ones the int4 deltas applied to that approximate copy; the job completes and the cars say so."""
    fleet.start_coordinator()
    for name in ("car-a", "car-b"):
        fleet.start_agent(name)
    settings = {**SETTINGS, "downlink": {"bits": 4}, "snapshot_bits": 8}
    with fleet.client() as client:
        job = client.submit_train("mnist1d-cnn", data=DATA, strategy="fedavg", settings=settings, rounds=3)
        final = client.wait(job.job_id, timeout_s=240)
    assert final.state == "done", final.error
    assert [h["version"] for h in final.training.history] == [0, 1, 2, 3]
    numel = FlatLayout.of(build_model("mnist1d-cnn")).numel
    compact = encoded_nbytes(numel, CompressionConfig(bits=8, chunk_size=256))
    delta = encoded_nbytes(numel, CompressionConfig(bits=4))
    fetched = []  # per car that trained: (compact snapshots, deltas) that add up to its bytes down
    for agent, name in zip(fleet.agents, ("car-a", "car-b"), strict=True):
        stats = agent.stats()
        if not stats.get("train_updates"):
            continue
        down = stats["train_bytes_down"]
        ways = [(a, b) for a in range(1, 5) for b in range(0, 5) if a * compact + b * delta == down]
        assert len(ways) == 1, f"{name} fetched {down} bytes: not compact snapshots ({compact}) plus deltas ({delta})"
        fetched.append(ways[0])
        (record,) = [json.loads(p.read_text()) for p in (fleet.root / name).rglob("global.json")]
        assert record["exact"] is False and record["digest"] != record["model_digest"]
    assert fetched and sum(b for _, b in fetched) >= 1, fetched  # some car applied deltas to its compact copy
