"""Content-addressed artifact store (sha256) on a local directory: models, input shards, checkpoints, results.

An upload is written to a temporary file while it is hashed and counted, and becomes visible under its digest only
if the bytes hash to the digest it was sent under: a corrupted or truncated upload never lands.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ..errors import HashMismatch, InvalidInput, NotFound, PayloadTooLarge, RangeNotSatisfiable
from ..protocol import is_digest

__all__ = ["ArtifactStore", "parse_range", "sha256_hex"]

CHUNK = 1 << 20


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range ``(first, last)`` asked for by a single-range ``Range`` header, or None for all.

    Supports ``bytes=N-``, ``bytes=N-M`` and ``bytes=-SUFFIX``. A range starting at or past the end raises
    RangeNotSatisfiable; a header in another unit or with several ranges is ignored (the whole body is sent),
    as RFC 9110 allows.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, sep, last_s = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first_s == "":
            suffix = int(last_s)
            if suffix <= 0:
                raise RangeNotSatisfiable(f"range {header!r} asks for no bytes; artifact has {size} bytes")
            return max(0, size - suffix), size - 1
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
    except ValueError:
        return None
    if first < 0 or first >= size or last < first:
        raise RangeNotSatisfiable(
            f"range {header!r} is outside the artifact's {size} bytes; ask for bytes=N- with 0 <= N < {size}"
        )
    return first, min(last, size - 1)


class ArtifactStore:
    """Files under ``root/ab/abcdef...``; writes are atomic renames, so a crash never leaves a half artifact."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)

    def path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise InvalidInput(f"{digest!r} is not an artifact digest; expected 64 lowercase hex digits (sha256)")
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"artifact {digest} does not exist; upload it with PUT /v1/artifacts/{digest}") from exc

    def _commit(self, tmp_path: Path, digest: str) -> None:
        dest = self.path(digest)
        dest.parent.mkdir(exist_ok=True)
        os.replace(tmp_path, dest)

    def put_bytes(self, data: bytes, expected: str | None = None, *, sync: bool = True) -> str:
        """Store bytes under their digest. ``sync=False`` defers the flush to one :meth:`sync` for many files."""
        digest = sha256_hex(data)
        if expected is not None and digest != expected:
            raise HashMismatch(f"upload hashes to {digest}, not to {expected}; the bytes were corrupted or changed")
        if not self.exists(digest):
            fd, name = tempfile.mkstemp(dir=self._tmp)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if sync:
                    fh.flush()
                    os.fsync(fh.fileno())
            self._commit(Path(name), digest)
        return digest

    @staticmethod
    def sync() -> None:
        """Flush every file written with ``sync=False`` to disk."""
        os.sync()

    def read_head(self, digest: str, nbytes: int) -> bytes:
        try:
            with open(self.path(digest), "rb") as fh:
                return fh.read(nbytes)
        except FileNotFoundError as exc:
            raise NotFound(f"artifact {digest} does not exist") from exc

    async def put_stream(self, expected: str, chunks: AsyncIterator[bytes], max_bytes: int) -> int:
        """Store a streamed upload if it hashes to ``expected`` and stays within ``max_bytes``; returns its size."""
        self.path(expected)  # validates the digest before reading a byte
        hasher = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"upload exceeds the {max_bytes}-byte artifact limit")
                    hasher.update(chunk)
                    fh.write(chunk)
                fh.flush()
                # fsync takes ~1 ms and releases the GIL: off the event loop, other requests proceed meanwhile.
                await asyncio.to_thread(os.fsync, fh.fileno())
            digest = hasher.hexdigest()
            if digest != expected:
                raise HashMismatch(
                    f"upload of {size} bytes hashes to {digest}, not to {expected}; resend the exact bytes "
                    "under their sha256"
                )
            self._commit(Path(name), digest)
            return size
        finally:
            if os.path.exists(name):
                os.unlink(name)

    def read_bytes(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"artifact {digest} does not exist") from exc

    def iter_range(self, digest: str, first: int, last: int) -> Iterator[bytes]:
        with open(self.path(digest), "rb") as fh:
            fh.seek(first)
            remaining = last - first + 1
            while remaining > 0:
                chunk = fh.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk
