"""The bounded pieces of car identity on a manual clock: the nonce memory forgets its oldest under pressure and then
refuses anything as old (never accepts a replay), and the rate limiter's buckets refill, and are capped in number."""

from __future__ import annotations

import pytest

from fleetgrid.clock import ManualClock
from fleetgrid.coordinator.car_proof import ProofChecker
from fleetgrid.coordinator.ratelimit import RateLimit, RateLimiter
from fleetgrid.errors import AuthError, InvalidInput, RateLimited
from fleetgrid.identity.signing import SIGNATURE_HEADER, CarKey, body_hash

T0 = 1_800_000_000.0
EMPTY = body_hash(b"")


def signed(key: CarKey, at: float) -> str:
    return key.sign("v-1", "GET", "/v1/x", EMPTY, at)[SIGNATURE_HEADER]


def test_a_full_nonce_memory_forgets_the_oldest_and_refuses_what_is_as_old():
    clock = ManualClock(T0)
    checker = ProofChecker(clock, skew_s=60.0, max_nonces=3)
    key = CarKey.generate()
    headers = [signed(key, T0 + i) for i in range(4)]
    clock.advance(4)
    for h in headers:
        checker.check("v-1", key.public_text, "GET", "/v1/x", EMPTY, h)
    # The first was forgotten to make room; its replay is refused (as too old to tell), as are the others'.
    for h in headers:
        with pytest.raises(AuthError, match="sent before"):
            checker.check("v-1", key.public_text, "GET", "/v1/x", EMPTY, h)
    checker.check("v-1", key.public_text, "GET", "/v1/x", EMPTY, signed(key, clock.now()))  # fresh ones pass
    clock.advance(120)  # out of the window: nonces are dropped, and the old headers are stale anyway
    with pytest.raises(AuthError, match="more than 60 s apart"):
        checker.check("v-1", key.public_text, "GET", "/v1/x", EMPTY, headers[-1])
    assert len(checker._seen) <= 3


@pytest.mark.parametrize("header", [None, "", "t=1,n=abc", "t=nan,n=abcdefgh,s=" + "A" * 86, "garbage"])
def test_a_missing_or_malformed_signature_is_refused_by_name(header):
    checker = ProofChecker(ManualClock(T0))
    with pytest.raises(AuthError, match="X-Fleetgrid-Signature"):
        checker.check("v-1", CarKey.generate().public_text, "GET", "/v1/x", EMPTY, header)


def test_buckets_refill_on_the_clock_and_their_number_is_capped():
    clock = ManualClock(T0)
    limiter = RateLimiter(RateLimit(burst=2, per_s=0.5), clock, what="tries", max_keys=3)
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(RateLimited) as refused:
        limiter.take("a")
    assert refused.value.retry_after_s == pytest.approx(2.0)
    clock.advance(2.0)
    limiter.take("a")
    for key in ("b", "c", "d"):
        limiter.spend(key)
    assert len(limiter) == 3  # "a", least recently used, was forgotten
    with pytest.raises(InvalidInput, match="burst >= 1"):
        RateLimit(burst=0, per_s=1.0)
