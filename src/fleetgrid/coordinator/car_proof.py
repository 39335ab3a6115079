"""Checking a car's signed request (:mod:`fleetgrid.identity.signing`): the signature over what was sent, a
timestamp within the clock-skew window, and a nonce not seen before, in bounded memory.

Nonces are remembered only as long as their timestamp is inside the window (older ones are refused as stale
anyway). When more than ``max_nonces`` are held, the oldest are forgotten and the window's lower edge moves up past
them: a replay of a forgotten nonce is then refused as stale, never accepted. Under a flood that can refuse an honest
car's request whose clock lags, which its retry (a fresh timestamp) gets past. Each coordinator process remembers
its own nonces: replicas behind one address should route a car to one replica, or a replay to another within the
window gets through (the bearer secret is still needed, and nothing a car sends is not idempotent).
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..clock import Clock
from ..errors import AuthError
from ..identity.signing import Proof, load_public_key, parse_proof, verify

__all__ = ["ProofChecker"]

_KEYS_CACHED = 50_000
"""Parsed public keys kept (parsing one costs about as much as a verification)."""


class ProofChecker:
    def __init__(self, clock: Clock, *, skew_s: float = 60.0, max_nonces: int = 200_000) -> None:
        self.clock, self.skew_s, self.max_nonces = clock, skew_s, max_nonces
        self._seen: set[tuple[str, str]] = set()
        self._expiry: list[tuple[float, str, str]] = []  # heap of (timestamp, vehicle, nonce)
        self._floor = float("-inf")
        """No timestamp at or below this is accepted: nonces that old may have been forgotten."""
        self._keys: OrderedDict[str, tuple[str, Ed25519PublicKey]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, vehicle_id: str, public_key: str, method: str, target: str, digest: str,
              header: str | None) -> None:
        """Raise AuthError unless ``header`` is a fresh, unreplayed signature by the car's key over this request."""
        proof = parse_proof(header)
        now = self.clock.now()
        if abs(now - proof.at) > self.skew_s:
            raise AuthError(f"request signed at {proof.t} but the coordinator's clock reads {now:.3f}: more than "
                            f"{self.skew_s:.0f} s apart; sign with the current time (is the car's clock set?)")
        if not verify(self._key(vehicle_id, public_key), proof, vehicle_id, method, target, digest):
            raise AuthError("unknown vehicle or wrong credential; use the credential and key this car enrolled "
                            "with, or enroll again")
        self._remember(vehicle_id, proof, now)

    def _remember(self, vehicle_id: str, proof: Proof, now: float) -> None:
        with self._lock:
            while self._expiry and self._expiry[0][0] < now - self.skew_s:  # outside the window: stale anyway
                _, v, n = heapq.heappop(self._expiry)
                self._seen.discard((v, n))
            entry = (vehicle_id, proof.nonce)
            if entry in self._seen or proof.at <= self._floor:
                raise AuthError("this signed request was sent before (a replay); sign each request afresh")
            self._seen.add(entry)
            heapq.heappush(self._expiry, (proof.at, vehicle_id, proof.nonce))
            while len(self._seen) > self.max_nonces:
                at, v, n = heapq.heappop(self._expiry)
                self._seen.discard((v, n))
                self._floor = max(self._floor, at)

    def _key(self, vehicle_id: str, text: str) -> Ed25519PublicKey:
        with self._lock:
            cached = self._keys.get(vehicle_id)
            if cached is not None and cached[0] == text:
                self._keys.move_to_end(vehicle_id)
                return cached[1]
        key = load_public_key(text)  # stored at enrollment, so well-formed
        with self._lock:
            self._keys[vehicle_id] = (text, key)
            while len(self._keys) > _KEYS_CACHED:
                self._keys.popitem(last=False)
        return key
