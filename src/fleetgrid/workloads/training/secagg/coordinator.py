"""The coordinator's side of a secure-aggregation round: it relays keys and sealed shares, collects masked inputs,
asks the survivors for the shares that strip the masks, checks every revealed share against its dealer's
commitment, and returns the exact integer sum of the survivors' quantized updates. It never sees one car's update.

Cars drop by not answering: each ``close_*`` call ends a phase with whoever answered, and refuses to go on
(:class:`TooFewSurvivors`) as soon as some secret the sum will need has fewer than ``t`` live holders.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from fleetgrid.errors import Conflict, DishonestShare, InvalidInput, TooFewSurvivors
from fleetgrid.workloads.training.secagg.encoding import decode_sum, prg_mask, unpack
from fleetgrid.workloads.training.secagg.keys import KeyPair, commit, pair_mask_seed, private_key_from_bytes
from fleetgrid.workloads.training.secagg.messages import (
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    NeighbourKeys,
    RoundPlan,
    ShareBundle,
    SharesForCar,
    UnmaskRequest,
    UnmaskResponse,
)
from fleetgrid.workloads.training.secagg.shamir import Share, reconstruct

__all__ = ["AggregateResult", "Phase", "SecAggCoordinator"]


class Phase(enum.Enum):
    ADVERTISING = "advertising"
    SHARING = "sharing"
    MASKING = "masking"
    UNMASKING = "unmasking"
    DONE = "done"


@dataclass(frozen=True, kw_only=True)
class AggregateResult:
    total: np.ndarray
    """The exact sum of the survivors' quantized updates (uint64)."""
    survivors: tuple[str, ...]
    """The cars whose updates the sum holds: those whose masked input arrived."""
    dishonest: frozenset[str] = field(default_factory=frozenset)
    """Cars caught revealing a share that does not match its commitment (their answers were not used)."""

    def mean(self, plan: RoundPlan) -> np.ndarray:
        """The survivors' mean update, back in floats."""
        return decode_sum(self.total, len(self.survivors), plan.quantization) / len(self.survivors)


