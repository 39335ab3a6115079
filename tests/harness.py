"""Real processes for integration tests: a coordinator under uvicorn on 127.0.0.1, and agent processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["CoordinatorProcess", "free_port", "start_coordinator"]

ENROLL = "fge_test-enroll-token"
OPERATOR = "fgo_test-operator-token"
TENANT = "fgt_test-tenant-token"
OTHER_TENANT = "fgt_other-tenant-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SERVER = """
import sys
from pathlib import Path
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.server import serve
data, port, db, ttl, cert, key, max_art = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None, float(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7])
config = CoordinatorConfig(data_dir=Path(data), database_url=db, lease_ttl_s=ttl, sweep_interval_s=0.2,
    max_artifact_bytes=max_art,
    enroll_token=%r, operator_token=%r, tenant_tokens={"acme": %r, "other": %r})
serve(config, "127.0.0.1", port, tls_cert=Path(cert) if cert else None, tls_key=Path(key) if key else None)
""" % (ENROLL, OPERATOR, TENANT, OTHER_TENANT)


@dataclass
class CoordinatorProcess:
    data_dir: Path
    port: int
    db: str | None = None
    lease_ttl_s: float = 30.0
    tls: tuple[Path, Path] | None = None
    max_artifact_bytes: int = 2 << 30
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> CoordinatorProcess:
        cert, key = (str(p) for p in self.tls) if self.tls else ("", "")
        log = open(self.data_dir / "coordinator.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(self.data_dir), str(self.port), self.db or "", str(self.lease_ttl_s),
             cert, key, str(self.max_artifact_bytes)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", verify=False, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"coordinator did not answer within {timeout_s} s: {self.log()[-3000:]}")

    def log(self) -> str:
        path = self.data_dir / "coordinator.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_coordinator(data_dir: Path, **kwargs) -> CoordinatorProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    return CoordinatorProcess(data_dir=data_dir, port=free_port(), **kwargs).start()
