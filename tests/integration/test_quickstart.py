"""The README's Quickstart, run as it is written: its commands, taken from README.md, as one bash script with a real
coordinator and a real agent on the accelerated clock; then the embeddings and the trained model it leaves.

The only thing the test adds is where the coordinator listens: ``FLEETGRID_PORT`` and ``FLEETGRID_URL`` (which the
commands read) name a free port, so the run never meets another coordinator on this machine's 8787. The HTTP API
example under the Quickstart (``curl ... $TOKEN``) is an example of the API, not a step, and is not run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from fleetgrid.localfleet import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

README = Path(__file__).resolve().parents[2] / "README.md"
SCRIPT_TIMEOUT_S = 2100  # 20 versions and 500 embeddings on one car; a busy 2-core machine needs ~6 min


def quickstart_commands(readme: str) -> list[str]:
    """The ``bash`` blocks of the README's Quickstart section that are steps to run, in order (not the curl example
    of the HTTP API)."""
    section = readme.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [b for b in blocks if "curl " not in b]


def test_quickstart_commands_are_read_from_the_readme():
    blocks = quickstart_commands(README.read_text())
    assert len(blocks) == 2, blocks
    script = "\n".join(blocks)
    for needle in ("fleetgrid serve &", "fleetgrid credentials --wait", "--clock-speed 1440 &",
                   "fleetgrid submit infer", "fleetgrid submit train", "--out model.safetensors"):
        assert needle in script


def _venv(root: Path) -> None:
    """``.venv/bin/activate`` as `make` leaves it: the first line of the Quickstart sources it. It puts the
    interpreter running these tests (and its ``fleetgrid`` command) first on PATH."""
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    paths = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    (bin_dir / "activate").write_text(f'export PATH="{":".join(paths)}:$PATH"\n')


def _model_history(path: Path) -> list[dict]:
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    return json.loads(header["__metadata__"]["fleetgrid"])["history"]


def test_the_readme_quickstart_trains_a_model_whose_accuracy_rises(tmp_path):
    _venv(tmp_path)
    port = free_port()
    env = {**os.environ, "FLEETGRID_PORT": str(port), "FLEETGRID_URL": f"http://127.0.0.1:{port}",
           "COLUMNS": "200"}
    for name in ("FLEETGRID_DATA_DIR", "FLEETGRID_TOKEN", "FLEETGRID_ENROLL_TOKEN", "FLEETGRID_CA"):
        env.pop(name, None)
    script = "set -e\n" + "\n".join(quickstart_commands(README.read_text()))
    (tmp_path / "quickstart.sh").write_text(script)
    log = tmp_path / "quickstart.log"
    with log.open("w") as out:
        # Its own session: the coordinator and agent it leaves running in the background are stopped by group.
        proc = subprocess.Popen(["bash", "quickstart.sh"], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=SCRIPT_TIMEOUT_S)
        finally:
            _stop_group(proc.pid)
    said = log.read_text()
    assert code == 0, said[-6000:]
    assert "Traceback" not in said, said[-6000:]

    embeddings = np.load(tmp_path / "embeddings.npy")
    assert embeddings.shape == (500, 384) and np.isfinite(embeddings).all()

    history = _model_history(tmp_path / "model.safetensors")
    assert [row["version"] for row in history] == list(range(21))
    initial, final = history[0]["accuracy"], history[-1]["accuracy"]
    assert final > initial, [row["accuracy"] for row in history]
    # --wait said so as it went: a line per version, with its accuracy, the cars it came from and the bytes.
    for row in history:
        line = next((x for x in said.splitlines() if x.startswith(f"version {row['version']}/20: ")), None)
        assert line is not None, said[-6000:]
        assert f"accuracy {row['accuracy']:.3f}" in line, line
        if row["version"] > 0:
            assert " 1 car, " in line and " up " in line and " down " in line, line


def _stop_group(pgid: int) -> None:
    """Stop every process of the script's session (its coordinator, agent and the agent's worker). Background
    jobs of a non-interactive shell ignore SIGINT, so SIGTERM, then SIGKILL for whatever is left."""
    for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        if _group_gone(pgid, wait_s):
            return


def _group_gone(pgid: int, timeout_s: float) -> bool:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False
