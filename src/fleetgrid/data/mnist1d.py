"""MNIST-1D (Greydanus, 2020) generated locally from the `mnist1d` package; never downloaded."""

from __future__ import annotations

import os
import random
import tempfile
import threading

import numpy as np

from fleetgrid.errors import InvalidInput

__all__ = ["make_mnist1d"]


def _import_mnist1d():
    # `mnist1d` imports matplotlib.pyplot at import time; keep its cache out of $HOME and off any GUI backend.
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "fleetgrid-matplotlib"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise InvalidInput(
            "MNIST-1D needs the mnist1d package, which is not installed; install it with "
            "`pip install 'fleetgrid[data]'`"
        ) from exc
    return get_dataset_args, make_dataset


_GLOBAL_GENERATORS = threading.Lock()
"""Held while MNIST-1D is generated: its generator seeds and draws from numpy's and random's global state."""


def make_mnist1d(seed: int = 0, num_samples: int = 5000) -> dict[str, np.ndarray]:
    """Generate MNIST-1D with the paper's default transforms: 80% train, 20% test, signals of length 40.

    Returns ``{"x": (N, 40) float32, "y": (N,) int64, "x_test": (M, 40) float32, "y_test": (M,) int64}``.
    ``seed=42, num_samples=5000`` reproduces the published dataset. The same seed always gives the same arrays,
    and the caller's global ``random`` / ``numpy.random`` state is left as it was.
    """
    if num_samples < 10:
        raise InvalidInput(f"MNIST-1D num_samples {num_samples}; expected at least 10 (one per class)")
    get_dataset_args, make_dataset = _import_mnist1d()
    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    # make_dataset seeds the global generators and draws from them: one thread at a time (a coordinator validates
    # reports and scores versions on several), and restore them so generating data never perturbs a caller's run.
    with _GLOBAL_GENERATORS:
        saved_np, saved_py = np.random.get_state(), random.getstate()
        try:
            data = make_dataset(args)
        finally:
            np.random.set_state(saved_np)
            random.setstate(saved_py)
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int64),
    }
