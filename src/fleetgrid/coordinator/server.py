"""Run the coordinator under uvicorn, over plain HTTP or TLS.

What a user can get wrong (the TLS files, the address, a port in use) is checked before the coordinator opens its
store, and ``on_listening`` hears of the URL only once the socket accepts connections.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import uvicorn
from sqlalchemy.exc import SQLAlchemyError
from uvicorn.config import LOGGING_CONFIG

from ..errors import InvalidInput
from .app import Coordinator, create_app
from .config import CoordinatorConfig
from .logs import log_config

__all__ = ["bind", "check_tls", "serve"]


def serve(config: CoordinatorConfig, host: str = "127.0.0.1", port: int = 8787, *,
          tls_cert: Path | None = None, tls_key: Path | None = None, log_level: str = "warning",
          on_listening: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted. TLS when both a certificate and its key are given; ``on_listening(url)`` is called
    once the server accepts connections (``port`` 0 picks a free port, which the URL names)."""
    check_tls(tls_cert, tls_key)
    sock = bind(host, port)
    try:
        coordinator = _open(config)
        uv_config = uvicorn.Config(
            create_app(coordinator=coordinator), log_level=log_level, access_log=False,
            ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
            timeout_keep_alive=30, backlog=4096, log_config=log_config(config.log_format, log_level) or LOGGING_CONFIG,
        )
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"{'https' if tls_cert else 'http'}://{shown}:{bound_port}"
        try:
            _Server(uv_config, lambda: on_listening(url) if on_listening else None).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down for
            pass
    finally:
        sock.close()


def check_tls(tls_cert: Path | None, tls_key: Path | None) -> None:
    """Both or neither, and the pair must load as a server certificate and its private key."""
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("TLS needs both --tls-cert and --tls-key (PEM files); give both or neither")
    if tls_cert is None or tls_key is None:
        return
    for path in (tls_cert, tls_key):
        if not Path(path).is_file():
            raise InvalidInput(f"TLS file {path} does not exist; give a PEM certificate and its private key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls_cert, tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise InvalidInput(f"TLS certificate {tls_cert} and key {tls_key} do not load ({exc}); expected a PEM "
                           "certificate and the PEM private key it was issued for") from exc


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, not yet listening; InvalidInput if the port is taken or the address
    is not this machine's."""
    if not 0 <= port <= 65535:
        raise InvalidInput(f"--port {port} is not a TCP port; expected 1 to 65535 (0 picks a free one)")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart at once after a stop
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InvalidInput(f"port {port} on {host} is in use (another coordinator?); pass --port with a free "
                               f"port, e.g. --port {port + 1 if port < 65535 else 8787}") from exc
        raise InvalidInput(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass --host an address of "
                           "this machine (127.0.0.1, or 0.0.0.0 for every interface) and --port a free port "
                           "above 1023") from exc
    sock.set_inheritable(True)
    return sock


def _open(config: CoordinatorConfig) -> Coordinator:
    """The coordinator, with the data directory or database it cannot open named as bad input."""
    try:
        return Coordinator(config)
    except SQLAlchemyError as exc:
        from sqlalchemy.engine import make_url

        where = make_url(config.db_url).render_as_string(hide_password=True)
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise InvalidInput(f"cannot open database {where} ({reason}); give --db sqlite:///PATH in an existing "
                           "folder or postgresql://USER@HOST:PORT/DB of a running server") from exc
    except OSError as exc:
        raise InvalidInput(f"cannot use data directory {config.data_dir} ({exc}); give --data-dir a folder this "
                           "user may write") from exc


class _Server(uvicorn.Server):
    """uvicorn's server, telling ``on_started`` once its sockets listen and the app's start-up has run."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()