class SecAggCoordinator:
    """One round's state. Feed each phase's messages to ``receive_*``, then ``close_*``; finally :meth:`finish`."""

    def __init__(self, plan: RoundPlan) -> None:
        self.plan = plan
        self.phase = Phase.ADVERTISING
        self._keys: dict[str, KeyAdvertisement] = {}
        self._bundles: dict[str, ShareBundle] = {}
        self._inputs: dict[str, np.ndarray] = {}
        self._commitments: dict[tuple[str, str], EncryptedShare] = {}
        """(dealer, holder) -> the sealed shares with their commitments."""
        self._revealed: dict[str, UnmaskResponse] = {}
        self._dishonest: set[str] = set()

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _expect(self, phase: Phase, car: str | None = None) -> None:
        if self.phase is not phase:
            raise Conflict(f"round {self.plan.round_id!r} is {self.phase.value}, not {phase.value}")
        if car is not None:
            self.plan.member(car)

    def _neighbours_in(self, car: str, alive: set[str] | dict) -> set[str]:
        return {c for c in self.plan.graph[car] if c in alive}

    def _require_holders(self, dealers: set[str], holders: set[str], what: str) -> None:
        """Each dealer's secret needs ``t`` live holders among the neighbours it dealt to."""
        t = self.plan.threshold
        short = {d: len(self._neighbours_in(d, self._keys) & holders) for d in sorted(dealers)}
        short = {d: n for d, n in short.items() if n < t}
        if short:
            worst = min(short, key=short.__getitem__)
            raise TooFewSurvivors(
                f"round {self.plan.round_id!r} cannot rebuild the {what} of {len(short)} cars (car {worst!r} has "
                f"{short[worst]} live share holders of the {t} needed): more than the allowed "
                f"{self.plan.max_dropout:.0%} of the cohort dropped")

    # -- phase 0: advertise keys ------------------------------------------------------------------------------------

    def receive_advertisement(self, adv: KeyAdvertisement) -> None:
        self._expect(Phase.ADVERTISING, adv.car_id)
        if adv.car_id in self._keys:
            raise Conflict(f"car {adv.car_id!r} already advertised its keys for round {self.plan.round_id!r}")
        self._keys[adv.car_id] = adv

    def close_advertising(self) -> None:
        self._expect(Phase.ADVERTISING)
        alive = set(self._keys)
        self._require_holders(alive, alive, "secrets")
        self.phase = Phase.SHARING

    def neighbour_keys(self, car: str) -> NeighbourKeys:
        """What ``car`` downloads after advertising: the keys of its neighbours that advertised."""
        self._expect(Phase.SHARING, car)
        neighbours = sorted(self._neighbours_in(car, self._keys))
        return NeighbourKeys(recipient=car, keys={c: self._keys[c] for c in neighbours})

    # -- phase 1: share keys ----------------------------------------------------------------------------------------

    def receive_shares(self, bundle: ShareBundle) -> None:
        self._expect(Phase.SHARING, bundle.car_id)
        car = bundle.car_id
        if car not in self._keys or car in self._bundles:
            raise Conflict(f"car {car!r} cannot deal shares in round {self.plan.round_id!r}: it did not advertise "
                           "keys, or already dealt")
        want = self._neighbours_in(car, self._keys)
        got = [s.recipient for s in bundle.shares]
        if sorted(got) != sorted(want) or any(s.sender != car for s in bundle.shares):
            raise InvalidInput(f"car {car!r} must deal one share to each neighbour that advertised, {sorted(want)}; "
                               f"got shares for {sorted(got)}")
        self._bundles[car] = bundle

    def close_sharing(self) -> None:
        self._expect(Phase.SHARING)
        dealt = set(self._bundles)
        self._require_holders(dealt, dealt, "secrets")
        for bundle in self._bundles.values():
            for s in bundle.shares:
                self._commitments[(s.sender, s.recipient)] = s
        self.phase = Phase.MASKING

    def shares_for(self, car: str) -> SharesForCar:
        """The sealed shares dealt to ``car`` by the neighbours that completed dealing: the cars it masks with."""
        self._expect(Phase.MASKING, car)
        if car not in self._bundles:
            raise Conflict(f"car {car!r} did not deal shares in round {self.plan.round_id!r}; it has dropped")
        dealers = sorted(self._neighbours_in(car, self._bundles))
        return SharesForCar(recipient=car, shares=tuple(self._commitments[(d, car)] for d in dealers))

    # -- phase 2: masked input --------------------------------------------------------------------------------------

    def receive_masked_input(self, masked: MaskedInput) -> None:
        self._expect(Phase.MASKING, masked.car_id)
        car = masked.car_id
        if car not in self._bundles or car in self._inputs:
            raise Conflict(f"car {car!r} cannot send a masked input in round {self.plan.round_id!r}: it did not "
                           "deal shares, or already sent one")
        masked.check(self.plan)
        self._inputs[car] = unpack(masked.payload, self.plan.vector_length, self.plan.modulus_bits)

    def close_masking(self) -> None:
        self._expect(Phase.MASKING)
        survivors = set(self._inputs)
        if not survivors:
            raise TooFewSurvivors(f"no car of round {self.plan.round_id!r} sent a masked input")
        self._require_holders(set(self._bundles), survivors, "secrets")
        self.phase = Phase.UNMASKING

    def unmask_request(self, car: str) -> UnmaskRequest:
        """Which of ``car``'s dealers dropped (reveal a mask-key share) and which survived (reveal a seed share)."""
        self._expect(Phase.UNMASKING, car)
        if car not in self._inputs:
            raise Conflict(f"car {car!r} sent no masked input in round {self.plan.round_id!r}; it is not asked")
        dealers = self._neighbours_in(car, self._bundles)
        survivors = frozenset(d for d in dealers if d in self._inputs)
        return UnmaskRequest(recipient=car, dropped=frozenset(dealers - survivors), survivors=survivors)

    # -- phase 3: unmasking -----------------------------------------------------------------------------------------

    def receive_unmasking(self, response: UnmaskResponse) -> None:
        """Check every revealed share against its dealer's commitment; a car with a wrong one is named
        (:class:`DishonestShare`) and its whole answer set aside, so the sum is rebuilt from the others."""
        self._expect(Phase.UNMASKING, response.car_id)
        car = response.car_id
        if car not in self._inputs or car in self._revealed or car in self._dishonest:
            raise Conflict(f"car {car!r} cannot answer unmasking in round {self.plan.round_id!r}: it was not asked "
                           "or already answered")
        asked = self.unmask_request(car)
        if set(response.mask_key_shares) != asked.dropped or set(response.seed_shares) != asked.survivors:
            raise InvalidInput(f"car {car!r} must reveal mask-key shares of {sorted(asked.dropped)} and seed shares "
                               f"of {sorted(asked.survivors)}; got {sorted(response.mask_key_shares)} and "
                               f"{sorted(response.seed_shares)}")
        ctx = self.plan.context
        wrong = sorted(
            [d for d, y in response.mask_key_shares.items()
             if commit("mask-key-share", ctx, f"{d}->{car}", y) != self._commitments[(d, car)].mask_key_commitment]
            + [d for d, y in response.seed_shares.items()
               if commit("seed-share", ctx, f"{d}->{car}", y) != self._commitments[(d, car)].seed_commitment])
        if wrong:
            self._dishonest.add(car)
            raise DishonestShare(f"car {car!r} revealed shares of {wrong} that do not match what their dealers "
                                 "committed to; its answer is set aside", car_ids=(car,))
        self._revealed[car] = response

    def _rebuild(self, dealer: str, kind: str) -> bytes:
        revealed = [(h, r.mask_key_shares if kind == "mask key" else r.seed_shares)
                    for h, r in sorted(self._revealed.items())]
        shares = [Share.from_bytes(self.plan.point(h), got[dealer]) for h, got in revealed if dealer in got]
        t = self.plan.threshold
        if len(shares) < t:
            raise TooFewSurvivors(f"the {kind} of car {dealer!r} has {len(shares)} honest shares revealed of the {t} "
                                  f"needed: more than the allowed {self.plan.max_dropout:.0%} of round "
                                  f"{self.plan.round_id!r} dropped or lied")
        try:
            secret = reconstruct(shares, t)
        except InvalidInput:
            secret = b""
        ok = (KeyPair(private_key_from_bytes(secret)).public == self._keys[dealer].mask_pk if kind == "mask key"
              else commit("seed", self.plan.context, dealer, secret) == self._keys[dealer].seed_commitment
              ) if secret else False
        if not ok:
            raise DishonestShare(f"car {dealer!r} dealt shares of its {kind} that rebuild to something other than "
                                 "what it advertised; the round cannot be unmasked", car_ids=(dealer,))
        return secret

    def finish(self) -> AggregateResult:
        """The exact sum of the survivors' quantized updates, every mask removed."""
        self._expect(Phase.UNMASKING)
        plan, m = self.plan, self.plan.modulus_bits
        low, modulus = np.uint64((1 << m) - 1), np.uint64(1 << m)
        total = np.zeros(plan.vector_length, dtype=np.uint64)
        for y in self._inputs.values():
            total = (total + y) & low
        for car in sorted(self._inputs):
            total = (total + modulus - prg_mask(self._rebuild(car, "seed"), plan.vector_length, m)) & low
        for gone in sorted(set(self._bundles) - set(self._inputs)):
            key = KeyPair(private_key_from_bytes(self._rebuild(gone, "mask key")))
            for peer in sorted(self._neighbours_in(gone, self._inputs)):
                mask = prg_mask(pair_mask_seed(key, self._keys[peer].mask_pk, plan.context, gone, peer),
                                plan.vector_length, m)
                # peer added +mask if peer < gone, else -mask: take back what it added
                total = ((total + modulus - mask) if peer < gone else (total + mask)) & low
        self.phase = Phase.DONE
        return AggregateResult(total=total, survivors=tuple(sorted(self._inputs)),
                               dishonest=frozenset(self._dishonest))
