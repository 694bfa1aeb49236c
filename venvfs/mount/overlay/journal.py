"""``InodeJournal``: the inode numbers the kernel was told, kept on disk so that a daemon started on
the same FUSE connection after the last one died (``venvfs/mount/keeper.py``) means the same file by
each of them.

Why a journal and not numbers derived from paths: a node keeps its number for its life while its
path changes (a rename, pip's ``~`` stash of a package it upgrades), and a name can be given to a
new node while the kernel still holds the old one (RECORD renamed over RECORD). Only the history of
what happened to each number tells a new daemon what the kernel means by it.

Records, appended in the order things happened, each ``<op> <ino> <parent ino> <name>\\0`` (a name
holds no NUL and no ``/``, so neither needs escaping; the name's bytes are ``os.fsencode``'s):

- ``N``: a node was made with this number, at (parent, name);
- ``M``: the node's name is now (parent, name) (a rename, or its first name gone with a hard link left);
- ``D``: the node lost its last name (parent and name empty);
- ``O``: with an OPEN per file (not the kernel's "no open" mode), file handle ``<ino>`` was opened on
  node ``<parent ino>`` with the open flags as ``<name>`` (a directory handle: ``dir``);
- ``C``: file handle ``<ino>`` was released.

Records are collected while a request runs and written with one ``write`` before its reply
(``flush``, called by the FUSE adapter's boundary), so no number reaches the kernel before it is on
file; the page cache keeps it across the daemon's death (only a crash of the machine loses it, and
that ends the mount too). A daemon that starts on a fresh mount truncates the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Recovered:
    """What a journal says the kernel may still name: ``names`` (parent, name) -> number, the reverse
    ``where``, and the first number never handed out."""

    names: dict[tuple[int, str], int] = field(default_factory=dict)
    where: dict[int, tuple[int, str]] = field(default_factory=dict)
    next_ino: int = 2
    # File handle -> (inode, open flags, or -1 for a directory handle), and the first never handed out.
    handles: dict[int, tuple[int, int]] = field(default_factory=dict)
    next_fh: int = 0


def replay(data: bytes) -> Recovered:
    out = Recovered()
    highest = 1
    for record in data.split(b"\0"):
        if not record:
            continue
        try:
            op, ino_s, parent_s, name_b = record.split(b" ", 3)
            ino, parent = int(ino_s), int(parent_s)
        except ValueError:
            # A record cut short (the disk filled): the ones before it still hold.
            log.warning("inode journal: skipping a damaged record %r", record[:80])
            continue
        if op == b"O":
            out.handles[ino] = (parent, -1 if name_b == b"dir" else int(name_b or b"0"))
            out.next_fh = max(out.next_fh, ino + 1)
            continue
        if op == b"C":
            out.handles.pop(ino, None)
            continue
        highest = max(highest, ino)
        name = os.fsdecode(name_b)
        old = out.where.pop(ino, None)
        if old is not None and out.names.get(old) == ino:
            del out.names[old]
        if op in (b"N", b"M"):
            out.where[ino] = (parent, name)
            out.names[(parent, name)] = ino
    out.next_ino = highest + 1
    return out


class InodeJournal:
    def __init__(self, path: Path, *, fresh: bool) -> None:
        self.path = path
        self._pending: list[bytes] = []
        if fresh:
            self.recovered = Recovered()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            try:
                self.recovered = replay(path.read_bytes())
            except FileNotFoundError:
                self.recovered = Recovered()
            # Rewritten to what still holds, so a mount restarted many times does not replay its history each time.
            tmp = path.with_name(path.name + ".new")
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
                f.write(b"".join(self._record(b"N", ino, parent, name)
                                 for ino, (parent, name) in self.recovered.where.items()))
                f.write(b"".join(self._record(b"O", fh, ino, "dir" if flags < 0 else str(flags))
                                 for fh, (ino, flags) in self.recovered.handles.items()))
            os.replace(tmp, path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @staticmethod
    def _record(op: bytes, ino: int, parent: int, name: str) -> bytes:
        return b"%s %d %d %s\0" % (op, ino, parent, os.fsencode(name))

    def created(self, ino: int, parent: int, name: str) -> None:
        self._pending.append(self._record(b"N", ino, parent, name))

    def moved(self, ino: int, parent: int, name: str) -> None:
        self._pending.append(self._record(b"M", ino, parent, name))

    def gone(self, ino: int) -> None:
        self._pending.append(self._record(b"D", ino, 0, ""))

    def opened(self, fh: int, ino: int, flags: int | None) -> None:
        """``flags`` None: a directory handle."""
        self._pending.append(self._record(b"O", fh, ino, "dir" if flags is None else str(flags)))

    def released(self, fh: int) -> None:
        self._pending.append(self._record(b"C", fh, 0, ""))

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            os.write(self._fd, data)
        except OSError as e:
            # The numbers still work for this daemon; only a restart would find them unknown (ESTALE).
            log.error("inode journal %s: %s; a restart of this daemon may lose track of %d records",
                      self.path, e, data.count(b"\0"))

    def close(self) -> None:
        self.flush()
        os.close(self._fd)
