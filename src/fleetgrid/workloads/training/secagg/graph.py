"""Who masks with whom (SecAgg+'s sparse graph, Bell et al. 2020): the degree ``k``, the threshold ``t``, the graph.

Each car masks its input only with its ``k`` neighbours and Shamir-shares its two secrets among them, so the cost of
a round grows with ``k`` instead of the cohort size ``n``. :func:`choose_degree` picks ``k`` and ``t`` from ``n``
and the declared ``max_dropout`` fraction ``delta``, which the round must survive (``D = floor(delta * n)`` cars
lost at any point after advertising their keys):

- ``t = floor(k / 2) + 1``, a strict majority of the neighbours. Two disjoint sets of neighbours cannot both reach
  ``t``, so a coordinator that tells half of a car's neighbours "it dropped" (asking for its mask key) and the
  other half "it survived" (asking for its self-mask seed) still cannot unmask that car; and no smaller ``t`` has
  that property, so this ``t`` tolerates the most dropouts.
- recovery needs ``t`` surviving neighbours for every car whose secret is rebuilt, i.e. at most ``k - t`` of its
  neighbours lost. ``k = 2D + 1`` gives ``k - t = D``: recovery is guaranteed whoever drops. For large cohorts
  that is most of the cohort, so :func:`choose_degree` takes the smallest ``k`` whose failure probability, with
  the ``D`` lost cars a uniformly random subset (a hypergeometric tail, union-bounded over the ``n`` cars), is
  below ``2^-40``, when that is smaller.
- ``k >= 2 ceil(log2 n) + 1`` at least, so that the survivors' graph stays connected and large enough that the
  coordinator learns only the whole sum, never a small group's; the graph below is ``k``-connected, so it stays
  connected after any ``k - 1`` losses.
- the full graph (``k = n - 1``) whenever the rules above ask for as many; for 8 cars and ``delta = 0.3`` that is
  the case (``k = 7, t = 4``); for 32 cars ``k = 19, t = 10``.

``delta`` must be below 1/2: with ``t`` a majority, more than half of a neighbourhood lost is beyond recovery.

The graph is a Harary graph (a ring lattice, each car joined to its ``k // 2`` nearest on both sides, plus the
opposite car when ``k`` is odd) over the cohort in an order drawn from the round seed (sorted by
``sha256(seed || id)``), so every party derives it alike and no party picks its neighbours.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from fleetgrid.errors import InvalidInput

__all__ = ["choose_degree", "dropout_failure_probability", "neighbour_graph"]

FAILURE_TARGET = 2.0**-40


def dropout_failure_probability(n: int, k: int, t: int, lost: int) -> float:
    """Union bound over the ``n`` cars of P[more than ``k - t`` of a car's ``k`` neighbours among ``lost`` random
    cars out of the other ``n - 1``] (hypergeometric tail)."""
    others = n - 1
    total = math.comb(others, k)
    tail = sum(math.comb(lost, j) * math.comb(others - lost, k - j) for j in range(k - t + 1, min(k, lost) + 1))
    return min(1.0, n * tail / total)


def choose_degree(n: int, max_dropout: float) -> tuple[int, int]:
    """``(k, t)`` for a cohort of ``n`` cars that must survive losing a ``max_dropout`` fraction (see module doc)."""
    if not isinstance(n, int) or n < 3:
        raise InvalidInput(f"secure aggregation needs a cohort of at least 3 cars, got {n!r}")
    if not (isinstance(max_dropout, (int, float)) and 0 <= max_dropout < 0.5):
        raise InvalidInput(f"max_dropout must be a fraction in [0, 0.5), got {max_dropout!r}")
    lost = math.floor(max_dropout * n)
    k_min = min(n - 1, 2 * math.ceil(math.log2(n)) + 1)
    for k in range(k_min, n):
        t = k // 2 + 1
        if k - t >= lost or dropout_failure_probability(n, k, t, lost) <= FAILURE_TARGET:
            return k, t
    k = n - 1
    t = k // 2 + 1
    if k - t < lost:
        raise InvalidInput(
            f"a cohort of {n} cars cannot survive losing {lost} ({max_dropout:.0%}): at most {k - t} may drop; "
            "lower max_dropout or grow the cohort")
    return k, t


def _ring_order(cohort: Sequence[str], seed: bytes) -> list[str]:
    return sorted(cohort, key=lambda c: hashlib.sha256(seed + c.encode()).digest())


def neighbour_graph(cohort: Sequence[str], k: int, seed: bytes) -> dict[str, frozenset[str]]:
    """Each car's ``k`` neighbours (symmetric, no self-loops); ``k`` rounded up to even when the cohort is odd."""
    n = len(cohort)
    if len(set(cohort)) != n:
        raise InvalidInput("the cohort lists a car twice; each car id must appear once")
    if not 1 <= k <= n - 1:
        raise InvalidInput(f"degree k must be in [1, {n - 1}] for {n} cars, got {k}")
    order = _ring_order(cohort, seed)
    half = k // 2 + (k % 2 if n % 2 else 0)
    graph: dict[str, set[str]] = {c: set() for c in order}
    for i, car in enumerate(order):
        for step in range(1, half + 1):
            for other in (order[(i + step) % n], order[(i - step) % n]):
                if other != car:
                    graph[car].add(other)
        if k % 2 and n % 2 == 0:
            graph[car].add(order[(i + n // 2) % n])
    return {c: frozenset(v) for c, v in graph.items()}
