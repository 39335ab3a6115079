"""Train the shipped MNIST-1D CNN: `python -m fleetgrid.models.train_mnist1d_cnn [--out PATH]`.

Data are generated locally (seed 42, 5,000 samples: the published MNIST-1D split), training is seeded, and the
weights file records the seeds and the test accuracy it reached, so the shipped file can be regenerated.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fleetgrid.data.mnist1d import make_mnist1d
from fleetgrid.models.mnist1d_cnn import MNIST1DCNN, WEIGHTS_PATH, CNNConfig, save_weights


@dataclass(kw_only=True)
class TrainConfig:
    data_seed: int = 42
    """42 with 5,000 samples reproduces the published MNIST-1D dataset."""
    num_samples: int = 5000
    seed: int = 0
    """Seeds weight initialisation and batch order."""
    steps: int = 6000
    batch_size: int = 100
    lr: float = 1e-2
    """Peak Adam learning rate, decayed to zero on a cosine."""
    weight_decay: float = 1e-3


def accuracy(model: MNIST1DCNN, x: np.ndarray, y: np.ndarray) -> float:
    with torch.inference_mode():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()  # (N,)
    return float((pred == y).mean())


def train(config: TrainConfig, model_config: CNNConfig | None = None) -> tuple[MNIST1DCNN, float]:
    """Train from scratch; returns the model (eval mode) and its accuracy on the held-out test split."""
    data = make_mnist1d(seed=config.data_seed, num_samples=config.num_samples)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = MNIST1DCNN(model_config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    for step in range(config.steps):
        idx = torch.from_numpy(rng.integers(0, len(y), config.batch_size))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 1000 == 0 or step == config.steps - 1:
            model.eval()
            test_acc = accuracy(model, data["x_test"], data["y_test"])
            model.train()
            print(f"step {step:5d}  loss {loss.item():.4f}  test acc {test_acc:.4f}", flush=True)
    model.eval()
    return model, accuracy(model, data["x_test"], data["y_test"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="where to write the .safetensors file")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--num-samples", type=int, default=TrainConfig.num_samples, help="MNIST-1D samples to generate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 keeps the run reproducible")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = TrainConfig(steps=args.steps, num_samples=args.num_samples)
    started = time.perf_counter()
    model, test_acc = train(config)
    save_weights(
        model,
        args.out,
        test_accuracy=f"{test_acc:.4f}",
        data_seed=str(config.data_seed),
        num_samples=str(config.num_samples),
        seed=str(config.seed),
        steps=str(config.steps),
        weight_decay=str(config.weight_decay),
    )
    print(f"test accuracy {test_acc:.4f}; {time.perf_counter() - started:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
