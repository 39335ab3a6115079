"""The worker side of serving: one forward pass over a batch of texts, the model kept loaded in the worker between
batches (the :class:`WorkerCache`), so only the first batch after a restart pays for loading it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleetgrid import errors
from fleetgrid.workloads.base import WorkerCache, WorkerTask, save_atomic

__all__ = ["Continuation", "EmbedTask", "GenerateTask"]


@dataclass(frozen=True, slots=True)
class EmbedTask(WorkerTask):
    model_name: str
    texts: tuple[str, ...]
    result_path: Path

    def describe(self, done: int) -> str:
        return f"{self.model_name} on {len(self.texts)} texts"

    def execute(self, cache: WorkerCache, progress: Callable[[int], None]) -> None:
        from fleetgrid.models.registry import load_runner

        factory = cache.runner_factory or load_runner
        runner = cache.get(("runner", self.model_name, None),
                           lambda: factory(self.model_name, model_file=None, threads=cache.threads))
        out = np.asarray(runner(list(self.texts)), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(self.texts):
            raise errors.InputShapeError(f"{self.model_name} returned shape {out.shape} for {len(self.texts)} texts")
        save_atomic(self.result_path, out)
        progress(len(self.texts))


@dataclass(frozen=True, slots=True)
class Continuation:
    """One sequence to extend: its text so far (prompt, then answer), how many characters to add, and how."""

    text: str
    steps: int
    temperature: float
    top_p: float
    seed: int


@dataclass(frozen=True, slots=True)
class GenerateTask(WorkerTask):
    """Extend each sequence by its ``steps`` characters with the character LM (reading the last ``block_size``
    characters, as nanoGPT samples); writes the new characters of each, as a JSON list, to ``result_path``."""

    model_name: str
    weights_path: Path
    weights_digest: str
    sequences: tuple[Continuation, ...]
    result_path: Path

    def describe(self, done: int) -> str:
        return f"{self.model_name} extending {len(self.sequences)} sequence(s)"

    def execute(self, cache: WorkerCache, progress: Callable[[int], None]) -> None:
        import json

        import torch

        from fleetgrid.data.text import VOCAB

        model = cache.get(("generator", self.model_name, self.weights_digest), self._load)
        block = model.config.block_size
        out = []
        with torch.no_grad():
            for seq in self.sequences:
                ids = torch.as_tensor(VOCAB.encode(seq.text[-block:] or "\n"), dtype=torch.long)[None, :]  # (1, T)
                generator = torch.Generator().manual_seed(seq.seed)
                new: list[int] = []
                for _ in range(seq.steps):
                    logits = model(ids[:, -block:])[0, -1, :].clone()  # (vocab,)
                    logits[0] = float("-inf")  # never the 'unknown character' id
                    nxt = _sample(logits, seq.temperature, seq.top_p, generator)
                    new.append(nxt)
                    ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
                out.append(VOCAB.decode(new))
        self.result_path.write_text(json.dumps(out))
        progress(sum(s.steps for s in self.sequences))

    def _load(self) -> Any:
        from fleetgrid.workloads.training.tasks import load_weights

        return load_weights(self.model_name, self.weights_path.read_bytes()).eval()


def _sample(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    """One id from ``logits`` (vocab,): greedy at temperature 0, else nucleus sampling (top_p) at ``temperature``."""
    import torch

    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=0) - ordered < top_p  # the smallest head whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
