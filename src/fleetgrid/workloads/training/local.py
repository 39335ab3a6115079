"""What runs on the car: a few local optimizer steps from the global weights, stoppable after any step.

The car's data never leaves this function; what does is :class:`LocalResult.update`, the compressed
pseudo-gradient ``global - local`` with the counts the coordinator weighs it by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fleetgrid.errors import InvalidInput
from fleetgrid.workloads.training.aggregate import clip_to_norm
from fleetgrid.workloads.training.compression import CompressionConfig, ErrorFeedback, encode
from fleetgrid.workloads.training.config import LocalTrainingConfig
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.messages import ClientUpdate, TrainInstructions
from fleetgrid.workloads.training.privacy import gaussian_noise

__all__ = [
    "ArrayDataset",
    "LocalDataset",
    "LocalResult",
    "adjusted_loss",
    "control_codec",
    "cross_entropy_loss",
    "evaluate_model",
    "heldout_prior",
    "make_evaluator",
    "private_delta",
    "target_counts",
    "train_locally",
]


class LocalDataset(Protocol):
    """A car's private examples; all local training needs is its size and random mini-batches."""

    def __len__(self) -> int: ...

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def target_counts(self, num_classes: int) -> torch.Tensor:
        """How often each of ``num_classes`` targets occurs among the car's examples, (num_classes,)."""
        ...


class ArrayDataset:
    """Inputs and integer targets held in memory; batches are drawn with replacement."""

    def __init__(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> None:
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.y = torch.as_tensor(y, dtype=torch.long)
        if len(self.x) != len(self.y) or len(self.x) == 0:
            raise InvalidInput(
                f"a local dataset needs >= 1 example and as many targets as inputs, "
                f"got {len(self.x)} inputs and {len(self.y)} targets"
            )

    def __len__(self) -> int:
        return len(self.x)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.x), (batch_size,), generator=generator)
        return self.x[idx], self.y[idx]

    def target_counts(self, num_classes: int) -> torch.Tensor:
        return target_counts(self.y, num_classes)


def target_counts(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Occurrences of each class among integer ``targets``, (num_classes,); a target outside [0, num_classes)
    is refused, since a model with that many outputs could not be trained on it."""
    flat = targets.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_classes):
        raise InvalidInput(f"targets must lie in [0, {num_classes}) for a model with {num_classes} outputs, got "
                           f"[{int(flat.min())}, {int(flat.max())}]")
    return torch.bincount(flat, minlength=num_classes).to(torch.float32)


def heldout_prior(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, ...]:
    """The class shares of held-out targets ``y`` over ``model``'s outputs (half a count added to each, so none is
    0): what a job's cars aim their logit adjustment at (``Strategy.target_prior``)."""
    training = model.training
    model.eval()  # no dropout draw: the global RNG stays where it was
    with torch.no_grad():
        classes = int(model(x[:1]).shape[-1])
    model.train(training)
    counts = target_counts(y, classes) + 0.5
    return tuple((counts / counts.sum()).tolist())


