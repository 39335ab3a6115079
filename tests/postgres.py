"""Start a throwaway PostgreSQL server on a loopback port for the test run.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user. If no server binary can
be found or the server does not start, this raises: the PostgreSQL tests fail rather than being skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

__all__ = ["PostgresServer", "start_postgres"]


def _bin_dir() -> str:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for path in candidates + [os.path.dirname(shutil.which("initdb") or "")]:
        if path and os.path.isfile(os.path.join(path, "initdb")):
            return path
    raise RuntimeError("PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and PATH); "
                       "install them with: apt-get install -y postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: str
    data_dir: str
    port: int
    run_as: str | None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data_dir, "-m", "immediate", "stop", check=False)
        shutil.rmtree(os.path.dirname(self.data_dir), ignore_errors=True)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [os.path.join(self.bin_dir, tool), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)


def start_postgres() -> PostgresServer:
    bin_dir = _bin_dir()
    run_as = None
    root = tempfile.mkdtemp(prefix="fleetgrid-pg-")
    if os.geteuid() == 0:
        run_as = "postgres"
        user = pwd.getpwnam(run_as)
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PostgresServer(bin_dir=bin_dir, data_dir=os.path.join(root, "data"), port=_free_port(), run_as=run_as)
    try:
        server._run("initdb", "-D", server.data_dir, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        opts = (f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        server._run("pg_ctl", "-D", server.data_dir, "-o", opts, "-l", os.path.join(root, "log"), "-w", "start")
    except subprocess.CalledProcessError as exc:
        log = ""
        with_log = os.path.join(root, "log")
        if os.path.exists(with_log):
            log = open(with_log).read()[-2000:]
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr or exc.stdout}\n{log}") from exc
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", server.port)) == 0:
                return server
        time.sleep(0.1)
    raise RuntimeError(f"PostgreSQL did not accept connections on 127.0.0.1:{server.port} within 30 s")
