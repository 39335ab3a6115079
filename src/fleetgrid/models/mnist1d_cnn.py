"""A small 1-D CNN classifier for MNIST-1D, with trained weights shipped in the package.

The architecture follows the CNN baseline of the MNIST-1D paper (Greydanus, 2020): three strided convolutions and
a linear head. `python -m fleetgrid.models.train_mnist1d_cnn` produces `weights/mnist1d_cnn.safetensors`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from fleetgrid.errors import InputShapeError, InvalidInput
from fleetgrid.models.catalog import MNIST1D_CNN as SPEC

__all__ = [
    "MNIST1DCNN",
    "SPEC",
    "WEIGHTS_PATH",
    "CNNConfig",
    "load_pretrained",
    "load_runner",
    "read_metadata",
    "save_weights",
]

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "mnist1d_cnn.safetensors"


@dataclass(frozen=True, kw_only=True)
class CNNConfig:
    channels: int = 32
    """Feature maps in every convolution."""
    num_classes: int = 10
    input_length: int = 40
    """Samples per MNIST-1D signal (the dataset's ``final_seq_length``)."""
    kernel_size: int = 5
    """Kernel of the first convolution; the two later ones use 3."""

    def __post_init__(self) -> None:
        for field in ("channels", "num_classes", "input_length", "kernel_size"):
            if getattr(self, field) < 1:
                raise InvalidInput(f"CNNConfig.{field} is {getattr(self, field)}; expected a positive integer")
        if self.feature_length < 1:
            raise InvalidInput(
                f"CNNConfig.input_length {self.input_length} is too short for kernel_size {self.kernel_size}; "
                f"expected input_length >= {self.kernel_size - 2}"
            )

    @property
    def feature_length(self) -> int:
        """Length left after the three stride-2 convolutions (5 for the default 40)."""
        length = self.input_length
        for kernel in (self.kernel_size, 3, 3):
            length = (length + 2 * 1 - kernel) // 2 + 1
        return length


class MNIST1DCNN(nn.Module):
    def __init__(self, config: CNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CNNConfig()
        c = config.channels
        self.conv1 = nn.Conv1d(1, c, config.kernel_size, stride=2, padding=1)
        self.conv2 = nn.Conv1d(c, c, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(c, c, 3, stride=2, padding=1)
        self.head = nn.Linear(c * config.feature_length, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, L) float32 signals -> (B, num_classes) logits
        h = x.unsqueeze(1)  # (B, 1, L)
        h = F.relu(self.conv1(h))  # (B, C, 19) for L = 40
        h = F.relu(self.conv2(h))  # (B, C, 10)
        h = F.relu(self.conv3(h))  # (B, C, 5)
        return self.head(h.flatten(1))  # (B, C*5) -> (B, num_classes)


def save_weights(model: MNIST1DCNN, path: str | Path, **metadata: str) -> None:
    """Write the weights and the config (as JSON metadata) so `load_pretrained` can rebuild the model alone."""
    meta = {"config": json.dumps(asdict(model.config)), **metadata}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def read_metadata(path: str | Path = WEIGHTS_PATH) -> dict[str, str]:
    """The string metadata stored next to the weights (config, training seed, test accuracy)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_pretrained(path: str | Path = WEIGHTS_PATH) -> MNIST1DCNN:
    """The shipped trained classifier (or one saved by `save_weights`), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(
            f"MNIST-1D CNN weights not found at {path}; expected the file shipped with fleetgrid "
            "(regenerate it with `python -m fleetgrid.models.train_mnist1d_cnn`)"
        )
    config = CNNConfig(**json.loads(read_metadata(path)["config"]))
    model = MNIST1DCNN(config)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


class _CNNRunner:
    def __init__(self, model: MNIST1DCNN) -> None:
        self.spec = SPEC
        self.model = model

    def __call__(self, batch: np.ndarray | list[str]) -> np.ndarray:
        if not isinstance(batch, np.ndarray) or batch.ndim != 2 or batch.shape[1:] != SPEC.item_shape:
            got = f"shape {batch.shape}" if isinstance(batch, np.ndarray) else type(batch).__name__
            raise InputShapeError(f"model {SPEC.name!r} got a batch of {got}; expected a float32 array (B, 40)")
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode():
            return self.model(x).numpy()  # (B, 10)


def load_runner(model_file: Path | None) -> _CNNRunner:
    """The spec's loader (see :mod:`fleetgrid.models.catalog`): the shipped weights, ready to run batches."""
    return _CNNRunner(load_pretrained())
