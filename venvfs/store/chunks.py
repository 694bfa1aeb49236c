"""Checking store objects as they are read: per-chunk digests of large objects, and the reader's
record of what it has checked.

An object is named by the sha256 of all its bytes, so a reader can check a name only after reading
every byte. A mount reads a 400 MB extension module a few pages at a time, and mostly not all of it;
hashing it whole on the first read would stall the daemon (every other request waits) for the time
it takes to read and hash it. So for every object larger than one chunk the store keeps the sha256
of each ``CHUNK`` bytes, in order, 32 bytes each, in ``STORE/chunks/ab/<digest>``, written before
the object is published; the mount checks each chunk the first time it reads from it. An object of
one chunk or less is its own chunk: its name is the digest to check.

What this catches is damage done to an object before a process first reads that part of it (a disk
error, a hand edit, a truncation). It does not make objects tamper-proof: whoever can rewrite an
object can rewrite its chunk list, and bytes already checked are not checked again in this process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from venvfs.fsutil import atomic_write_bytes

CHUNK = 256 * 1024  # the kernel asks for at most 128 KiB a read: a chunk costs one or two extra reads
_DIGEST = 32


class CorruptObject(Exception):
    """An object's bytes do not match its name or its chunk list."""


def chunks_path(store_root: Path, digest: str) -> Path:
    return store_root / "chunks" / digest[:2] / digest


def _pread_full(fd: int, size: int, off: int) -> bytes:
    data = os.pread(fd, size, off)
    while len(data) < size:
        more = os.pread(fd, size - len(data), off + len(data))
        if not more:
            break
        data += more
    return data


def chunk_digests(fd: int, size: int) -> bytes:
    """The chunk list of the ``size`` bytes readable from ``fd``."""
    out = bytearray()
    for off in range(0, size, CHUNK):
        out += hashlib.sha256(_pread_full(fd, min(CHUNK, size - off), off)).digest()
    return bytes(out)


def needs_chunks(size: int) -> bool:
    return size > CHUNK


@dataclass(frozen=True)
class FileDigests:
    """What the store needs of a file's bytes, from one read of them (``digest_fd``)."""

    sha256: str
    size: int
    chunk_list: bytes | None  # for a file of more than one chunk (``needs_chunks``)
    other: str | None = None  # the hex digest by the algorithm asked for, when that is not sha256


def digest_fd(fd: int, size_hint: int, algo: str = "sha256") -> FileDigests:
    """Hash what ``fd`` reads from its offset to its end: sha256, the chunk list, and ``algo``'s digest
    if that is another (a RECORD may name any hashlib algorithm; ValueError for one hashlib lacks).

    ``size_hint`` is the file's length from a stat: a read that returns less than it asked for once
    that many bytes are in is the end of a regular file, so a small file costs one read, not two.
    """
    whole = hashlib.sha256()
    other = None if algo == "sha256" else hashlib.new(algo)
    pieces = bytearray() if needs_chunks(size_hint) else None
    size = 0
    while True:
        want = CHUNK if pieces is not None else max(size_hint - size + 1, 1 << 16)
        data = os.read(fd, want)
        while pieces is not None and 0 < len(data) < want:
            # Chunks are CHUNK bytes each: a short read in the middle is completed first.
            more = os.read(fd, want - len(data))
            if not more:
                break
            data += more
        if not data:
            break
        whole.update(data)
        if other is not None:
            other.update(data)
        if pieces is not None:
            pieces += hashlib.sha256(data).digest()
        size += len(data)
        if len(data) < want and size >= size_hint:
            break
    if pieces is not None and not needs_chunks(size):
        pieces = None  # shrank since the stat: its own chunk (one that grew gets its list when published)
    return FileDigests(whole.hexdigest(), size, bytes(pieces) if pieces is not None else None,
                       other.hexdigest() if other is not None else None)


