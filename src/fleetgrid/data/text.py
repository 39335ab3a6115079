"""A real text corpus for the char-level LM: the Python standard library's own ``.py`` sources, split by file.

Every machine with Python has these files, so a car builds its shard locally from ``(seed, vehicle_index,
num_vehicles)``. The corpus differs between Python versions; compare :func:`corpus_digest` across cars before
mixing them in one job. The vocabulary is fixed (printable ASCII, newline, tab, one unknown), not learned, so it
never depends on which files a car happens to hold.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fleetgrid.errors import InvalidInput

__all__ = [
    "VOCAB",
    "CharVocab",
    "SourceFile",
    "TokenWindows",
    "corpus_digest",
    "split_by_file",
    "stdlib_sources",
]


class CharVocab:
    """Index 0 is ``unknown`` (any non-ASCII char), then newline, tab and the 95 printable ASCII chars."""

    def __init__(self) -> None:
        self.chars = ["\0", "\n", "\t", *map(chr, range(32, 127))]
        self._lut = np.zeros(128, dtype=np.int64)
        for i, ch in enumerate(self.chars[1:], start=1):
            self._lut[ord(ch)] = i

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        return np.where(codes < 128, self._lut[np.minimum(codes, 127)], 0)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return "".join(self.chars[int(i)] if 0 < int(i) < len(self.chars) else "\ufffd" for i in ids)


VOCAB = CharVocab()


@dataclass(frozen=True)
class SourceFile:
    name: str
    text: str


def stdlib_sources(*, max_files: int | None = None, root: str | Path | None = None) -> list[SourceFile]:
    """Top-level ``.py`` modules of the standard library (no packages, no machine-generated sysconfig data),
    sorted by name; ``max_files`` keeps the first few for quick runs."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise InvalidInput(f"standard library directory {root} not found; expected the directory holding os.py")
    paths = sorted(p for p in root.glob("*.py") if not p.name.startswith("_sysconfigdata"))
    if max_files is not None:
        if max_files < 1:
            raise InvalidInput(f"max_files must be >= 1 or None (all), got {max_files}")
        paths = paths[:max_files]
    if not paths:
        raise InvalidInput(f"no .py files under {root}; expected the Python standard library")
    return [SourceFile(p.name, p.read_text(encoding="utf-8", errors="replace")) for p in paths]


def corpus_digest(files: list[SourceFile]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.text.encode("utf-8", "replace") + b"\0")
    return h.hexdigest()


def split_by_file(
    files: list[SourceFile], num_vehicles: int, *, seed: int, holdout_fraction: float = 0.1
) -> tuple[list[list[SourceFile]], list[SourceFile]]:
    """Held-out files (chosen by a hash of the name, so the same on every car whatever the fleet size), then
    the rest dealt to cars in a seeded order, each file to the car holding the fewest characters so far."""
    if not isinstance(num_vehicles, int) or num_vehicles < 1:
        raise InvalidInput(f"num_vehicles must be an integer >= 1, got {num_vehicles!r}")
    if not 0 <= holdout_fraction < 1:
        raise InvalidInput(f"holdout_fraction must be in [0, 1), got {holdout_fraction!r}")

    def held_out(name: str) -> bool:
        return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") / 2**32 < holdout_fraction

    heldout = [f for f in files if held_out(f.name)]
    train = [f for f in files if not held_out(f.name)]
    if len(train) < num_vehicles:
        raise InvalidInput(
            f"{len(train)} training files cannot give each of {num_vehicles} vehicles one; "
            "lower num_vehicles or allow more files"
        )
    order = np.random.default_rng([seed, num_vehicles, 0x7E]).permutation(len(train))
    shards: list[list[SourceFile]] = [[] for _ in range(num_vehicles)]
    sizes = np.zeros(num_vehicles, dtype=np.int64)
    for i in order:
        v = int(np.argmin(sizes))  # ties go to the lowest index: deterministic
        shards[v].append(train[i])
        sizes[v] += len(train[i].text)
    return shards, heldout


class TokenWindows:
    """A token stream seen as ``len - block_size`` overlapping (input, next-char target) windows."""

    def __init__(self, tokens: np.ndarray | torch.Tensor, block_size: int) -> None:
        self.tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
        if block_size < 1 or self.tokens.numel() <= block_size:
            raise InvalidInput(
                f"a text shard of {self.tokens.numel()} tokens needs more than block_size="
                f"{block_size} tokens; give the car more files or shorten block_size"
            )
        self.block_size = block_size

    @classmethod
    def from_files(cls, files: list[SourceFile], block_size: int) -> TokenWindows:
        return cls(VOCAB.encode("\n".join(f.text for f in files)), block_size)

    def __len__(self) -> int:
        return self.tokens.numel() - self.block_size

    def windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = starts[:, None] + torch.arange(self.block_size)  # (B, T)
        return self.tokens[offsets], self.tokens[offsets + 1]

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows(torch.randint(len(self), (batch_size,), generator=generator))

    def target_counts(self, num_classes: int) -> torch.Tensor:
        """Occurrences of each token as a next-char target (every token but the first), (num_classes,)."""
        counts = torch.bincount(self.tokens[1:], minlength=num_classes)
        if counts.numel() != num_classes:
            raise InvalidInput(f"a model with {num_classes} outputs cannot predict this shard's {counts.numel()} "
                               f"token ids; build it with the vocabulary's size ({len(VOCAB)})")
        return counts.to(torch.float32)

    def eval_windows(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` evenly spaced windows: a fixed held-out set."""
        starts = torch.linspace(0, len(self) - 1, steps=min(count, len(self))).long()
        return self.windows(starts)
