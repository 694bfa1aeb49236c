"""The venv's own bytecode, kept valid across adopt.

pip (and uv with ``--compile-bytecode``) leave a timestamp ``.pyc`` beside every module. Adopt makes
each module a store file, which shows the store's mtime (``SOURCE_EPOCH``): every one of those
``.pyc`` files would then be stale, and the first import would compile the whole venv again. Where
a ``.pyc`` was valid for its module before adopt (Python's own test: the header's mtime and size
equal the source's), only its mtime field is rewritten afterwards, so it stays valid for the same
bytes. The file stays the venv's own: nothing from it enters the store, whose bytecode is compiled
from the store's objects by the venv's interpreter (``venvfs.store.bytecode``), so a ``.pyc`` that
does not match its source can never reach another venv.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from venvfs.store.bytecode import compilable, pyc_relpath
from venvfs.store.store import SOURCE_EPOCH

_HEADER = struct.Struct("<4sIII")  # magic, flags, mtime, source size (PEP 552, timestamp form)


@dataclass(frozen=True)
class Stamp:
    source: str  # paths as strings: a venv has thousands of modules, and a Path costs more than a stat
    pyc: str
    mtime: int
    size: int


def _header(path: str) -> tuple[bytes, int, int, int] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, _HEADER.size)
    finally:
        os.close(fd)
    if len(data) < _HEADER.size:
        return None
    magic, flags, mtime, size = _HEADER.unpack(data)
    return magic, flags, mtime, size


class OpenPyc:
    """A ``.pyc`` valid for its source as it is now, open to be restamped once the source is a store
    file (``open_valid_pyc``): one open for the check and the write, by the thread that stores it."""

    def __init__(self, fd: int, stamp: Stamp) -> None:
        self.fd = fd
        self.stamp = stamp

    def restamp(self) -> bool:
        """The source now shows ``SOURCE_EPOCH`` (the caller gave it to the store): say so. Closes."""
        try:
            os.pwrite(self.fd, struct.pack("<I", SOURCE_EPOCH), 8)
            return True
        except OSError:
            return False
        finally:
            self.close()

    def release(self) -> Stamp:
        """Close it, for ``restamp`` to find again by name once the source is a store file."""
        self.close()
        return self.stamp

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_valid_pyc(source: str, pyc: str, st: os.stat_result, magic: bytes) -> OpenPyc | None:
    """``pyc`` opened for writing if Python would use it now for the source ``st`` describes (as
    ``valid_stamps`` decides) and it is the venv's own file (no other name)."""
    try:
        fd = os.open(pyc, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        pst = os.fstat(fd)
        head = os.pread(fd, _HEADER.size, 0)
        if stat.S_ISREG(pst.st_mode) and pst.st_nlink == 1 and len(head) == _HEADER.size:
            h_magic, flags, mtime, size = _HEADER.unpack(head)
            if (h_magic == magic and flags == 0 and mtime == int(st.st_mtime) & 0xFFFFFFFF
                    and size == st.st_size & 0xFFFFFFFF):
                return OpenPyc(fd, Stamp(source, pyc, mtime, size))
    except OSError:
        pass
    os.close(fd)
    return None


def valid_stamps(site_packages: Path, py_relpaths: list[str], cache_tag: str, magic: bytes) -> list[Stamp]:
    """The ``.pyc`` files Python would use now: timestamp form, this interpreter's magic, header equal
    to the source's mtime and size. Taken before adopt changes the sources' mtimes."""
    found = []
    for rel in py_relpaths:
        if not compilable(rel):
            continue
        source = f"{site_packages}/{rel}"
        pyc = f"{site_packages}/{pyc_relpath(rel, cache_tag)}"
        head = _header(pyc)
        if head is None or head[0] != magic or head[1] != 0:
            continue  # absent, another Python's, or hash-based (valid whatever the mtime)
        with contextlib.suppress(OSError):
            st = os.lstat(source)
            if stat.S_ISREG(st.st_mode) and head[2] == int(st.st_mtime) & 0xFFFFFFFF \
                    and head[3] == st.st_size & 0xFFFFFFFF:
                found.append(Stamp(source, pyc, head[2], head[3]))
    return found


def restamp(stamps: list[Stamp]) -> int:
    """Rewrite the mtime field of each ``.pyc`` whose source now shows ``SOURCE_EPOCH`` (a store
    file, same size); returns how many. Only the venv's own files: a ``.pyc`` with other names (a
    store hardlink materialize placed, a tool's cache) is left as it is."""
    done = 0
    epoch = struct.pack("<I", SOURCE_EPOCH)
    for s in stamps:
        with contextlib.suppress(OSError):
            st = os.lstat(s.source)
            if int(st.st_mtime) != SOURCE_EPOCH or st.st_size & 0xFFFFFFFF != s.size:
                continue
            fd = os.open(s.pyc, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                pst = os.fstat(fd)
                head = os.pread(fd, _HEADER.size, 0)
                if (stat.S_ISREG(pst.st_mode) and pst.st_nlink == 1 and len(head) == _HEADER.size
                        and _HEADER.unpack(head)[1:] == (0, s.mtime, s.size)):
                    os.pwrite(fd, epoch, 8)
                    done += 1
            finally:
                os.close(fd)
    return done
