"""The secure car's byte accounting: every phase's message both ways, polls included, is charged to the data plan
and counted in the car's training bytes (a fake link; the protocol itself is tests/training/test_secagg.py's)."""

from __future__ import annotations

from types import SimpleNamespace

from fleetgrid.agent.statedir import AgentStats
from fleetgrid.secagg_wire import SecAggAck, SecAggDownlink, UnmaskBody
from fleetgrid.workloads.federated.secure_car import SecureDelivery


class FakeClient:
    """Answers a POST with an ack and a GET with "not ready" once, then ready; sizes as the transport gives them."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}

    def secagg_send(self, lease_id: str, phase: str, body) -> int:
        ack = SecAggAck(round_id="r1", phase=phase).model_dump_json().encode()
        return len(body.model_dump_json().encode()) + len(ack)

    def secagg_fetch(self, lease_id: str, phase: str) -> tuple[SecAggDownlink, int]:
        self.asked[phase] = self.asked.get(phase, 0) + 1
        down = SecAggDownlink(round_id="r1", phase=phase, ready=self.asked[phase] > 1, retry_after_s=0.0,
                              dropped=["c"] if self.asked[phase] > 1 else None)
        return down, len(down.model_dump_json().encode())


class FakeCar:
    def __init__(self) -> None:
        self.client, self.stats, self.charged = FakeClient(), AgentStats(), 0

    def retrying(self, call, **_):
        return call()

    def charge(self, nbytes: int) -> None:
        self.charged += nbytes

    def check_preempted(self) -> None:
        pass

    def sleep(self, seconds: float) -> None:
        pass


def test_every_phase_message_is_counted_up_and_down_polls_included():
    car = FakeCar()
    delivery = SecureDelivery.__new__(SecureDelivery)  # the byte accounting needs no plan
    delivery.car, delivery.grant = car, SimpleNamespace(lease_id="lease-1")
    body = UnmaskBody(mask_key_shares={"c": "AAAA"}, seed_shares={})
    delivery._send("unmask", body)
    sent = len(body.model_dump_json().encode())
    ack = len(SecAggAck(round_id="r1", phase="unmask").model_dump_json().encode())
    assert (car.stats.train_bytes_up, car.stats.train_bytes_down) == (sent, ack)
    down = delivery._fetch("unmask")
    assert down.ready and car.client.asked["unmask"] == 2  # one "not ready yet", then the answer
    polls = sum(len(SecAggDownlink(round_id="r1", phase="unmask", ready=r, retry_after_s=0.0,
                                   dropped=["c"] if r else None).model_dump_json().encode()) for r in (False, True))
    assert car.stats.train_bytes_down == ack + polls
    assert car.charged == car.stats.train_bytes_up + car.stats.train_bytes_down  # the data plan saw the same
