"""The view of a selection on disk: a compact index the daemon reads a directory at a time.

A mount must answer within milliseconds whatever the size of the venv, and its daemon's memory must
not grow with it. Parsing a whole tree at start (the marshal cache before this) cost ~37 ms and about
6 MB of objects for a 20,000-file venv, and a view reload left the old tree's objects with the
allocator. The index is instead read where it is needed: opening it reads a 64-byte header, and a
directory's entries become ``LowerFile``/``LowerDir`` objects only when the overlay first visits it,
as the kernel looks names up, with two ``pread`` calls (its entries, its names). Parts nobody visits
are never read, and the bytes stay the page cache's, shared by every daemon of the selection.

Read, not mapped (``mmap``, until issue 16): mapped pages count in the process's own memory (its
USS, ``Private_Clean``) while no other process maps the same file, which for a selection only one venv
uses is always, and a walk of the tree maps all of it: 0.8 MB for the scientific set, 2.9 MB for a
20,000-file venv, for bytes that are already decoded into the tree.

Layout (little-endian), all offsets from the start of the file:

- header (``_HEADER``): magic, format, the view key (raw sha256), counts, and where each section is;
- directories: ``(first entry, entry count)`` per directory, the root first;
- entries (``_ENTRY``, 48 bytes): name offset and length in the string section, kind, flags
  (executable), a value (a file's size, a directory's index, a symlink's target length: the target's
  bytes follow its name) and the digest as 32 raw bytes;
- strings: names and symlink targets, UTF-8 (``surrogateescape``, as ``os.fsencode`` makes them);
- the digests of ``.py`` files that had no bytecode when it was built (32 bytes each), and the
  RECORD map (dist-info name -> dist key) as marshal, both read once at load.

The file is written whole to a temporary name and renamed (``atomic_write_bytes``), so a reader opens
either the previous index or the complete new one, and never sees a write in progress.
"""

from __future__ import annotations

import io
import marshal
import os
import struct
from pathlib import Path
from typing import Any

MAGIC = b"VENVFSIX"
FORMAT = 1
# magic, format, key, dirs, entries, dirs offset, entries offset, strings offset, missing count,
# missing offset, records offset, records length
_HEADER = struct.Struct("<8sI32sIIIIIIIII")
_DIR = struct.Struct("<II")
_ENTRY = struct.Struct("<IHBBq32s")
_DIGEST = 32
DIR_KIND = 255  # an entry that is a directory (file kinds are view.OBJECT, PYC, SYMLINK)
_EXECUTABLE = 1
_ENC = "surrogateescape"


class BadIndex(ValueError):
    """An index that cannot be read (truncated, another format): the caller builds the view again."""


def encode(tree: dict[str, Any], *, key: str, missing: list[str], records: dict[str, str]) -> bytes:
    """The index of ``tree``: nested dicts (directories) of ``(kind, digest, size, executable,
    target)`` tuples (files), as ``LowerDir.to_raw`` gives it. Raises ValueError for a digest that
    is not a sha256 (the caller then keeps no index)."""
    dirs: list[tuple[int, int]] = []
    entries: list[bytes] = []
    strings = bytearray()
    # Breadth first: a directory's entries are contiguous, and each child directory gets its index
    # when its parent's entries are written, before its own.
    queue: list[dict[str, Any]] = [tree]
    dirs.append((0, 0))
    head = 0
    while head < len(queue):
        d = queue[head]
        first = len(entries)
        for name, v in d.items():
            name_b = name.encode("utf-8", _ENC)
            off = len(strings)
            strings += name_b
            if type(v) is dict:
                entries.append(_ENTRY.pack(off, len(name_b), DIR_KIND, 0, len(queue), b""))
                queue.append(v)
                dirs.append((0, 0))
                continue
            kind, digest, size, executable, target = v
            if target is not None:
                target_b = target.encode("utf-8", _ENC)
                strings += target_b
                size = len(target_b)
            raw = bytes.fromhex(digest) if digest is not None else b""
            if digest is not None and len(raw) != _DIGEST:
                raise ValueError(f"not a sha256 digest: {digest!r}")
            entries.append(_ENTRY.pack(off, len(name_b), kind, _EXECUTABLE if executable else 0, size, raw))
        dirs[head] = (first, len(entries) - first)
        head += 1
    missing_b = b"".join(bytes.fromhex(m) for m in missing)
    records_b = marshal.dumps(records)
    dirs_off = _HEADER.size
    entries_off = dirs_off + _DIR.size * len(dirs)
    strings_off = entries_off + _ENTRY.size * len(entries)
    missing_off = strings_off + len(strings)
    records_off = missing_off + len(missing_b)
    header = _HEADER.pack(MAGIC, FORMAT, bytes.fromhex(key), len(dirs), len(entries), dirs_off, entries_off,
                          strings_off, len(missing), missing_off, records_off, len(records_b))
    return b"".join([header, *(_DIR.pack(*d) for d in dirs), *entries, bytes(strings), missing_b, records_b])


