"""A coordinator process with fixed tokens, for tests that speak the raw API (see fleetgrid.localfleet)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from fleetgrid.localfleet import CoordinatorProcess

__all__ = ["ENROLL", "OPERATOR", "OTHER_TENANT", "TENANT", "auth", "npy", "sha", "start_coordinator"]

ENROLL = "fge_test-enroll-token"
OPERATOR = "fgo_test-operator-token"
TENANT = "fgt_test-tenant-token"
OTHER_TENANT = "fgt_other-tenant-token"


def start_coordinator(data_dir: Path, *, lease_ttl_s: float = 30.0, max_artifact_bytes: int = 2 << 30,
                      tls: tuple[Path, Path] | None = None) -> CoordinatorProcess:
    """``fleetgrid serve`` with the tokens above: tenants 'acme' (TENANT) and 'other' (OTHER_TENANT)."""
    args = ["--lease-ttl", str(lease_ttl_s), "--max-artifact-bytes", str(max_artifact_bytes),
            "--enroll-token", ENROLL, "--operator-token", OPERATOR,
            "--tenant", f"acme={TENANT}", "--tenant", f"other={OTHER_TENANT}"]
    return CoordinatorProcess(Path(data_dir), extra_args=args, tls=tls).start()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}
