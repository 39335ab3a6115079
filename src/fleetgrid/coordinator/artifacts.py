"""Content-addressed artifact store (sha256) on a local directory: models, input shards, checkpoints, results.

An upload is written to a temporary file while it is hashed and counted, and becomes visible under its digest only
if the bytes hash to the digest it was sent under: a corrupted or truncated upload never lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import HashMismatch, InsufficientStorage, InvalidInput, NotFound, PayloadTooLarge, RangeNotSatisfiable
from ..protocol import is_digest

__all__ = ["ArtifactStore", "parse_range", "sha256_hex"]

CHUNK = 1 << 20
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@contextlib.contextmanager
def _disk_errors(what: str) -> Iterator[None]:
    """A full disk or quota becomes InsufficientStorage (507); every other OSError stays what it is."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise InsufficientStorage(f"{what} failed: the coordinator has no space left ({exc.strerror}); nothing "
                                      "was stored, try again later") from exc
        raise


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _close_durably(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()


def _drop(fh: BinaryIO | None, tmp: Path) -> None:
    """Close and remove a temp file (a no-op for one already committed: its name is gone)."""
    if fh is not None:
        with contextlib.suppress(OSError):  # a full disk fails the close's flush: the file goes anyway
            fh.close()
    tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename (or a new entry) in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


_SIZES_KEPT = 4096


class ArtifactStore:
    """Files under ``root/ab/abcdef...``; writes are atomic renames of fsynced files (and the directory entry is
    fsynced too), so a crash never leaves a half artifact. A full disk is :class:`InsufficientStorage` (507)."""

    def __init__(self, root: str | Path, small: Callable[[str], bytes | None] | None = None) -> None:
        self.root = Path(root)
        self.small = small
        """Where small results are found that have no file (the store's result blobs), by digest."""
        self._sizes: dict[str, int] = {}  # every lease grant names its input's size
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
        size = self._sizes.get(digest)  # content-addressed: a digest's size never changes
        if size is not None:
            return size
        try:
            size = self.path(digest).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"artifact {digest} does not exist; upload it with PUT /v1/artifacts/{digest}") from exc
        if len(self._sizes) >= _SIZES_KEPT:
            self._sizes.clear()
        self._sizes[digest] = size
        return size

    def open(self, digest: str) -> BinaryIO:
        """The artifact's file, open for reading; NotFound if there is none."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"artifact {digest} does not exist") from exc

    @staticmethod
    def _write(fh: BinaryIO, data: bytes) -> None:
        """Every byte the store writes goes through here."""
        fh.write(data)

    def _temp(self) -> tuple[BinaryIO, Path]:
        fd, name = tempfile.mkstemp(dir=self._tmp)
        return os.fdopen(fd, "wb"), Path(name)

    def _commit(self, tmp_path: Path, digest: str) -> Path:
        """Rename a flushed temp file into place; returns the directory whose entry must still be fsynced."""
        dest = self.path(digest)
        if not dest.parent.is_dir():
            dest.parent.mkdir(exist_ok=True)
            _fsync_dir(self.root)
        os.replace(tmp_path, dest)
        return dest.parent

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        """Store bytes under their digest, durably, unless they are stored already; returns the digest."""
        digest = sha256_hex(data)
        if expected is not None and digest != expected:
            raise HashMismatch(f"upload hashes to {digest}, not to {expected}; the bytes were corrupted or changed")
        if not self.exists(digest):
            self.put_many([data])
        return digest

    def put_many(self, blobs: Iterable[bytes]) -> list[tuple[str, int, bool]]:
        """Store many blobs durably with one pass of flushes: each new one goes to a temp file, every temp file is
        fsynced, then renamed into place, then each directory touched is fsynced once. Returns ``(digest, size,
        created)`` per blob, in order; ``created`` is False for content that was stored already. If anything
        fails, nothing this call created remains."""
        out: list[tuple[str, int, bool]] = []
        pending: dict[str, Path] = {}
        placed: list[str] = []
        try:
            with _disk_errors("storing artifacts"):
                for data in blobs:
                    digest = sha256_hex(data)
                    new = digest not in pending and not self.exists(digest)
                    if new:
                        fh, tmp = self._temp()
                        pending[digest] = tmp
                        with fh:
                            self._write(fh, data)
                    out.append((digest, len(data), new))
                for tmp in pending.values():
                    _fsync_file(tmp)
                dirs = set()
                for digest, tmp in pending.items():
                    dirs.add(self._commit(tmp, digest))
                    placed.append(digest)
                for directory in dirs:
                    _fsync_dir(directory)
        except BaseException:
            for tmp in pending.values():
                tmp.unlink(missing_ok=True)
            self.discard(placed)
            raise
        return out

    def discard(self, digests: Iterable[str]) -> None:
        """Remove these artifacts' files (those that exist); the caller knows nothing refers to them."""
        for digest in digests:
            self._sizes.pop(digest, None)
            self.path(digest).unlink(missing_ok=True)

    def read_head(self, digest: str, nbytes: int) -> bytes:
        try:
            with open(self.path(digest), "rb") as fh:
                return fh.read(nbytes)
        except FileNotFoundError as exc:
            raise NotFound(f"artifact {digest} does not exist") from exc

    async def put_stream(self, expected: str, chunks: AsyncIterator[bytes], max_bytes: int) -> int:
        """Store a streamed upload if it hashes to ``expected`` and stays within ``max_bytes``; returns its size.
        The chunks are received on the event loop; hashing, writing and fsyncing happen in a thread, a block of
        about ``CHUNK`` bytes at a time."""
        self.path(expected)  # validates the digest before reading a byte
        hasher = hashlib.sha256()
        size = 0
        fh: BinaryIO | None = None
        tmp: Path | None = None

        def append(out: BinaryIO, block: bytes) -> None:
            hasher.update(block)
            self._write(out, block)

        try:
            with _disk_errors(f"storing artifact {expected}"):
                out, path = await asyncio.to_thread(self._temp)
                fh, tmp = out, path  # for the cleanup below
                block: list[bytes] = []
                buffered = 0
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"upload exceeds the {max_bytes}-byte artifact limit")
                    block.append(chunk)
                    buffered += len(chunk)
                    if buffered >= CHUNK:
                        await asyncio.to_thread(append, out, b"".join(block))
                        block, buffered = [], 0
                await asyncio.to_thread(append, out, b"".join(block))
                await asyncio.to_thread(_close_durably, out)
                digest = hasher.hexdigest()
                if digest != expected:
                    raise HashMismatch(
                        f"upload of {size} bytes hashes to {digest}, not to {expected}; resend the exact bytes "
                        "under their sha256"
                    )
                await asyncio.to_thread(lambda: _fsync_dir(self._commit(path, digest)))
            return size
        finally:
            if tmp is not None:
                await asyncio.to_thread(_drop, fh, tmp)

    def read_bytes(self, digest: str) -> bytes:
        """The artifact's bytes: its file, or else a small result the database holds (see ``small``)."""
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError as exc:
            blob = self.small(digest) if self.small is not None else None
            if blob is None:
                raise NotFound(f"artifact {digest} does not exist") from exc
            return blob

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
