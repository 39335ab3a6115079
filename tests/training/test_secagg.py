"""Secure aggregation end to end, in process: masked inputs look random, sums are exact through dropouts, liars are
caught and named, unsafe requests and malformed inputs are refused."""

import dataclasses
import math

import numpy as np
import pytest

from fleetgrid.errors import Conflict, DishonestShare, InvalidInput, TooFewSurvivors
from fleetgrid.workloads.training.secagg import (
    Dropouts,
    MaskedInput,
    Quantization,
    RoundPlan,
    SecAggCar,
    SecAggCoordinator,
    UnmaskRequest,
    UnmaskResponse,
    decode_sum,
    quantize,
    run_round,
    unpack,
)

P = 4096
QUANT = Quantization(clip=1.0, bound=0.05, bits=8)


def _plan(n: int, *, length: int = P, max_dropout: float = 0.3) -> RoundPlan:
    return RoundPlan(round_id="r7", cohort=tuple(f"car{i:02d}" for i in range(n)), vector_length=length,
                     quantization=QUANT, max_dropout=max_dropout, seed=bytes(range(32)))


def _updates(plan: RoundPlan, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: quantize(rng.normal(0, 0.01, plan.vector_length), plan.quantization, rng) for c in plan.cohort}


def _plain_sum(q: dict[str, np.ndarray], cars) -> np.ndarray:
    return sum((q[c].astype(np.uint64) for c in cars), np.zeros(len(next(iter(q.values()))), np.uint64))


def _chi_square_p(values: np.ndarray, bits: int, bins_log2: int = 6) -> float:
    """Upper-tail p-value of Pearson's chi-square for uniformity over 2^bins_log2 equal bins of [0, 2^bits)
    (Wilson-Hilferty normal approximation, good to a few percent at 63 degrees of freedom)."""
    counts = np.bincount((values >> np.uint64(bits - bins_log2)).astype(np.int64), minlength=1 << bins_log2)
    expected = len(values) / len(counts)
    stat, df = float(((counts - expected) ** 2 / expected).sum()), len(counts) - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _runs_test_p(values: np.ndarray) -> float:
    """Two-sided p-value of the Wald-Wolfowitz runs test above/below the median."""
    above = values > np.median(values)
    n1, n2 = int(above.sum()), int((~above).sum())
    runs = 1 + int((above[1:] != above[:-1]).sum())
    mean = 2 * n1 * n2 / (n1 + n2) + 1
    var = (mean - 1) * (mean - 2) / (n1 + n2 - 1)
    return math.erfc(abs(runs - mean) / math.sqrt(2 * var))


def _masked_alone(plan: RoundPlan, quantized: np.ndarray) -> np.ndarray:
    """What the coordinator holds of car00's update in a full round: its masked input, unpacked."""
    server = SecAggCoordinator(plan)
    cars = {c: SecAggCar(c, plan) for c in plan.cohort}
    for c in plan.cohort:
        server.receive_advertisement(cars[c].advertise())
    server.close_advertising()
    for c in plan.cohort:
        server.receive_shares(cars[c].share_keys(server.neighbour_keys(c)))
    server.close_sharing()
    car = cars["car00"]
    car.receive_shares(server.shares_for("car00"))
    return unpack(car.masked_input(quantized).payload, plan.vector_length, plan.modulus_bits)


def test_one_masked_update_looks_uniformly_random_and_decodes_to_nothing_like_the_update():
    plan = _plan(8)
    update = np.sin(np.linspace(0, 20, P)) * 0.04  # strongly structured, so leakage would show
    q = quantize(update, plan.quantization, np.random.default_rng(0))
    # the statistics can fail: on the unmasked values they do
    assert _chi_square_p(q.astype(np.uint64) << np.uint64(plan.modulus_bits - 8), plan.modulus_bits) < 1e-6
    assert _runs_test_p(q) < 1e-6
    masked = _masked_alone(plan, q)
    assert _chi_square_p(masked, plan.modulus_bits) > 1e-6
    assert _runs_test_p(masked) > 1e-6
    decoded = decode_sum(masked, 1, plan.quantization)
    assert abs(np.corrcoef(decoded, update)[0, 1]) < 0.1
    assert (np.abs(decoded) > plan.quantization.bound).mean() > 0.8  # mostly outside any update's range


