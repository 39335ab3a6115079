"""The secure-aggregation wire bodies: a whole round with every message through JSON gives the exact sum."""

import json

import numpy as np
import pydantic
import pytest

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.secagg import Quantization, RoundPlan, SecAggCar, SecAggCoordinator
from fleetgrid.workloads.training.secagg.wire import (
    KeyAdvertisementBody,
    MaskedInputBody,
    NeighbourKeysBody,
    RoundPlanBody,
    ShareBundleBody,
    SharesForCarBody,
    UnmaskRequestBody,
    UnmaskResponseBody,
)


def _through(body_cls, message):
    """What the other side reads after ``message`` crossed the wire as JSON."""
    text = body_cls.of(message).model_dump_json()
    return body_cls.model_validate_json(text).to_message()


def test_a_round_with_every_message_through_json_gives_the_exact_sum():
    plan = RoundPlan(round_id="w1", cohort=tuple(f"car{i}" for i in range(6)), vector_length=300,
                     quantization=Quantization(clip=1.0, bound=0.1, bits=8), seed=bytes(32))
    assert _through(RoundPlanBody, plan) == plan
    server = SecAggCoordinator(plan)
    cars = {c: SecAggCar(c, _through(RoundPlanBody, plan)) for c in plan.cohort}
    rng = np.random.default_rng(0)
    q = {c: rng.integers(0, 256, 300).astype(np.uint32) for c in plan.cohort}
    for c in plan.cohort:
        server.receive_advertisement(_through(KeyAdvertisementBody, cars[c].advertise()))
    server.close_advertising()
    for c in plan.cohort:
        bundle = cars[c].share_keys(_through(NeighbourKeysBody, server.neighbour_keys(c)))
        server.receive_shares(_through(ShareBundleBody, bundle))
    server.close_sharing()
    lost = "car2"
    for c in plan.cohort:
        if c != lost:
            cars[c].receive_shares(_through(SharesForCarBody, server.shares_for(c)))
            server.receive_masked_input(_through(MaskedInputBody, cars[c].masked_input(q[c])))
    server.close_masking()
    for c in plan.cohort:
        if c != lost:
            answer = cars[c].unmask(_through(UnmaskRequestBody, server.unmask_request(c)))
            server.receive_unmasking(_through(UnmaskResponseBody, answer))
    total = server.finish().total
    np.testing.assert_array_equal(total, sum(q[c].astype(np.uint64) for c in plan.cohort if c != lost))


def test_bytes_travel_as_plain_base64_and_bad_text_is_refused():
    text = MaskedInputBody(car_id="a", payload=bytes(range(256)) * 4).model_dump_json()
    assert "\\n" not in text and json.loads(text)["payload"].endswith("=")
    with pytest.raises(pydantic.ValidationError, match="base64"):
        MaskedInputBody.model_validate_json('{"car_id": "a", "payload": "not base64!"}')
    with pytest.raises(pydantic.ValidationError, match="extra"):
        MaskedInputBody.model_validate_json('{"car_id": "a", "payload": "", "more": 1}')


def test_a_body_with_a_wrong_key_length_is_refused_when_read():
    body = KeyAdvertisementBody.model_validate({"car_id": "a", "cipher_pk": "AAAA", "mask_pk": "AAAA",
                                                "seed_commitment": "AAAA"})
    with pytest.raises(InvalidInput, match="32 bytes"):
        body.to_message()
