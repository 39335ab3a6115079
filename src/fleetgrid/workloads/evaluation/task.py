"""The worker side of an evaluation unit: load the weights, build the car's shard, score it, write four numbers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetgrid import errors
from fleetgrid.workloads.base import WorkerCache, WorkerTask

__all__ = ["EvalTask", "evaluate_shard"]


@dataclass(frozen=True, slots=True)
class EvalTask(WorkerTask):
    model_name: str
    weights_path: Path
    weights_digest: str
    data: dict[str, Any]
    shard: int
    max_examples: int
    result_path: Path

    def describe(self, done: int) -> str:
        return f"evaluating {self.model_name} on shard {self.shard}"

    def execute(self, cache: WorkerCache, progress: Callable[[int], None]) -> None:
        from fleetgrid.workloads.federated.task import local_dataset

        model = cache.get(("eval-model", self.model_name, self.weights_digest), self._load_model)
        dataset = local_dataset(cache, self.data, self.shard)
        report = evaluate_shard(model, dataset, self.max_examples)
        progress(int(report["examples"]))
        tmp = self.result_path.with_name(self.result_path.name + ".tmp")
        tmp.write_text(json.dumps(report, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.result_path)

    def _load_model(self) -> Any:
        from safetensors.torch import load_file

        from fleetgrid.workloads.training import build_model

        model = build_model(self.model_name)
        try:
            model.load_state_dict(load_file(str(self.weights_path)))
        except Exception as exc:  # safetensors and torch raise several types on a file of another model
            raise errors.InvalidInput(f"weights {self.weights_digest[:12]}... do not fit model "
                                      f"{self.model_name!r}: {exc}") from exc
        return model


def evaluate_shard(model: Any, dataset: Any, max_examples: int) -> dict[str, float | int]:
    """Loss and accuracy of ``model`` on at most ``max_examples`` of a local dataset, as an ``EvalReport``'s
    fields. Classification shards score their first examples; text shards their evaluation windows."""
    import torch

    from fleetgrid.workloads.training import evaluate_model

    if hasattr(dataset, "eval_windows"):
        x, y = dataset.eval_windows(max_examples)  # (N, T) windows and their next tokens
    else:
        x, y = dataset.x[:max_examples], dataset.y[:max_examples]
    with torch.no_grad():
        metrics = evaluate_model(model, x, y)
    return {"examples": len(x), "targets": int(y.numel()), "loss": float(metrics["loss"]),
            "accuracy": float(metrics["accuracy"])}
