"""Secure aggregation with dropouts (Bonawitz et al. 2017, with SecAgg+'s sparse neighbour graph, Bell et al.
2020): the coordinator learns the sum of a cohort's quantized updates and nothing about any one of them, and still
gets the exact sum when up to a declared fraction of the cohort drops mid-round.

    plan = RoundPlan(round_id=..., cohort=sorted(ids), vector_length=P, quantization=Quantization(...), seed=...)
    coordinator: SecAggCoordinator(plan)    car: SecAggCar(car_id, plan), quantize(update, plan.quantization, rng)

``run_round`` drives both in process. Modules: ``shamir`` (secret sharing), ``graph`` (k, t and neighbours),
``keys`` (X25519 / HKDF / AES-GCM / commitments), ``encoding`` (the integer domain), ``rotation`` (the random
Hadamard rotation an update is quantized in), ``messages``, ``car``, ``coordinator``, ``driver``. The routes'
pydantic bodies are in :mod:`fleetgrid.secagg_wire`.
"""

from fleetgrid.workloads.training.secagg.car import SecAggCar
from fleetgrid.workloads.training.secagg.coordinator import AggregateResult, Phase, SecAggCoordinator
from fleetgrid.workloads.training.secagg.driver import Dropouts, RoundOutcome, run_round
from fleetgrid.workloads.training.secagg.encoding import (
    Quantization,
    clip_norm,
    decode_sum,
    modulus_bits,
    pack,
    prg_mask,
    quantize,
    sum_norm_bound,
    unpack,
)
from fleetgrid.workloads.training.secagg.graph import choose_degree, neighbour_graph
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
from fleetgrid.workloads.training.secagg.rotation import rotate, unrotate

__all__ = [
    "AggregateResult",
    "Dropouts",
    "EncryptedShare",
    "KeyAdvertisement",
    "MaskedInput",
    "NeighbourKeys",
    "Phase",
    "Quantization",
    "RoundOutcome",
    "RoundPlan",
    "SecAggCar",
    "SecAggCoordinator",
    "ShareBundle",
    "SharesForCar",
    "UnmaskRequest",
    "UnmaskResponse",
    "choose_degree",
    "clip_norm",
    "decode_sum",
    "modulus_bits",
    "neighbour_graph",
    "pack",
    "prg_mask",
    "quantize",
    "rotate",
    "run_round",
    "sum_norm_bound",
    "unpack",
    "unrotate",
]
