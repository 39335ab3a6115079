"""Which robust aggregators, norm bounds, privacy modes and secure aggregation work together: one check, run by every
strategy config, that refuses a combination that would silently lose a guarantee, saying why and what works.

The README's "Privacy" section tabulates the same rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetgrid.errors import InvalidInput

if TYPE_CHECKING:
    from fleetgrid.workloads.training.config import StrategyConfig

__all__ = ["check_combination"]


def check_combination(config: StrategyConfig, *, asynchronous: bool) -> None:
    """InvalidInput if ``config``'s robust aggregation, privacy and secure aggregation do not compose.
    ``asynchronous``: the strategy folds single updates as they arrive (FedBuff)."""
    robust, privacy, secagg = config.robust, config.privacy, config.secure_aggregation
    if asynchronous and (privacy.enabled or secagg):
        raise InvalidInput(
            "an asynchronous strategy (fedbuff) cannot run with differential privacy or secure aggregation: it "
            "folds a few updates at a time as they arrive, so a masked sum would hide almost nothing and the "
            "accountant's rounds of one sampled cohort do not exist; use fedavg, fedadam or diloco instead"
        )
    if robust.aggregator != "mean" and (privacy.enabled or secagg):
        why = ("secure aggregation shows the coordinator only the sum, and it needs each update in clear"
               if secagg else "differential privacy's noise is calibrated to the sum's sensitivity (one car moves a "
               "sum of clipped updates by at most clip), which a selection or order statistic does not have")
        raise InvalidInput(
            f"aggregator {robust.aggregator!r} cannot run with "
            f"{'secure aggregation' if secagg else 'differential privacy'}: {why}; use aggregator 'mean' with a "
            "fixed clip (norm_bound='fixed', or the privacy clip), which bounds every car's influence instead"
        )
    if robust.reputation and (privacy.enabled or secagg):
        why = ("secure aggregation shows the coordinator only the sum, and reputation needs each update's direction"
               if secagg else "differential privacy's sensitivity assumes every clipped car weighs the same, and a "
               "weight learnt from the car's past updates leaks them and changes what one car can move the sum by")
        raise InvalidInput(
            f"reputation cannot run with {'secure aggregation' if secagg else 'differential privacy'}: {why}; "
            "set reputation=False (a fixed clip bounds every car's influence instead)"
        )
    if robust.norm_bound == "adaptive" and privacy.enabled:
        raise InvalidInput(
            "norm_bound 'adaptive' cannot run with differential privacy: the bound is derived from the other cars' "
            "norms, so one car changes how everyone else is clipped and its influence is no longer bounded by the "
            "privacy clip; set norm_bound='off' (the privacy clip bounds every update) or 'fixed'"
        )
    if robust.norm_bound == "adaptive" and secagg:
        raise InvalidInput(
            "norm_bound 'adaptive' cannot run with secure aggregation: the coordinator cannot see the individual "
            "norms it derives the bound from; set norm_bound='fixed' with max_norm (each car clips its own update "
            "and the coordinator checks the bound on the sum), or enable differential privacy with a clip"
        )
    if robust.aggregator == "krum" and config.rounds.min_reports < 2 * robust.byzantine + 3:
        f = robust.byzantine
        raise InvalidInput(
            f"aggregator 'krum' with byzantine f={f} needs n >= 2f + 3 = {2 * f + 3} updates every round, but "
            f"min_reports={config.rounds.min_reports} lets a round close with fewer; set min_reports >= {2 * f + 3} "
            f"(and clients_per_round at least that) or lower byzantine"
        )
    if robust.aggregator == "krum" and robust.multi_krum > config.rounds.min_reports - robust.byzantine:
        raise InvalidInput(
            f"multi_krum m={robust.multi_krum} can exceed n - f in a round of min_reports="
            f"{config.rounds.min_reports} reports with byzantine f={robust.byzantine}; use m <= "
            f"{config.rounds.min_reports - robust.byzantine}"
        )