class ObjectChecker:
    """What one process has checked of the store's objects, and the reads that check the rest."""

    def __init__(self, store_root: Path) -> None:
        self._root = store_root
        self._done: set[str] = set()
        # digest -> (its chunk list, one flag per chunk: checked)
        self._partial: dict[str, tuple[bytes, bytearray]] = {}

    def checked(self, digest: str) -> bool:
        return digest in self._done

    def forget(self, digest: str) -> None:
        """Check ``digest`` again from its next read: the store replaced it (a repair)."""
        self._done.discard(digest)
        self._partial.pop(digest, None)

    def read(self, fd: int, digest: str, size: int, off: int, length: int) -> bytes:
        """``length`` bytes at ``off`` of the object ``digest`` (``size`` bytes) open on ``fd``, every
        chunk they touch checked first. Raises ``CorruptObject``."""
        if digest not in self._done:
            if not needs_chunks(size):
                data = _pread_full(fd, size, 0)
                self._check(data, digest, size)
                return data[off:off + length]
            partial = self._partial.get(digest) or self._load_chunks(digest, size)
            if partial is None:
                # Stored before chunk lists existed, or its list is damaged: check it whole, once.
                # As slow as reading it all; `venvfs store verify` finds a list that is missing.
                self.check_whole(fd, digest, size)
            elif off < size and length > 0:
                return self._read_chunks(fd, digest, size, off, length, *partial)
        return os.pread(fd, length, off)

    def _read_chunks(self, fd: int, digest: str, size: int, off: int, length: int, chunks: bytes,
                     flags: bytearray) -> bytes:
        first, last = off // CHUNK, (min(off + length, size) - 1) // CHUNK
        start = first * CHUNK
        data = _pread_full(fd, min((last + 1) * CHUNK, size) - start, start)
        for i in range(first, last + 1):
            if flags[i]:
                continue
            piece = data[(i - first) * CHUNK:(i - first + 1) * CHUNK]
            if (len(piece) != min(CHUNK, size - i * CHUNK)
                    or hashlib.sha256(piece).digest() != chunks[i * _DIGEST:(i + 1) * _DIGEST]):
                raise CorruptObject(f"bytes {i * CHUNK}..{i * CHUNK + len(piece)} do not match the object's "
                                    "chunk list")
            flags[i] = 1
        if all(flags):
            del self._partial[digest]
            self._done.add(digest)
        return data[off - start:off - start + length]

    def check_whole(self, fd: int, digest: str, size: int) -> None:
        """Check all of the object (before its bytes are copied somewhere). Raises ``CorruptObject``."""
        if digest in self._done:
            return
        h = hashlib.sha256()
        off = 0
        while off < size:
            piece = _pread_full(fd, min(1 << 20, size - off), off)
            if not piece:
                break
            h.update(piece)
            off += len(piece)
        if off != size or os.pread(fd, 1, size) or h.hexdigest() != digest:
            raise CorruptObject("does not match its digest")
        self._partial.pop(digest, None)
        self._done.add(digest)

    def _check(self, data: bytes, digest: str, size: int) -> None:
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise CorruptObject("does not match its digest")
        self._done.add(digest)

    def _load_chunks(self, digest: str, size: int) -> tuple[bytes, bytearray] | None:
        n = -(-size // CHUNK)
        try:
            chunks = chunks_path(self._root, digest).read_bytes()
        except OSError:
            return None
        if len(chunks) != n * _DIGEST:
            return None
        entry = (chunks, bytearray(n))
        self._partial[digest] = entry
        return entry


def write_chunks(store_root: Path, digest: str, fd: int, size: int, tmp_dir: Path) -> None:
    """Publish the chunk list of the object ``digest`` (its bytes readable from ``fd``), unless there."""
    path = chunks_path(store_root, digest)
    if path.exists():
        return
    # Not fsynced here: the store's syncfs before a record is published covers it (same filesystem).
    atomic_write_bytes(path, chunk_digests(fd, size), tmp_dir=tmp_dir, mode=0o444, durable=False)
