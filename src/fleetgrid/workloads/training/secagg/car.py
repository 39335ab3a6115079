"""A car's side of a secure-aggregation round: the secrets it makes, the shares it deals and holds, its masked
input, and the unmasking answers it agrees to give. One object per car per round; no I/O."""

from __future__ import annotations

import secrets

import numpy as np

from fleetgrid.errors import Conflict, DishonestShare, InvalidInput, TooFewSurvivors
from fleetgrid.workloads.training.secagg.encoding import pack, prg_mask
from fleetgrid.workloads.training.secagg.keys import KeyPair, commit, open_share, pair_mask_seed, seal_share
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
from fleetgrid.workloads.training.secagg.shamir import SHARE_NBYTES, Share, split

__all__ = ["SecAggCar", "share_commitments"]


def share_commitments(plan: RoundPlan, dealer: str, holder: str, mask_key: Share, seed: Share) -> tuple[bytes, bytes]:
    """What the dealer commits to for the shares it gives ``holder``: the coordinator checks revealed shares on it."""
    pair = f"{dealer}->{holder}"
    return (commit("mask-key-share", plan.context, pair, mask_key.y_bytes()),
            commit("seed-share", plan.context, pair, seed.y_bytes()))


class SecAggCar:
    """Call in order: :meth:`advertise`, :meth:`share_keys`, :meth:`receive_shares`, :meth:`masked_input`,
    :meth:`unmask`. Each answers the coordinator's message of the same phase."""

    def __init__(self, car_id: str, plan: RoundPlan) -> None:
        plan.member(car_id)
        self.car_id = car_id
        self.plan = plan
        self._cipher = KeyPair()
        self._mask = KeyPair()
        self._seed = secrets.token_bytes(32)
        self._keys: dict[str, KeyAdvertisement] = {}
        self._held: dict[str, tuple[Share, Share]] | None = None
        """Dealer -> (its mask-key share, its seed share) this car holds; None until shares arrive."""
        self._answered = False

    def advertise(self) -> KeyAdvertisement:
        return KeyAdvertisement(car_id=self.car_id, cipher_pk=self._cipher.public, mask_pk=self._mask.public,
                                seed_commitment=commit("seed", self.plan.context, self.car_id, self._seed))

    def share_keys(self, keys: NeighbourKeys) -> ShareBundle:
        """Shares of this car's mask key and seed, one sealed pair per neighbour that advertised."""
        if keys.recipient != self.car_id:
            raise InvalidInput(f"keys addressed to {keys.recipient!r} were handed to car {self.car_id!r}")
        mine = self.plan.graph[self.car_id]
        strangers = sorted(set(keys.keys) - mine)
        if strangers:
            raise InvalidInput(f"car {self.car_id!r} was sent keys of {strangers}, which are not its neighbours in "
                               f"round {self.plan.round_id!r}; accepted: {sorted(mine)}")
        for car, adv in keys.keys.items():
            if adv.car_id != car:
                raise InvalidInput(f"the keys listed under {car!r} are car {adv.car_id!r}'s")
        t = self.plan.threshold
        if len(keys.keys) < t:
            raise TooFewSurvivors(f"car {self.car_id!r} has {len(keys.keys)} neighbours left; dealing shares needs "
                                  f"at least the threshold {t}")
        self._keys = dict(keys.keys)
        holders = sorted(self._keys)
        xs = [self.plan.point(h) for h in holders]
        key_shares = split(self._mask.raw_private(), xs, t)
        seed_shares = split(self._seed, xs, t)
        out = []
        for holder, ks, ss in zip(holders, key_shares, seed_shares, strict=True):
            plain = ks.x.to_bytes(2, "big") + ks.y_bytes() + ss.y_bytes()
            sealed = seal_share(self._cipher, self._keys[holder].cipher_pk, self.plan.context, self.car_id, holder,
                                plain)
            kc, sc = share_commitments(self.plan, self.car_id, holder, ks, ss)
            out.append(EncryptedShare(sender=self.car_id, recipient=holder, sealed=sealed, mask_key_commitment=kc,
                                      seed_commitment=sc))
        return ShareBundle(car_id=self.car_id, shares=tuple(out))

    def receive_shares(self, shares: SharesForCar) -> None:
        """Open the shares the neighbours dealt this car; the dealers are the neighbours it masks with."""
        if shares.recipient != self.car_id:
            raise InvalidInput(f"shares addressed to {shares.recipient!r} were handed to car {self.car_id!r}")
        held: dict[str, tuple[Share, Share]] = {}
        me = self.plan.point(self.car_id)
        for s in shares.shares:
            adv = self._keys.get(s.sender)
            if adv is None or s.recipient != self.car_id or s.sender in held:
                raise InvalidInput(f"car {self.car_id!r} got shares from {s.sender!r} for {s.recipient!r}; "
                                   f"accepted: one from each neighbour whose keys it got, {sorted(self._keys)}")
            plain = open_share(self._cipher, adv.cipher_pk, self.plan.context, s.sender, self.car_id, s.sealed)
            if len(plain) != 2 + 2 * SHARE_NBYTES or int.from_bytes(plain[:2], "big") != me:
                raise DishonestShare(f"car {s.sender!r} dealt car {self.car_id!r} a malformed share",
                                     car_ids=(s.sender,))
            ks = Share.from_bytes(me, plain[2 : 2 + SHARE_NBYTES])
            ss = Share.from_bytes(me, plain[2 + SHARE_NBYTES :])
            if share_commitments(self.plan, s.sender, self.car_id, ks, ss) != (s.mask_key_commitment,
                                                                             s.seed_commitment):
                raise DishonestShare(f"car {s.sender!r} dealt car {self.car_id!r} shares that do not match the "
                                     "commitments it gave the coordinator", car_ids=(s.sender,))
            held[s.sender] = (ks, ss)
        self._held = held

    def masked_input(self, quantized: np.ndarray) -> MaskedInput:
        """``quantized`` (from :func:`encoding.quantize`) plus this car's self mask and its pairwise masks with every
        neighbour that dealt it shares, mod ``2^m``, bit-packed."""
        if self._held is None:
            raise Conflict(f"car {self.car_id!r} has not received its neighbours' shares yet; call receive_shares")
        plan, q = self.plan, np.asarray(quantized)
        if q.shape != (plan.vector_length,) or not np.issubdtype(q.dtype, np.integer):
            raise InvalidInput(f"car {self.car_id!r}: the quantized update must be {plan.vector_length} integers, "
                               f"got shape {q.shape} dtype {q.dtype}")
        levels = plan.quantization.levels
        if q.size and (int(q.min()) < 0 or int(q.max()) > levels):
            raise InvalidInput(f"car {self.car_id!r}: quantized values must be in [0, {levels}], got "
                               f"[{int(q.min())}, {int(q.max())}]")
        m = plan.modulus_bits
        modulus = np.uint64(1 << m)
        low = np.uint64((1 << m) - 1)
        y = (q.astype(np.uint64) + prg_mask(self._seed, plan.vector_length, m)) & low
        for peer in sorted(self._held):
            seed = pair_mask_seed(self._mask, self._keys[peer].mask_pk, plan.context, self.car_id, peer)
            mask = prg_mask(seed, plan.vector_length, m)
            y = ((y + mask) if self.car_id < peer else (y + modulus - mask)) & low
        return MaskedInput(car_id=self.car_id, payload=pack(y, m))

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal shares of the dropped neighbours' mask keys and of the survivors' seeds; once per round, and never
        both for one car (with both, the coordinator could strip every mask off that car's input)."""
        if request.recipient != self.car_id:
            raise InvalidInput(f"an unmask request for {request.recipient!r} was handed to car {self.car_id!r}")
        if self._held is None:
            raise Conflict(f"car {self.car_id!r} holds no shares yet; it cannot answer an unmask request")
        if self._answered:
            raise Conflict(f"car {self.car_id!r} already answered the unmask request of round "
                           f"{self.plan.round_id!r}; it answers once")
        both = sorted(request.dropped & request.survivors)
        if both:
            raise InvalidInput(f"car {self.car_id!r} refuses to reveal both the mask key and the seed of {both}: "
                               "a car is either dropped or a survivor, never both")
        unknown = sorted((request.dropped | request.survivors) - set(self._held))
        if unknown:
            raise InvalidInput(f"car {self.car_id!r} holds no shares of {unknown}; it holds those of "
                               f"{sorted(self._held)}")
        self._answered = True
        return UnmaskResponse(car_id=self.car_id,
                              mask_key_shares={c: self._held[c][0].y_bytes() for c in sorted(request.dropped)},
                              seed_shares={c: self._held[c][1].y_bytes() for c in sorted(request.survivors)})
