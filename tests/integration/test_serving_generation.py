"""Text generation served by cars: the official `openai` client's completions and streaming chat against a real
coordinator process and real agents (in this process, so the test can start a car's trip; each with its own worker
process), on the character-level LM. Greedy decoding makes the answer checkable against a local run, so a stream
that moved to another car mid-answer is checked to the character."""

from __future__ import annotations

import httpx
import pytest
import torch

from fleetgrid.vehicle import DriveState

from .conftest import in_thread_car, wait_for

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.timeout(600)


def charlm_weights() -> bytes:
    from safetensors.torch import save

    from fleetgrid.workloads.training import build_model

    torch.manual_seed(0)
    model = build_model("charlm")
    # Initial weights scaled up: untrained, yet its greedy answers vary with the context (at the initial scale
    # every answer is the same character), so a piece lost or repeated would show.
    return save({k: (v.detach() * (1 if "ln" in k else 25)).contiguous() for k, v in model.state_dict().items()})


def greedy(weights: bytes, prompt: str, n: int) -> str:
    """What the car computes at temperature 0: the next ``n`` characters, never the 'unknown' id."""
    from safetensors.torch import load

    from fleetgrid.data.text import VOCAB
    from fleetgrid.workloads.training import build_model

    model = build_model("charlm")
    model.load_state_dict(load(weights))
    model.eval()
    block = model.config.block_size
    ids = torch.as_tensor(VOCAB.encode(prompt), dtype=torch.long)[None, :]
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(ids[:, -block:])[0, -1, :].clone()
            logits[0] = float("-inf")
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return VOCAB.decode(out)



def status(url: str, token: str) -> dict:
    rows = httpx.get(f"{url}/v1/deployments", headers={"authorization": f"Bearer {token}"}).json()
    return next((d for d in rows if d["name"] == "lm"), {"connected": 0, "cars": []})


def test_completions_and_a_streamed_chat_that_moves_car_mid_answer(fleet, tmp_path):
    coordinator = fleet.start_coordinator()
    token = coordinator.credentials().tenants["default"]
    headers = {"authorization": f"Bearer {token}"}
    weights = charlm_weights()
    with fleet.client() as tenant:
        digest = tenant.upload(weights)
    made = httpx.post(f"{coordinator.url}/v1/jobs", headers=headers,
                      json={"kind": "serve", "model": "charlm", "weights": digest, "replicas": 2, "name": "lm"})
    assert made.status_code == 201, made.text
    cars = [in_thread_car(tmp_path, coordinator, name) for name in ("car-a", "car-b")]
    try:
        wait_for(lambda: status(coordinator.url, token)["connected"] == 2, 300, "both replicas")
        client = openai.OpenAI(base_url=f"{coordinator.url}/v1", api_key=token, max_retries=0)

        done = client.completions.create(model="lm", prompt="def main():\n", max_tokens=40, temperature=0)
        assert done.choices[0].text == greedy(weights, "def main():\n", 40)
        assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 40

        text = done.choices[0].text
        assert len(set(text)) > 5
        stop = text[20:23]
        stopped = client.completions.create(model="lm", prompt="def main():\n", max_tokens=40, temperature=0,
                                            stop=[stop])
        assert stopped.choices[0].text == text[:text.find(stop)] and stopped.choices[0].finish_reason == "stop"

        messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "a loop"}]
        prompt = "system: You write Python.\nuser: a loop\nassistant: "
        expected = greedy(weights, prompt, 600)
        stream = client.chat.completions.create(model="lm", messages=messages, max_tokens=600, temperature=0,
                                                stream=True)
        pieces: list[str] = []
        finish = None
        moved = False
        for chunk in stream:
            choice = chunk.choices[0]
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
            if not moved and len("".join(pieces)) >= 48:  # a few pieces in: the car holding it drives away
                holder = next(c for c in status(coordinator.url, token)["cars"] if c["in_flight"])
                agent, bus = next((a, b) for a, b, _, _ in cars if a.vehicle_id == holder["vehicle_id"])
                bus.set(drive=DriveState.DRIVING)
                moved = True
        assert moved and finish == "length"
        assert "".join(pieces) == expected  # nothing lost, nothing repeated, across the change of car
        assert status(coordinator.url, token)["failovers"] == 1
        assert agent.stats.preemptions == 1
    finally:
        for _, _, stop, _thread in cars:
            stop.set()
        for _, _, _, thread in cars:
            thread.join(60)


def test_bad_generation_requests_get_openai_errors(fleet):
    coordinator = fleet.start_coordinator()
    token = coordinator.credentials().tenants["default"]
    headers = {"authorization": f"Bearer {token}"}
    with fleet.client() as tenant:
        digest = tenant.upload(charlm_weights())
        other = tenant.upload(b"not a model")
    for body, status_code, says in [
        ({"kind": "serve", "model": "charlm"}, 400, "needs its weights"),
        ({"kind": "serve", "model": "charlm", "weights": other}, 400, "not a safetensors state dict"),
        ({"kind": "serve", "model": "charlm", "from_job": "j-nope"}, 404, "does not exist"),
        ({"kind": "serve", "model": "minilm-l6-v2", "weights": digest}, 400, "ships its weights"),
    ]:
        response = httpx.post(f"{coordinator.url}/v1/jobs", headers=headers, json=body)
        assert response.status_code == status_code and says in response.json()["message"], response.text
    assert httpx.post(f"{coordinator.url}/v1/jobs", headers=headers, json={
        "kind": "serve", "model": "charlm", "weights": digest, "name": "lm"}).status_code == 201
    assert httpx.post(f"{coordinator.url}/v1/jobs", headers=headers, json={
        "kind": "serve", "model": "minilm-l6-v2", "name": "emb"}).status_code == 201

    client = openai.OpenAI(base_url=f"{coordinator.url}/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="one answer per request"):
        client.completions.create(model="lm", prompt="x", n=2)
    with pytest.raises(openai.BadRequestError, match="over the context length"):
        client.completions.create(model="lm", prompt="x" * 5000)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="lm", prompt="x", max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="serves embeddings"):
        client.chat.completions.create(model="emb", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="generates text"):
        client.embeddings.create(model="lm", input="hi")
    with pytest.raises(openai.NotFoundError, match="not deployed"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="lm", messages=[])
    with pytest.raises(openai.RateLimitError, match="no replica is connected"):
        client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "hi"}], stream=True)