def adjusted_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dataset: LocalDataset,
    tau: float,
    target: tuple[float, ...] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss_fn`` on logits shifted by ``tau * (log(prior) - log(target))``, the prior being the dataset's own
    target shares and ``target`` the shares aimed at (None: every class alike); see
    ``LocalTrainingConfig.logit_adjustment``. Half a count is added to every class so that one the car never sees
    gets a large negative shift, not an infinite one. Made on the first batch, when the classes are known."""
    shift: torch.Tensor | None = None

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nonlocal shift
        if shift is None:
            classes = logits.shape[-1]
            if target is not None and len(target) != classes:
                raise InvalidInput(f"logit_target has {len(target)} class shares; the model has {classes} outputs")
            counts = dataset.target_counts(classes) + 0.5  # (C,)
            shift = torch.log(counts / counts.sum())
            if target is not None:
                shift = shift - torch.log(torch.tensor(target, dtype=torch.float32))
            shift = tau * shift
        return loss_fn(logits + shift, targets)

    return loss


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classifiers ``(B, C)`` vs ``(B,)`` and language models ``(B, T, V)`` vs ``(B, T)``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@dataclass(frozen=True)
class LocalResult:
    """What a car hands back when its lease ends, finished or preempted."""

    update: ClientUpdate | None
    """None when no step was done: there is nothing to send."""
    steps_done: int
    examples_seen: int
    preempted: bool
    train_loss: float
    bytes_up: int
    control: torch.Tensor | None = None
    """With drift correction on (``instructions.local.drift_correction``): the car's new ``c_i``, its mean clipped
    gradient over the lease (before any correction), flat (P,); it keeps it for its next lease and reports it."""


def _make_optimizer(model: nn.Module, config: LocalTrainingConfig) -> torch.optim.Optimizer:
    # A fresh optimizer every lease: its state is reset on purpose. With over-selection and churn a car rarely
    # trains two versions running, so moments kept from its last lease describe an older global: kept on the car
    # between leases they cost DiLoCo 1.2 points on MNIST-1D (2.8 keeping the second moment only; 6 churn cells,
    # two seeds, bench/results/training_variants_not_kept.txt).
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def train_locally(
    model: nn.Module,
    global_params: torch.Tensor,
    dataset: LocalDataset,
    instructions: TrainInstructions,
    *,
    client_id: str,
    should_stop: Callable[[int], bool] | None = None,
    error_feedback: ErrorFeedback | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy_loss,
    on_step: Callable[[int, int, float], None] | None = None,
    correction: torch.Tensor | None = None,
) -> LocalResult:
    """Train ``model`` from ``global_params`` for up to ``instructions.local.planned_steps(len(dataset))`` steps
    (H, or fewer on a small shard) on ``dataset``.

    ``should_stop(steps_done)`` is asked before every step; returning True ends training there (preemption) and
    the partial delta is still reported. ``error_feedback``, if given, is the car's uplink residual and is
    updated in place. ``model`` is overwritten with the local weights. ``on_step(steps, examples, loss_sum)``
    follows every step, with ``model`` holding the weights so far: the car's worker checkpoints from it, so a
    SIGKILL loses at most the steps since the last checkpoint. ``correction``, flat (P,), is added to every
    step's (clipped) gradient before the optimizer sees it: SCAFFOLD's ``strength * (c - c_i)`` (see
    ``DiLoCoConfig.drift_correction``, which also makes the car report its mean gradient).
    """
    config = instructions.local
    layout = FlatLayout.of(model)
    layout.load(model, global_params)
    generator = torch.Generator().manual_seed(instructions.seed)
    optimizer = _make_optimizer(model, config)
    anchors = [p.detach().clone() for p in model.parameters()] if config.prox_mu > 0 else []
    if correction is not None and correction.shape != (layout.numel,):
        raise InvalidInput(f"correction must be flat of shape ({layout.numel},), got {tuple(correction.shape)}")
    slices = _param_slices(model, layout)
    grad_sum = torch.zeros(layout.numel) if config.drift_correction > 0 else None  # (P,), for c_i
    if config.logit_adjustment > 0:
        loss_fn = adjusted_loss(loss_fn, dataset, config.logit_adjustment, config.logit_target)
    model.train()
    steps = examples = 0
    loss_sum = 0.0
    preempted = False
    planned = config.planned_steps(len(dataset))
    while steps < planned:
        if should_stop is not None and should_stop(steps):
            preempted = True
            break
        x, y = dataset.sample_batch(generator, config.batch_size)
        loss = loss_fn(model(x), y)
        objective = loss
        if anchors:  # FedProx: mu/2 ||w - w_global||^2 keeps a car near the global on skewed data
            drift = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors, strict=True))
            objective = loss + 0.5 * config.prox_mu * drift
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        with torch.no_grad():
            for p, start, end in slices:
                if p.grad is None:
                    continue
                if grad_sum is not None:
                    grad_sum[start:end] += p.grad.reshape(-1)
                if correction is not None:
                    p.grad.add_(correction[start:end].view_as(p))
        optimizer.step()
        steps += 1
        examples += len(x)
        loss_sum += loss.item()
        if on_step is not None:
            on_step(steps, examples, loss_sum)
    if steps == 0:
        return LocalResult(None, 0, 0, preempted, float("nan"), 0)
    delta = private_delta(global_params - layout.flatten(model), config).numpy()  # (P,) pseudo-gradient
    if error_feedback is None:
        error_feedback = ErrorFeedback(delta.size)
    payload, _ = error_feedback.compress(delta, config.compression)
    control = None if grad_sum is None else grad_sum / steps  # option II's c_i: the lease's mean gradient
    control_blob = None
    if control is not None:  # dense, in the uplink's bits (no error feedback: each lease's mean stands alone)
        control_blob = encode(control, control_codec(config))
    update = ClientUpdate(
        client_id=client_id,
        round=instructions.round,
        base_version=instructions.base_version,
        payload=payload,
        num_examples=len(dataset),
        steps_done=steps,
        steps_planned=planned,
        examples_seen=examples,
        train_loss=loss_sum / steps,
        control=control_blob,
    )
    return LocalResult(update, steps, examples, preempted, loss_sum / steps, update.nbytes, control)


def control_codec(config: LocalTrainingConfig) -> CompressionConfig:
    """How a car's mean gradient (drift correction's ``c_i``) goes up: dense, in the uplink's bits and chunks."""
    return CompressionConfig(bits=config.compression.bits, chunk_size=config.compression.chunk_size)


def _param_slices(model: nn.Module, layout: FlatLayout) -> list[tuple[nn.Parameter, int, int]]:
    """(parameter, start, end) of each trainable entry of ``layout`` in the flat vector (buffers have no grad)."""
    params = dict(model.named_parameters())
    out, offset = [], 0
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        n = int(torch.Size(shape).numel())
        if name in params:
            out.append((params[name], offset, offset + n))
        offset += n
    return out


def private_delta(delta: torch.Tensor, config: LocalTrainingConfig) -> torch.Tensor:
    """The car's side of clipping and distributed DP: ``delta`` clipped to ``config.update_clip`` (if set), plus
    ``N(0, update_noise_std^2)`` per coordinate from a secret seed (noise the coordinator could regenerate would
    protect nothing)."""
    if config.update_clip is not None:
        delta, _ = clip_to_norm(delta, config.update_clip)
    if config.update_noise_std > 0:
        delta = (delta.to(torch.float64) + gaussian_noise(delta.shape, config.update_noise_std)).to(torch.float32)
    return delta


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 512,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy_loss,
) -> dict[str, float]:
    """Held-out ``accuracy`` (argmax over the last axis) and mean ``loss`` of ``model`` on ``(x, y)``."""
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        target = y[i : i + batch_size]
        loss_sum += float(loss_fn(logits, target)) * target.numel()
        correct += int((logits.argmax(-1) == target).sum())
        total += target.numel()
    return {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1)}


def make_evaluator(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], dict[str, float]]:
    """An ``evaluate_fn`` for :meth:`Strategy.run`: loads a flat global into ``model`` and scores it on (x, y)."""
    layout = FlatLayout.of(model)

    def evaluate(params: torch.Tensor) -> dict[str, float]:
        layout.load(model, params)
        return evaluate_model(model, x, y)

    return evaluate
