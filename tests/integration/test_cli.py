"""The README's commands, run as a user types them, against real coordinator and agent processes."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from importlib.metadata import version

import httpx
import numpy as np
import pytest

from fleetgrid.coordinator.config import Credentials
from fleetgrid.localfleet import free_port
from fleetgrid.workloads.inference import run_local

pytestmark = pytest.mark.timeout(300)

WIDE = {**os.environ, "COLUMNS": "200"}  # tables and messages one line each, as in a wide terminal


def fleetgrid(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fleetgrid", *args], capture_output=True, text=True, timeout=240,
                          env=WIDE)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def refused(*args: str, says: str) -> subprocess.CompletedProcess:
    """Run a command that must fail as bad input: exit 2, ``says`` in one line on stderr, no traceback."""
    proc = fleetgrid(*args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    return proc


def credentials_file(data_dir) -> Credentials:
    creds = Credentials(enroll="fge_e", operator="fgo_o", tenants={"default": "fgt_d", "acme": "fgt_a"})
    creds.save(data_dir / "credentials.json")
    return creds


def test_quickstart_submit_status_result_fleet(fleet, tmp_path):
    coordinator = fleet.start_coordinator()
    fleet.start_agent("car-1")
    x = np.random.default_rng(1).normal(size=(300, 40)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    where = ["--coordinator", coordinator.url, "--data-dir", str(coordinator.data_dir)]
    out = fleetgrid("submit", "infer", "--model", "mnist1d-cnn", "--inputs", str(tmp_path / "x.npy"),
                    "--unit-items", "100", "--wait", "--out", str(tmp_path / "r.npy"), *where)
    assert "submitted job-" in out.stdout
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), run_local("mnist1d-cnn", x, threads=1), atol=1e-5)
    jobs = json.loads(fleetgrid("status", "--json", *where).stdout)
    assert [j["state"] for j in jobs] == ["done"] and jobs[0]["units_total"] == 3
    overview = json.loads(fleetgrid("fleet", "--json", *where).stdout)
    assert overview["vehicles"] == 1 and overview["jobs"] == {"done": 1}
    job_id = jobs[0]["job_id"]
    assert "300/300 items" in out.stdout, out.stdout  # the bar counts items, not the 3 units
    row = next(line for line in fleetgrid("status", *where).stdout.splitlines() if job_id in line)
    assert row.count(job_id) == 1 and "x.npy" in row, row  # named after its inputs, not the id again
    table = fleetgrid("fleet", *where).stdout
    assert "{" not in table and "eligible now" in table and "car-1" in table, table
    bad = fleetgrid("submit", "infer", "--model", "nope", "--inputs", str(tmp_path / "x.npy"), *where, check=False)
    assert bad.returncode == 2 and "registered models" in bad.stderr
    missing = fleetgrid("status", "job-missing", *where, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_demo_refuses_bad_settings_with_exit_code_2():
    proc = fleetgrid("demo", "--cars", "0", check=False)
    assert proc.returncode == 2 and "1 to 64 cars" in proc.stdout + proc.stderr


def test_a_second_coordinator_on_one_sqlite_file_exits_2_naming_the_first(fleet, tmp_path):
    coordinator = fleet.start_coordinator()
    db = coordinator.data_dir / "coordinator.db"
    env = {**os.environ, "COLUMNS": "500"}  # one line per message, paths unbroken
    for where in (["--data-dir", str(coordinator.data_dir)],
                  ["--data-dir", str(tmp_path / "elsewhere"), "--db", f"sqlite:///{db}"]):
        second = subprocess.run([sys.executable, "-m", "fleetgrid", "serve", *where, "--port", str(free_port())],
                                capture_output=True, text=True, timeout=120, env=env)
        assert second.returncode == 2, second.stdout + second.stderr
        assert (f"database {db} is in use by another coordinator (pid {coordinator.proc.pid}); run one coordinator "
                "per SQLite file, or use PostgreSQL") in second.stderr
        assert "Traceback" not in second.stderr
    assert httpx.get(coordinator.url + "/healthz").status_code == 200  # the first one serves on, untouched


def test_version_names_the_installed_release():
    assert fleetgrid("--version").stdout.strip() == f"fleetgrid {version('fleetgrid')}"


def test_serve_says_listening_only_once_it_listens_and_where_the_tokens_are(tmp_path):
    port, data = free_port(), tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "fleetgrid", "serve", "--data-dir", str(data), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=WIDE)
    try:
        lines = []
        while not any("listening on" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "serve exited before it said it was listening:\n" + "".join(lines)
            lines.append(line)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # no retry: it must accept already
        lines.append(proc.stdout.readline())
        said = "".join(lines)
        assert f"http://127.0.0.1:{port}" in said and str(data / "credentials.json") in said, said
        shown = shlex.split(said.split("show them with: ")[1].splitlines()[0])
        assert shown[:2] == ["fleetgrid", "credentials"], said
        tokens = fleetgrid(*shown[1:]).stdout
        creds = Credentials.load(data / "credentials.json")
        assert creds.enroll in tokens and creds.operator in tokens and creds.tenants["default"] in tokens
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert "Traceback" not in rest, rest


def test_a_port_in_use_exits_2_naming_the_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = refused("serve", "--data-dir", str(tmp_path), "--port", str(port),
                       says=f"port {port} on 127.0.0.1 is in use")
    assert "--port" in proc.stderr and "listening" not in proc.stdout + proc.stderr
    assert not (tmp_path / "credentials.json").exists(), "it refused before opening anything"


@pytest.mark.parametrize(("args", "says"), [
    (["--db", "mysql://me@db/fleet"], "is not supported; use sqlite:///PATH or postgresql://"),
    (["--db", "sqlite:///{tmp}/no/such/folder/x.db"], "cannot open"),
    (["--tls-cert", "{tmp}/junk.pem"], "give both or neither"),
    (["--tls-cert", "{tmp}/junk.pem", "--tls-key", "{tmp}/missing.pem"], "does not exist"),
    (["--tls-cert", "{tmp}/junk.pem", "--tls-key", "{tmp}/junk.pem"], "do not load"),
    (["--port", "70000"], "not a TCP port"),
])
def test_bad_serve_options_exit_2_before_anything_listens(tmp_path, args, says):
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    port = ["--port", str(free_port())] if "--port" not in args else []
    proc = refused("serve", "--data-dir", str(tmp_path / "data"), *port, *args, says=says)
    assert "listening" not in proc.stderr and "coordinator on" not in proc.stderr, proc.stderr


def test_credentials_prints_the_tokens_plain_bare_or_as_json(tmp_path):
    creds = credentials_file(tmp_path)
    where = ["--data-dir", str(tmp_path)]
    listing = fleetgrid("credentials", *where).stdout
    for token in (creds.enroll, creds.operator, *creds.tenants.values()):
        assert token in listing
    assert fleetgrid("credentials", "enroll", *where).stdout == "fge_e\n"
    assert fleetgrid("credentials", "acme", *where).stdout == "fgt_a\n"
    assert json.loads(fleetgrid("credentials", "--json", *where).stdout)["tenants"] == creds.tenants
    refused("credentials", "nobody", *where, says="expected 'enroll', 'operator' or a tenant: acme, default")
    refused("credentials", "--data-dir", str(tmp_path / "none"), says="fleetgrid serve --data-dir")
    (tmp_path / "credentials.json").write_text("{not json")
    refused("credentials", *where, says="cannot be read as credentials")


def test_tenant_add_list_revoke_round_trip_against_fleetgrid_serve(fleet):
    coordinator = fleet.start_coordinator()
    where = ["--coordinator", coordinator.url, "--data-dir", str(coordinator.data_dir)]
    token = fleetgrid("tenant", "add", "acme", *where).stdout.strip()
    assert token.startswith("fgt_")
    assert fleetgrid("status", "--json", "--token", token, *where).stdout.strip() == "[]"
    listed = {t["name"]: t["revoked"] for t in json.loads(fleetgrid("tenant", "list", "--json", *where).stdout)}
    assert listed == {"acme": False, "default": False}
    refused("tenant", "add", "acme", *where, says="tenant 'acme' already exists")
    refused("tenant", "add", "Not A Name", *where, says="lowercase letters, digits")
    fleetgrid("tenant", "revoke", "acme", *where)
    gone = refused("status", "--token", token, *where, says="unknown or revoked tenant token")
    for command in ("fleetgrid credentials", "fleetgrid tenant add"):  # the commands it points to exist
        assert command in gone.stderr
        fleetgrid(*command.split()[1:], "--help")
    assert "revoked" in fleetgrid("tenant", "list", *where).stdout
    refused("tenant", "revoke", "nobody", *where, says="tenant 'nobody' does not exist")
    refused("tenant", "list", "--token", token, *where, says="not the operator token")
    fleetgrid("status", *where)  # the default tenant is untouched


@pytest.mark.parametrize(("args", "says"), [
    (["--model", "torchscript", "--model-file", "{tmp}/missing.pt"], "--model-file {tmp}/missing.pt does not exist"),
    (["--model", "mnist1d-cnn", "--replicas", "1", "--quorum", "3"], "--quorum 3 with --replicas 1"),
    (["--model", "mnist1d-cnn", "--wait", "--out", "{tmp}/no/such/r.npy"], "folder {tmp}/no/such does not exist"),
    (["--model", "mnist1d-cnn", "--ca", "{tmp}/missing-ca.pem"], "--ca {tmp}/missing-ca.pem does not exist"),
    (["--model", "mnist1d-cnn", "--coordinator", "127.0.0.1:8787"], "must start with http:// or https://"),
])
def test_bad_submissions_exit_2_naming_the_problem(tmp_path, args, says):
    credentials_file(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((4, 40), dtype=np.float32))
    unused = f"http://127.0.0.1:{free_port()}"  # nothing listens: each is refused before any request
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    coordinator = [] if "--coordinator" in args else ["--coordinator", unused]
    refused("submit", "infer", "--inputs", str(tmp_path / "x.npy"), "--data-dir", str(tmp_path), *coordinator,
            *args, says=says.replace("{tmp}", str(tmp_path)))


def test_an_unreachable_coordinator_is_named_with_a_hint(tmp_path):
    credentials_file(tmp_path)
    proc = fleetgrid("status", "--data-dir", str(tmp_path), "--coordinator", f"http://127.0.0.1:{free_port()}",
                     check=False)
    assert proc.returncode == 1 and "is `fleetgrid serve` running there?" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_models_lists_without_importing_torch_and_describes_text_truthfully():
    code = ("import sys\nfrom fleetgrid.cli import app\ntry:\n    app(['models'])\nexcept SystemExit:\n    pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=WIDE)
    assert proc.stderr.strip() == "no torch", proc.stderr
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("│")}
    assert "text (one string per JSON line)" in rows["minilm-l6-v2"], proc.stdout
    assert "float32 array (N, 40)" in rows["mnist1d-cnn"]
    assert "from file" not in proc.stdout
