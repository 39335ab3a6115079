"""Every federated-training setting, as keyword-only dataclasses checked in ``__post_init__``.

A job's settings nest: a strategy config holds the car's :class:`LocalTrainingConfig` (which holds its uplink
:class:`CompressionConfig`), the :class:`RoundConfig` mechanics, the :class:`RobustConfig` defences and the
downlink compression. ``to_dict`` /
``config_from_dict`` make them JSON for the wire and for checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.aggregate import AGGREGATORS, PARTIAL_WORK_POLICIES, SERVER_OPTIMIZERS
from fleetgrid.workloads.training.combinations import check_combination
from fleetgrid.workloads.training.compression import CompressionConfig
from fleetgrid.workloads.training.privacy import PrivacyConfig

__all__ = [
    "NORM_BOUNDS",
    "OPTIMIZERS",
    "SNAPSHOT_BITS",
    "DiLoCoConfig",
    "FedAdamConfig",
    "FedAvgConfig",
    "FedBuffConfig",
    "LocalTrainingConfig",
    "PrivacyConfig",
    "RobustConfig",
    "RoundConfig",
    "StrategyConfig",
    "config_from_dict",
    "local_config_at",
    "to_dict",
]

OPTIMIZERS = ("sgd", "adamw")
NORM_BOUNDS = ("adaptive", "fixed", "off")
SNAPSHOT_BITS = (8, None)
"""What ``StrategyConfig.snapshot_bits`` accepts: int8 compact snapshots, or None (float32 only)."""


@dataclass(frozen=True, kw_only=True)
class LocalTrainingConfig:
    """The car's inner loop: optimizer, step budget H, batch size, and how the resulting delta is compressed."""

    optimizer: str = "sgd"
    """'sgd' (FedAvg's classic inner loop) or 'adamw' (DiLoCo's)."""
    lr: float = 0.05
    """Inner learning rate, > 0."""
    momentum: float = 0.0
    """SGD momentum in [0, 1); ignored by AdamW."""
    weight_decay: float = 0.0
    """Decoupled weight decay for AdamW, L2 for SGD; >= 0."""
    steps: int = 50
    """H, the local optimizer steps per round; >= 1. A preempted car may report fewer, and a car whose shard is
    small does fewer when ``max_passes`` says so (see :meth:`planned_steps`)."""
    batch_size: int = 32
    """Examples per local step; >= 1."""
    max_passes: float | None = None
    """A cap on a lease's steps counted in passes over the car's own shard, or None for none: a car holding ``n``
    examples plans ``min(steps, ceil(max_passes * n / batch_size))`` steps, so a car with little data is not
    trained to memorise it while one with much data still does H steps; > 0. Off by default: on MNIST-1D with 64
    cars (alpha 0.3) a cap of 8 passes lost 8 points at H = 50 and won back only 4 of H = 100's 9 (README)."""
    grad_clip: float | None = 1.0
    """Global gradient-norm clip, or None for none."""
    prox_mu: float = 0.0
    """FedProx's proximal term (Li et al., 2020): ``prox_mu / 2 * ||w - w_global||^2`` is added to the local
    loss, pulling a car on skewed data back toward the global; >= 0, 0 is off."""
    logit_adjustment: float = 0.0
    """tau of the logit-adjusted loss (Menon et al., 2021; FedLC, Zhang et al., 2022), >= 0, 0 is off: the car adds
    ``tau * (log(prior) - log(target))`` to its logits in its training loss, ``prior`` being the share of each
    class (or next token) among its own targets and ``target`` ``logit_target``'s. A car that sees one or two
    labels then learns what tells them apart from the rest without learning that the rest are rare. The prior never
    leaves the car; held-out evaluation and serving use the plain logits."""
    logit_target: tuple[float, ...] | None = None
    """The class shares the adjustment aims at, each > 0, summing to 1: set by the strategy from the job's held-out
    targets (``Strategy.target_prior``), not by hand. None aims at every class alike, which is right only for a model
    scored on balanced classes: a language model's next tokens are not (uniform cost the char LM 2.3x its
    perplexity)."""
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    """How the car compresses its delta for the uplink."""
    update_clip: float | None = None
    """The L2 bound the car clips its delta to before sending it, or None. Set by the strategy (from the privacy
    clip, or under secure aggregation the fixed norm bound), not by hand: a bound the coordinator cannot apply."""
    update_noise_std: float = 0.0
    """Gaussian noise per coordinate the car adds to its clipped delta (distributed DP); set by the strategy."""
    drift_correction: float = 0.0
    """SCAFFOLD's strength s: the car adds ``s * (c - c_i)`` to every gradient and reports its mean gradient; in
    [0, 1], 0 is off. Set by the strategy (``DiLoCoConfig.drift_correction``), not by hand."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInput(f"local optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.lr > 0:
            raise InvalidInput(f"local lr must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise InvalidInput(f"local momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise InvalidInput(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise InvalidInput(f"local steps H must be an integer >= 1, got {self.steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidInput(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.max_passes is not None and not (
            isinstance(self.max_passes, (int, float)) and 0 < self.max_passes < math.inf
        ):
            raise InvalidInput(f"max_passes must be a finite number > 0 or None, got {self.max_passes!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise InvalidInput(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if not (isinstance(self.prox_mu, (int, float)) and 0 <= self.prox_mu < math.inf):
            raise InvalidInput(f"prox_mu must be a finite number >= 0, got {self.prox_mu!r}")
        if not (isinstance(self.logit_adjustment, (int, float)) and 0 <= self.logit_adjustment < math.inf):
            raise InvalidInput(f"logit_adjustment must be a finite number >= 0 (0 is off), got "
                               f"{self.logit_adjustment!r}")
        if self.logit_target is not None:
            _check_shares("logit_target", self.logit_target)
            object.__setattr__(self, "logit_target", tuple(float(v) for v in self.logit_target))  # JSON gives a list
        if self.update_clip is not None and not (
            isinstance(self.update_clip, (int, float)) and 0 < self.update_clip < math.inf
        ):
            raise InvalidInput(f"update_clip must be a finite number > 0 or None, got {self.update_clip!r}")
        if not (isinstance(self.update_noise_std, (int, float)) and 0 <= self.update_noise_std < math.inf):
            raise InvalidInput(f"update_noise_std must be a finite number >= 0, got {self.update_noise_std!r}")
        if self.update_noise_std > 0 and self.update_clip is None:
            raise InvalidInput("update_noise_std > 0 needs update_clip: noise on an unclipped update protects nothing")
        _check_strength("local drift_correction", self.drift_correction)

    def planned_steps(self, num_examples: int) -> int:
        """The steps a car holding ``num_examples`` examples plans for a lease: H, capped by ``max_passes``."""
        if self.max_passes is None:
            return self.steps
        return max(1, min(self.steps, math.ceil(self.max_passes * num_examples / self.batch_size)))


@dataclass(frozen=True, kw_only=True)
class RoundConfig:
    """Round mechanics: how many cars to ask, how long to wait, what counts as enough."""

    clients_per_round: int = 10
    """Usable reports wanted; a synchronous round closes as soon as this many arrived."""
    over_selection: float = 1.3
    """Cars asked per round = ceil(clients_per_round * over_selection); >= 1 (Google's fleet uses ~1.3)."""
    min_reports: int = 1
    """Fewer usable reports at the deadline abandons the round (global untouched) and retries it."""
    deadline_s: float = 600.0
    """Seconds (on the fleet's clock) a round waits for reports; > 0."""
    max_retries: int = 3
    """Abandoned attempts retried before the round loop gives up with a Conflict; >= 0."""
    partial_work: str = "weighted"
    """A preempted car's partial delta: 'weighted' by steps done / planned, or 'drop'ped."""
    secagg_max_dropout: float = 0.3
    """Under secure aggregation: the share of the cohort that may drop mid-round with the sum still recovered, in
    [0, 0.5); more dropouts abandon the round."""
    secagg_phase_s: float = 30.0
    """Under secure aggregation: seconds each phase after training (share keys, masked input, unmasking) waits for
    the cohort; a car missing at a phase's end counts as dropped. > 0."""

    def __post_init__(self) -> None:
        if not isinstance(self.clients_per_round, int) or self.clients_per_round < 1:
            raise InvalidInput(f"clients_per_round must be an integer >= 1, got {self.clients_per_round!r}")
        if not (self.over_selection >= 1 and math.isfinite(self.over_selection)):
            raise InvalidInput(f"over_selection must be a finite factor >= 1, got {self.over_selection!r}")
        if not isinstance(self.min_reports, int) or not 1 <= self.min_reports <= self.clients_per_round:
            raise InvalidInput(
                f"min_reports must be an integer in [1, clients_per_round={self.clients_per_round}], "
                f"got {self.min_reports!r}"
            )
        if not self.deadline_s > 0:
            raise InvalidInput(f"deadline_s must be > 0 seconds, got {self.deadline_s!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise InvalidInput(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if self.partial_work not in PARTIAL_WORK_POLICIES:
            raise InvalidInput(f"partial_work must be one of {PARTIAL_WORK_POLICIES}, got {self.partial_work!r}")
        if not (isinstance(self.secagg_max_dropout, (int, float)) and 0 <= self.secagg_max_dropout < 0.5):
            raise InvalidInput(f"secagg_max_dropout must be a fraction in [0, 0.5), got {self.secagg_max_dropout!r}")
        if not (isinstance(self.secagg_phase_s, (int, float)) and 0 < self.secagg_phase_s < math.inf):
            raise InvalidInput(f"secagg_phase_s must be a finite number of seconds > 0, got {self.secagg_phase_s!r}")

    @property
    def cohort_size(self) -> int:
        return math.ceil(self.clients_per_round * self.over_selection - 1e-9)


@dataclass(frozen=True, kw_only=True)
class RobustConfig:
    """How a round's updates are combined so that one hostile or broken car cannot derail the job. Every strategy
    applies it in its shared aggregation step; non-finite values and example counts beyond what the car's data can
    hold are refused before it (see ``Strategy.accept``)."""

    aggregator: str = "mean"
    """'mean' (weighted by examples and work done), or 'trimmed_mean' / 'median' (coordinate-wise; each usable
    report counts once, so claiming many examples buys no extra vote), or 'krum' ((Multi-)Krum: the mean of the
    ``multi_krum`` updates closest to their neighbours, each counted once)."""
    trim_fraction: float = 0.1
    """beta of 'trimmed_mean': the share of reports dropped at each end of every coordinate, in [0, 0.5)."""
    norm_bound: str = "adaptive"
    """Each update's L2 norm is clipped before combining: 'adaptive' to ``norm_multiplier`` x the lower median
    norm of the round's usable reports, 'fixed' to ``max_norm``, or 'off'."""
    norm_multiplier: float = 2.0
    """The adaptive bound's multiple of the median norm; >= 1 (below it most honest updates would be clipped)."""
    max_norm: float | None = None
    """The fixed bound, > 0; set it with ``norm_bound='fixed'`` and only then."""
    byzantine: int = 1
    """f of 'krum': the hostile updates a round must survive; a round needs n >= 2f + 3 usable reports."""
    multi_krum: int = 1
    """m of 'krum': how many selected updates are averaged (1 is Krum, more is Multi-Krum); <= n - f."""
    reputation: bool = False
    """Weigh each car by its agreement with the others (see :mod:`reputation`): a car whose bounded updates keep
    pointing against the rest of the round (an EMA of leave-one-out cosines below ``-reputation_margin``) gets
    weight 0. Off by default; 'mean' only (the other aggregators ignore weights), and not with differential privacy
    or secure aggregation."""
    reputation_margin: float = 0.1
    """How far below 0 a car's agreement EMA may go before its weight reaches 0 (full weight at >= 0, linear in
    between), in (0, 1]: non-IID cars agree with the rest only weakly, so the cut sits below orthogonal."""

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise InvalidInput(f"aggregator must be one of {AGGREGATORS}, got {self.aggregator!r}")
        if not (isinstance(self.trim_fraction, (int, float)) and 0 <= self.trim_fraction < 0.5):
            raise InvalidInput(f"trim_fraction must be a share in [0, 0.5), got {self.trim_fraction!r}")
        if self.norm_bound not in NORM_BOUNDS:
            raise InvalidInput(f"norm_bound must be one of {NORM_BOUNDS}, got {self.norm_bound!r}")
        if not isinstance(self.byzantine, int) or self.byzantine < 0:
            raise InvalidInput(f"byzantine f must be an integer >= 0, got {self.byzantine!r}")
        if not isinstance(self.multi_krum, int) or self.multi_krum < 1:
            raise InvalidInput(f"multi_krum m must be an integer >= 1, got {self.multi_krum!r}")
        if not (isinstance(self.norm_multiplier, (int, float)) and 1 <= self.norm_multiplier < math.inf):
            raise InvalidInput(f"norm_multiplier must be a finite number >= 1, got {self.norm_multiplier!r}")
        if not isinstance(self.reputation, bool):
            raise InvalidInput(f"reputation must be true or false, got {self.reputation!r}")
        if not (isinstance(self.reputation_margin, (int, float)) and 0 < self.reputation_margin <= 1):
            raise InvalidInput(f"reputation_margin must be a number in (0, 1], got {self.reputation_margin!r}")
        if self.reputation and self.aggregator != "mean":
            raise InvalidInput(f"reputation weighs cars, so it needs aggregator 'mean'; {self.aggregator!r} ignores "
                               "weights (each report counts once); set aggregator='mean' or reputation=False")
        if self.norm_bound == "fixed":
            if not (isinstance(self.max_norm, (int, float)) and 0 < self.max_norm < math.inf):
                raise InvalidInput(f"norm_bound='fixed' needs max_norm, a finite number > 0; got {self.max_norm!r}")
        elif self.max_norm is not None:
            raise InvalidInput(f"max_norm={self.max_norm!r} is used only with norm_bound='fixed', not with "
                               f"norm_bound={self.norm_bound!r}; set norm_bound='fixed' or drop max_norm")


@dataclass(frozen=True, kw_only=True)
class StrategyConfig:
    """Settings every strategy shares."""

    local: LocalTrainingConfig = field(default_factory=LocalTrainingConfig)
    rounds: RoundConfig = field(default_factory=RoundConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    """Norm bounding (on by default) and the aggregation rule; see :class:`RobustConfig`."""
    downlink: CompressionConfig = field(default_factory=CompressionConfig)
    """How each new global version travels to cars that hold the previous one, as a delta (top-k not allowed:
    a sparse downlink would need the coordinator's residual to ever reach the cars)."""
    snapshot_bits: int | None = 8
    """Also offer the current version as a compact snapshot, its params quantized to this many bits (8: int8 with one
    scale per 256 values, ~1/4 of float32's bytes): a car that is many versions behind (or holds nothing)
    installs it when it weighs less than the delta chain, and then holds an approximate copy, which later delta
    chains keep up to date (the deltas are exact, so its error does not grow). None offers the exact float32
    snapshot only. On MNIST-1D (DiLoCo int4, churn; bench/training_matrix.py, diloco_int4 against
    diloco_int4_fp32snap) it cut bytes down 2.4x at 64 cars for -0.30 points at alpha 0.3 and +0.27 at alpha 0.1
    (3 seeds), and ~19% at 16 cars for -0.43 points (5 seeds; single seeds moved -1.8 to +0.55)."""
    seed: int = 0
    """Seeds cohort selection and each car's batch order."""
    lr_decay_versions: int | None = None
    """Cosine-decay the cars' lr from ``local.lr`` to a tenth of it over this many global versions (DiLoCo
    decays its inner lr the same way); None keeps it constant."""
    server_warmup_versions: int = 0
    """Ramp the server (outer) learning rate up linearly over this many versions; >= 0, 0 is none."""
    server_lr_floor: float | None = None
    """Cosine-decay the server (outer) learning rate, after the warm-up, to this share of it at the last version
    of the run (the ``num_versions`` given to ``Strategy.run``); in [0, 1], or None to keep it constant."""
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    """Differential privacy (DP-FedAvg, user-level); off by default. See :mod:`privacy`."""
    secure_aggregation: bool = False
    """Cars' updates are masked so that the coordinator sees only their sum: each car clips its own update and
    only the combinations :func:`combinations.check_combination` allows are accepted."""
    asynchronous: ClassVar[bool] = False
    """The strategy folds single updates as they arrive (FedBuff): no cohort for DP or secure aggregation."""

    def __post_init__(self) -> None:
        if not isinstance(self.server_warmup_versions, int) or self.server_warmup_versions < 0:
            raise InvalidInput(f"server_warmup_versions must be an integer >= 0, got {self.server_warmup_versions!r}")
        if self.server_lr_floor is not None and not (
            isinstance(self.server_lr_floor, (int, float)) and 0 <= self.server_lr_floor <= 1
        ):
            raise InvalidInput(f"server_lr_floor must be a share in [0, 1] or None, got {self.server_lr_floor!r}")
        if self.lr_decay_versions is not None and (
            not isinstance(self.lr_decay_versions, int) or self.lr_decay_versions < 1
        ):
            raise InvalidInput(f"lr_decay_versions must be an integer >= 1 or None, got {self.lr_decay_versions!r}")
        if self.downlink.topk_fraction is not None:
            raise InvalidInput(
                "downlink compression accepts bits in {2, 4, 8, None} only; got topk_fraction="
                f"{self.downlink.topk_fraction} (use top-k on the uplink)"
            )
        if self.snapshot_bits not in SNAPSHOT_BITS or isinstance(self.snapshot_bits, bool):
            raise InvalidInput(f"snapshot_bits must be one of {SNAPSHOT_BITS} (None: float32 snapshots only), got "
                               f"{self.snapshot_bits!r}")
        if not isinstance(self.secure_aggregation, bool):
            raise InvalidInput(f"secure_aggregation must be true or false, got {self.secure_aggregation!r}")
        check_combination(self, asynchronous=self.asynchronous)


@dataclass(frozen=True, kw_only=True)
class FedAvgConfig(StrategyConfig):
    local: LocalTrainingConfig = field(
        default_factory=lambda: LocalTrainingConfig(momentum=0.9, logit_adjustment=1.0)
    )
    """SGD lr 0.05 with momentum 0.9: on Dirichlet-split MNIST-1D (alpha 0.1-1.0, 8 and 16 cars, half preempted)
    momentum doubled plain SGD's accuracy at alpha 0.1 (8 cars); a proximal term (-4 points) or inner AdamW
    (-17) did worse there. The logit-adjusted loss (tau 1, see DiLoCoConfig.local) lifted it by 3.8-12.3 points
    at alpha 0.1 over the 15 MNIST-1D cells of bench/training_matrix.py (2.6 on average, -0.6 at worst) and left the
    char LM where it was (10.05 / 9.88 against 10.04 / 9.90)."""
    server_lr: float = 1.0
    """Server step on the averaged delta; 1.0 is McMahan et al.'s FedAvg (the new global = mean local model)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.server_lr > 0:
            raise InvalidInput(f"server_lr must be > 0, got {self.server_lr!r}")


@dataclass(frozen=True, kw_only=True)
class FedAdamConfig(FedAvgConfig):
    local: LocalTrainingConfig = field(
        default_factory=lambda: LocalTrainingConfig(momentum=0.9, prox_mu=0.1, logit_adjustment=1.0)
    )
    """FedAvg's SGD with momentum, plus a proximal term 0.1 (the pair the matrix measured), on the logit-adjusted
    loss (tau 1, see DiLoCoConfig.local): on MNIST-1D (alpha 0.1 / 0.3 / 1.0, 8 / 16 cars, half preempted, three
    seeds) it gained 1.2 points on average (-0.9 to +4.2 per run, +2.2 at alpha 0.1)."""
    server_lr: float = 0.03
    """The server Adam/Yogi step size (Reddi et al. sweep 10^-2.5 .. 10^0); > 0."""
    server_optimizer: str = "adam"
    """'adam' (FedAdam) or 'yogi' (FedYogi: the second moment grows additively, so it forgets a large early
    pseudo-gradient more slowly)."""
    beta1: float = 0.9
    """First-moment decay in [0, 1)."""
    beta2: float = 0.99
    """Second-moment decay in [0, 1)."""
    tau: float = 1e-3
    """The adaptivity: added to sqrt(v) before dividing, > 0; bounds a coordinate's step near lr * m / tau."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise InvalidInput(f"server_optimizer must be one of {SERVER_OPTIMIZERS}, got {self.server_optimizer!r}")
        for name in ("beta1", "beta2"):
            if not (isinstance(getattr(self, name), (int, float)) and 0 <= getattr(self, name) < 1):
                raise InvalidInput(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not (isinstance(self.tau, (int, float)) and 0 < self.tau < math.inf):
            raise InvalidInput(f"tau must be a finite number > 0, got {self.tau!r}")


@dataclass(frozen=True, kw_only=True)
class DiLoCoConfig(StrategyConfig):
    local: LocalTrainingConfig = field(
        default_factory=lambda: LocalTrainingConfig(optimizer="adamw", lr=3e-3, weight_decay=0.1, prox_mu=0.03,
                                                    logit_adjustment=1.0)
    )
    """AdamW lr 3e-3, weight decay 0.1 and a proximal term 0.03, its state reset every round (a car rarely trains
    two rounds running), chosen on a matrix of non-IID fleets (MNIST-1D alpha 0.1-1.0, 8 and 16 cars, half
    preempted; the char LM). Weight decay and the proximal term keep the logits, and so the held-out loss, from
    growing under outer momentum: without the term, cars that see one or two labels (alpha 0.1) drift apart and
    the global reached 38-53% at held-out loss ~3; with it ~65% at loss ~1. A stronger term (0.1) cost the char
    LM a fifth of its perplexity; 0.03 left it where the old defaults had it.
    The logit-adjusted loss (tau 1, aimed at the job's held-out class shares) lifted MNIST-1D by 4.8-7.8 points at
    alpha 0.1 over the 15 cells of bench/training_matrix.py (8 / 16 / 64 cars, with and without churn, three seeds;
    2.3 points on average, -2.1 at worst) and left the char LM where it was (8.73 / 8.69 against 8.76 / 8.64);
    tau 0.5 gained less at alpha 0.1 and lost less elsewhere (1.9 points on average, README)."""
    outer_lr: float = 0.7
    """Outer SGD learning rate on the averaged pseudo-gradient (DiLoCo uses 0.7); > 0."""
    outer_momentum: float = 0.9
    """Outer Nesterov momentum in [0, 1) (DiLoCo uses 0.9)."""
    drift_correction: float = 0.0
    """SCAFFOLD's control variates (Karimireddy et al. 2020, option II) of this strength in [0, 1]; 0 is off. A car
    adds ``strength * (c - c_i)`` to every (clipped) gradient before AdamW sees it: ``c_i`` is its own mean gradient
    in its last lease (kept on the car), ``c`` the fleet's, the weighted mean of the ``c_i`` that the last round's
    cars reported with their deltas (``server_state['control']``, sent down with each new version). Both travel in
    the uplink's / downlink's codec and their bytes are counted. In gradient space, not update space: a correction
    added to the weights after AdamW's steps (``c_i`` = the car's mean step) held skewed cars still while AdamW's
    normalised steps kept their full size, and the global diverged on MNIST-1D (H 50, 8-16 cars).
    Needs the 'mean' aggregator without DP or secure aggregation (``c`` is built from the individual reports). Off
    by default: on MNIST-1D (seed 0, alpha 0.3 / 1.0, 8 / 16 cars, H 50 and 100) strength 1 lost 12-43 points, 0.5
    won on two or three cells of four, and twice the rounds for the same bytes did better (README)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.outer_lr > 0:
            raise InvalidInput(f"outer_lr must be > 0, got {self.outer_lr!r}")
        if not 0 <= self.outer_momentum < 1:
            raise InvalidInput(f"outer_momentum must be in [0, 1), got {self.outer_momentum!r}")
        _check_strength("drift_correction", self.drift_correction)
        if self.drift_correction > 0 and (
            self.robust.aggregator != "mean" or self.privacy.enabled or self.secure_aggregation
        ):
            raise InvalidInput(
                f"drift_correction={self.drift_correction} needs aggregator 'mean' without differential privacy "
                f"or secure aggregation (got aggregator {self.robust.aggregator!r}, privacy "
                f"{'on' if self.privacy.enabled else 'off'}, secure_aggregation {self.secure_aggregation}): the "
                "fleet's control variate is a weighted mean of the individual reports; set drift_correction=0"
            )


@dataclass(frozen=True, kw_only=True)
class FedBuffConfig(FedAvgConfig):
    asynchronous: ClassVar[bool] = True
    server_lr: float = 0.5
    """Server step on each buffer's weighted mean delta; > 0. Half of FedAvg's 1.0: half the updates of a buffer
    were computed from an older global, and applied whole they overshoot it. On MNIST-1D (alpha 0.1 / 0.3 / 1.0,
    8 / 16 cars, half preempted, three seeds) 1.0 reached 51-70% with held-out loss 1.0-3.6 and a spread of up to
    35 points between seeds; 0.5 reached 55-88% at loss 0.34-1.1 (13.8 points more on average); 0.7 gained 0.7
    more on average but one run collapsed (48.6%, loss 1.8, alpha 1.0 / 8 cars); 0.25 was too slow for the
    budget."""
    buffer_size: int = 4
    """K: the global is updated every K usable updates, whenever they arrive; >= 1."""
    concurrency: int = 8
    """Cars kept training at once; each finished car is replaced immediately; >= buffer_size."""
    max_staleness: int = 8
    """Updates computed from a global more than this many versions old are refused (Conflict); >= 0."""
    staleness_exponent: float = 0.5
    """Weight multiplier (1 + staleness) ** -exponent; 0.5 is FedBuff's 1/sqrt(1 + s); >= 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.buffer_size, int) or self.buffer_size < 1:
            raise InvalidInput(f"buffer_size K must be an integer >= 1, got {self.buffer_size!r}")
        if not isinstance(self.concurrency, int) or self.concurrency < self.buffer_size:
            raise InvalidInput(
                f"concurrency must be an integer >= buffer_size={self.buffer_size}, got {self.concurrency!r}"
            )
        if not isinstance(self.max_staleness, int) or self.max_staleness < 0:
            raise InvalidInput(f"max_staleness must be an integer >= 0, got {self.max_staleness!r}")
        if not self.staleness_exponent >= 0:
            raise InvalidInput(f"staleness_exponent must be >= 0, got {self.staleness_exponent!r}")


def _check_shares(name: str, shares: Any) -> None:
    """``shares`` must be a list of >= 2 finite numbers > 0 that sum to 1 (to within 1e-3)."""
    if not (
        isinstance(shares, (list, tuple))
        and len(shares) >= 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in shares)
        and abs(math.fsum(shares) - 1) <= 1e-3
    ):
        raise InvalidInput(f"{name} must be a list of >= 2 class shares, each a finite number > 0, summing to 1; "
                           f"got {str(shares)[:200]}")


def _check_strength(name: str, value: object) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise InvalidInput(f"{name} must be a strength in [0, 1] (0 is off, 1 is SCAFFOLD's), got {value!r}")


def local_config_at(config: StrategyConfig, version: int) -> LocalTrainingConfig:
    """The cars' settings for work starting from global ``version`` (the inner lr schedule applied)."""
    if config.lr_decay_versions is None:
        return config.local
    frac = min(version / config.lr_decay_versions, 1.0)
    scale = 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac))
    return dataclasses.replace(config.local, lr=config.local.lr * scale)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from ``to_dict`` output, validating every level; unknown keys and
    wrong types raise InvalidInput naming the field. A nested dict may be partial: what it leaves out keeps the
    default of the class that holds it (``{"local": {"steps": 200}}`` keeps DiLoCo's inner AdamW)."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{cls.__name__} settings must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InvalidInput(f"unknown {cls.__name__} setting(s) {unknown}; accepted: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = config_from_dict(hint, _merged(_field_default(cls, key), value))
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InvalidInput(f"bad {cls.__name__} settings {data}: {exc}") from exc


def _field_default(cls: type, name: str) -> dict[str, Any]:
    """The JSON of field ``name``'s default on ``cls`` ({} if it has none)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return to_dict(f.default_factory())
    return to_dict(f.default) if dataclasses.is_dataclass(f.default) else {}


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s keys laid over it, nested dicts merged key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