class ViewIndex:
    """An open index: the entries of one directory at a time (``entries``), and what ``encode``
    stored beside the tree."""

    __slots__ = ("_dirs", "_entries_off", "_file", "_strings_off", "missing", "records")

    def __init__(self, path: Path, key: str) -> None:
        """Open ``path``; OSError if it cannot be read, ``BadIndex`` if it is not the index of ``key``."""
        # The open file keeps its bytes: a gc or rebuild that replaces it by rename changes none of
        # ours. (A FileIO closes its descriptor with the last directory that still needs it.)
        self._file = io.FileIO(os.open(path, os.O_RDONLY | os.O_CLOEXEC), "rb", closefd=True)
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        # Read ahead, in the background: directories are read in the order the kernel visits them, not
        # the file's, in small reads that the kernel's readahead does not recognise as one stream, and
        # from a cold page cache a walk of the scientific set then took 20 to 45 ms longer than mapped.
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
        header = os.pread(fd, _HEADER.size, 0)
        if len(header) < _HEADER.size:
            raise BadIndex(f"{path}: too short")
        (magic, fmt, raw_key, n_dirs, n_entries, dirs_off, self._entries_off, self._strings_off, n_missing,
         missing_off, records_off, records_len) = _HEADER.unpack(header)
        if magic != MAGIC or fmt != FORMAT or raw_key.hex() != key:
            raise BadIndex(f"{path}: not the index of this selection")
        if (records_off + records_len > size or dirs_off + _DIR.size * n_dirs > self._entries_off
                or self._entries_off + _ENTRY.size * n_entries > self._strings_off
                or missing_off + _DIGEST * n_missing > records_off):
            raise BadIndex(f"{path}: truncated")
        # (first entry, count) of every directory: 8 bytes each, a few kilobytes for a large venv.
        self._dirs = os.pread(fd, _DIR.size * n_dirs, dirs_off)
        missing = os.pread(fd, _DIGEST * n_missing, missing_off)
        self.missing = [missing[o:o + _DIGEST].hex() for o in range(0, len(missing), _DIGEST)]
        try:
            records = marshal.loads(os.pread(fd, records_len, records_off))
        except (ValueError, EOFError, TypeError) as e:
            raise BadIndex(f"{path}: {e}") from None
        if not isinstance(records, dict):
            raise BadIndex(f"{path}: no RECORD map")
        self.records: dict[str, str] = records

    def entries(self, index: int) -> list[tuple[str, int, int, int, bytes, str | None]]:
        """Directory ``index``'s entries: (name, kind, flags, value, digest, symlink target)."""
        fd = self._file.fileno()
        first, count = _DIR.unpack_from(self._dirs, _DIR.size * index)
        raw = os.pread(fd, _ENTRY.size * count, self._entries_off + _ENTRY.size * first)
        if len(raw) != _ENTRY.size * count:
            raise BadIndex("view index truncated")
        rows = list(_ENTRY.iter_unpack(raw))
        if not rows:
            return []
        # A directory's names (and symlink targets) were written together, one after another.
        lo = min(r[0] for r in rows)
        hi = max(r[0] + r[1] + (r[4] if r[2] == _SYMLINK else 0) for r in rows)
        strings = os.pread(fd, hi - lo, self._strings_off + lo)
        out: list[tuple[str, int, int, int, bytes, str | None]] = []
        for name_off, name_len, kind, flags, value, digest in rows:
            a = name_off - lo
            b = a + name_len
            name = strings[a:b].decode("utf-8", _ENC)
            target = strings[b:b + value].decode("utf-8", _ENC) if kind == _SYMLINK else None
            out.append((name, kind, flags, value, digest, target))
        return out


_SYMLINK = 2  # view.SYMLINK (this module sits below view.py, which imports it)
