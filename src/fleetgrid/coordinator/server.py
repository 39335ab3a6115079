"""Run the coordinator under uvicorn, over plain HTTP or TLS."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from ..errors import InvalidInput
from .app import Coordinator, create_app
from .config import CoordinatorConfig

__all__ = ["serve"]


def serve(config: CoordinatorConfig, host: str = "127.0.0.1", port: int = 8787, *,
          tls_cert: Path | None = None, tls_key: Path | None = None, log_level: str = "warning") -> None:
    """Serve until interrupted. TLS when both a certificate and its key are given."""
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("TLS needs both --tls-cert and --tls-key (PEM files); give both or neither")
    for path in (tls_cert, tls_key):
        if path is not None and not Path(path).is_file():
            raise InvalidInput(f"TLS file {path} does not exist; give a PEM certificate and its private key")
    coordinator = Coordinator(config)
    app = create_app(coordinator=coordinator)
    uvicorn.run(
        app, host=host, port=port, log_level=log_level, access_log=False,
        ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
        timeout_keep_alive=30, backlog=4096,
    )