@pytest.mark.parametrize("n", [8, 32])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3])
def test_exact_sum_with_cars_dropping_after_sharing_their_keys(n, fraction):
    plan = _plan(n)
    q = _updates(plan, seed=n)
    lost = frozenset(plan.cohort[1 :: max(1, n // max(1, math.floor(fraction * n)))][: math.floor(fraction * n)])
    assert len(lost) == math.floor(fraction * n)
    out = run_round(plan, q, dropouts=Dropouts(before_masking=lost))
    survivors = sorted(set(plan.cohort) - lost)
    assert out.result.survivors == tuple(survivors)
    np.testing.assert_array_equal(out.result.total, _plain_sum(q, survivors))
    assert out.result.mean(plan) == pytest.approx(decode_sum(_plain_sum(q, survivors), len(survivors), QUANT)
                                                  / len(survivors))


@pytest.mark.parametrize("n", [8, 32])
def test_exact_sum_with_dropouts_spread_over_every_phase(n):
    plan = _plan(n)
    q = _updates(plan, seed=1)
    c = plan.cohort
    lost = c[2 :: 3][: math.floor(0.3 * n)]
    d = Dropouts(before_advertising=frozenset(lost[3::4]), before_sharing=frozenset(lost[2::4]),
                 before_masking=frozenset(lost[0::4]), before_unmasking=frozenset(lost[1::4]))
    assert len(d.all()) == math.floor(0.3 * n)
    out = run_round(plan, q, dropouts=d)
    survivors = sorted(set(c) - d.before_advertising - d.before_sharing - d.before_masking)  # unmasking losses count
    np.testing.assert_array_equal(out.result.total, _plain_sum(q, survivors))


@pytest.mark.parametrize("n,lost", [(8, 4), (32, 16)])
def test_more_dropouts_than_allowed_is_a_clear_error_not_a_wrong_sum(n, lost):
    plan = _plan(n)
    with pytest.raises(TooFewSurvivors, match=r"live share holders of the \d+ needed.*30%"):
        run_round(plan, _updates(plan), dropouts=Dropouts(before_masking=frozenset(plan.cohort[:lost])))


def test_too_many_lost_in_unmasking_is_a_clear_error():
    plan = _plan(8)
    with pytest.raises(TooFewSurvivors, match="honest shares revealed"):
        run_round(plan, _updates(plan), dropouts=Dropouts(before_unmasking=frozenset(plan.cohort[:5])))


def _lie(liar: str):
    def tamper(response: UnmaskResponse) -> UnmaskResponse:
        if response.car_id != liar:
            return response
        flip = lambda y: bytes([y[0] ^ 1]) + y[1:]  # noqa: E731
        return dataclasses.replace(response, seed_shares={c: flip(y) for c, y in response.seed_shares.items()},
                                   mask_key_shares={c: flip(y) for c, y in response.mask_key_shares.items()})
    return tamper


@pytest.mark.parametrize("n", [8, 32])
def test_a_car_lying_in_unmasking_is_named_and_the_sum_is_still_exact(n):
    plan = _plan(n)
    q = _updates(plan, seed=2)
    lost = frozenset(plan.cohort[: int(0.3 * n) - 1])  # the liar's answer counts as one more loss
    out = run_round(plan, q, dropouts=Dropouts(before_masking=lost), tamper=_lie("car20" if n == 32 else "car05"))
    liar = "car20" if n == 32 else "car05"
    assert [e.car_ids for e in out.caught] == [(liar,)]
    assert liar in str(out.caught[0])
    assert out.result.dishonest == {liar}
    survivors = sorted(set(plan.cohort) - lost)
    np.testing.assert_array_equal(out.result.total, _plain_sum(q, survivors))


def _through_masking(plan: RoundPlan, lost: frozenset[str] = frozenset()):
    server = SecAggCoordinator(plan)
    cars = {c: SecAggCar(c, plan) for c in plan.cohort}
    q = _updates(plan)
    for c in plan.cohort:
        server.receive_advertisement(cars[c].advertise())
    server.close_advertising()
    for c in plan.cohort:
        server.receive_shares(cars[c].share_keys(server.neighbour_keys(c)))
    server.close_sharing()
    for c in sorted(set(plan.cohort) - lost):
        cars[c].receive_shares(server.shares_for(c))
        server.receive_masked_input(cars[c].masked_input(q[c]))
    server.close_masking()
    return server, cars


def test_a_car_refuses_to_reveal_both_secrets_of_one_car_and_answers_once():
    plan = _plan(8)
    server, cars = _through_masking(plan, lost=frozenset({"car03"}))
    honest = server.unmask_request("car00")
    assert "car03" in honest.dropped and not honest.dropped & honest.survivors
    with pytest.raises(InvalidInput, match=r"refuses to reveal both.*car04"):
        cars["car00"].unmask(UnmaskRequest(recipient="car00", dropped=frozenset({"car03", "car04"}),
                                           survivors=frozenset({"car04"})))
    cars["car00"].unmask(honest)
    # a second request, now claiming car04 dropped, would give the coordinator car04's mask key too
    with pytest.raises(Conflict, match="answers once"):
        cars["car00"].unmask(UnmaskRequest(recipient="car00", dropped=frozenset({"car04"}), survivors=frozenset()))


def test_a_car_refuses_shares_it_does_not_hold_and_requests_for_another_car():
    plan = _plan(8)
    _, cars = _through_masking(plan)
    with pytest.raises(InvalidInput, match="holds no shares of"):
        cars["car00"].unmask(UnmaskRequest(recipient="car00", dropped=frozenset({"car00"}), survivors=frozenset()))
    with pytest.raises(InvalidInput, match="handed to car 'car01'"):
        cars["car01"].unmask(UnmaskRequest(recipient="car00", dropped=frozenset(), survivors=frozenset()))


def test_an_answer_revealing_other_shares_than_asked_is_refused():
    plan = _plan(8)
    server, cars = _through_masking(plan)
    answer = cars["car00"].unmask(server.unmask_request("car00"))
    partial = dataclasses.replace(answer, seed_shares=dict(list(answer.seed_shares.items())[:-1]))
    with pytest.raises(InvalidInput, match="must reveal"):
        server.receive_unmasking(partial)


def test_a_dealer_whose_shares_do_not_match_its_commitments_is_named_by_the_holder():
    plan = _plan(8)
    server = SecAggCoordinator(plan)
    cars = {c: SecAggCar(c, plan) for c in plan.cohort}
    for c in plan.cohort:
        server.receive_advertisement(cars[c].advertise())
    server.close_advertising()
    for c in plan.cohort:
        bundle = cars[c].share_keys(server.neighbour_keys(c))
        if c == "car02":
            shares = tuple(dataclasses.replace(s, seed_commitment=bytes(16)) for s in bundle.shares)
            bundle = dataclasses.replace(bundle, shares=shares)
        server.receive_shares(bundle)
    server.close_sharing()
    with pytest.raises(DishonestShare, match="car02") as caught:
        cars["car00"].receive_shares(server.shares_for("car00"))
    assert caught.value.car_ids == ("car02",)


def test_bad_inputs_are_refused_clearly():
    plan = _plan(8)
    with pytest.raises(InvalidInput, match="not in the cohort"):
        SecAggCar("stranger", plan)
    server, cars = SecAggCoordinator(plan), {c: SecAggCar(c, plan) for c in plan.cohort}
    stranger = dataclasses.replace(cars["car00"].advertise(), car_id="stranger")
    with pytest.raises(InvalidInput, match="'stranger' is not in the cohort"):
        server.receive_advertisement(stranger)
    for c in plan.cohort:
        server.receive_advertisement(cars[c].advertise())
    with pytest.raises(Conflict, match="already advertised"):
        server.receive_advertisement(cars["car00"].advertise())
    with pytest.raises(Conflict, match="is advertising, not masking"):
        server.receive_masked_input(MaskedInput(car_id="car00", payload=b""))
    server.close_advertising()
    for c in plan.cohort:
        server.receive_shares(cars[c].share_keys(server.neighbour_keys(c)))
    server.close_sharing()
    car = cars["car00"]
    car.receive_shares(server.shares_for("car00"))
    with pytest.raises(InvalidInput, match=f"must be {P} integers"):
        car.masked_input(np.zeros(P - 1, np.uint32))
    with pytest.raises(InvalidInput, match=r"must be in \[0, 255\]"):
        car.masked_input(np.full(P, 256, np.uint32))
    with pytest.raises(InvalidInput, match="bytes, got 3"):
        server.receive_masked_input(MaskedInput(car_id="car00", payload=b"abc"))


@pytest.mark.parametrize("bad,match", [
    (dict(cohort=("b", "a", "c")), "sorted"),
    (dict(cohort=("a", "a", "b")), "sorted"),
    (dict(seed=b"short"), "32 bytes"),
    (dict(vector_length=0), "vector_length"),
    (dict(max_dropout=0.5), "max_dropout"),
    (dict(round_id=""), "round_id"),
])
def test_a_round_plan_refuses_bad_settings(bad, match):
    kwargs = dict(round_id="r", cohort=("a", "b", "c", "d"), vector_length=10, quantization=QUANT,
                  seed=bytes(32)) | bad
    with pytest.raises(InvalidInput, match=match):
        RoundPlan(**kwargs)


def test_bytes_on_the_wire_stay_within_twice_plain_int8_for_a_large_update():
    plan = _plan(32, length=100_000)
    q = {c: np.zeros(plan.vector_length, np.uint32) for c in plan.cohort}
    out = run_round(plan, q, dropouts=Dropouts(before_masking=frozenset(plan.cohort[:9])))
    survivor = plan.cohort[-1]
    secagg = out.bytes_up[survivor] + out.bytes_down[survivor]
    assert secagg < 2 * plan.vector_length  # plain int8: one byte per value up
    assert out.bytes_up[survivor] >= math.ceil(plan.vector_length * plan.modulus_bits / 8)
