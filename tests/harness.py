"""A coordinator process with fixed tokens, for tests that speak the raw API (see fleetgrid.localfleet)."""

from __future__ import annotations

from pathlib import Path

from fleetgrid.localfleet import CoordinatorProcess

__all__ = ["ENROLL", "OPERATOR", "OTHER_TENANT", "TENANT", "start_coordinator"]

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
