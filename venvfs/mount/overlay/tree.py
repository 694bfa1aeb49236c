"""The merged namespace as the kernel reads it: a directory's entries from both layers (upper names
and whiteouts hiding lower ones), lookup, and directory listings."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections.abc import Iterator

from venvfs.mount.overlay.inodes import HANDLE_BASE, InodeTable, Node, OverlayError, parts, relpath
from venvfs.mount.overlay.lower import Lower
from venvfs.venv.upper import DIR, NAME_MAX, REG, WHITEOUT_PREFIX, Upper
from venvfs.venv.view import LowerDir

log = logging.getLogger(__name__)

# readdir offsets in the kernel's "no open" mode (see ``Tree.readdir``): 62 bits of the name's hash, never 0.
_OFFSET_MASK = (1 << 62) - 1


def _offset(name: str) -> int:
    digest = hashlib.blake2b(os.fsencode(name), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & _OFFSET_MASK) + 1


class Tree:
    """Loads directories into the inode table on first use and answers lookups and listings.

    Directory handles are numbered from the same sequence as file handles (``fh_numbers``, shared
    with ``Files``), so no two handles the kernel holds ever carry one number.
    """

    def __init__(self, inodes: InodeTable, upper: Upper, lower: Lower, fh_numbers: Iterator[int], *,
                 no_open: bool) -> None:
        self.inodes = inodes
        self.upper = upper
        self.lower = lower
        self._fh_numbers = fh_numbers
        self.no_open = no_open
        self.dir_handles: dict[int, list[tuple[str, Node]]] = {}

    def load(self, d: Node) -> dict[str, Node]:
        if d.children is not None:
            return d.children
        if d.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        children: dict[str, Node] = {}
        whiteouts: set[str] = set()
        lower = d.lower if isinstance(d.lower, LowerDir) else None
        if d.upper:
            try:
                listing = self.upper.listdir(parts(d))
            except (FileNotFoundError, NotADirectoryError):
                log.error("upper directory of /%s vanished: was the upper layer changed while mounted?",
                          relpath(d))
                listing = None
            if listing is not None:
                if listing.opaque:
                    d.opaque = True
                    d.lower = lower = None
                whiteouts = listing.whiteouts
                upper_inos = self.inodes.upper_inos
                for name, (kind, st_ino) in listing.entries.items():
                    existing = upper_inos.get(st_ino) if kind == REG else None
                    if existing is not None and existing.attached:
                        existing.add_link(d, name)  # another name of a hard-linked upper file
                        children[name] = existing
                        continue
                    lchild = lower.children.get(name) if lower is not None else None
                    node = self.inodes.new(d, name, kind, upper=True,
                                           lower=lchild if kind == DIR and isinstance(lchild, LowerDir) else None)
                    if kind == REG:
                        upper_inos[st_ino] = node
                    children[name] = node
        if lower is not None:
            for name, entry in lower.children.items():
                if name in children or name in whiteouts:
                    continue
                children[name] = self.inodes.new(d, name, self.lower.kind_of(entry), upper=False, lower=entry)
        d.children = children
        return children

    def child(self, d: Node, name: str) -> Node | None:
        return self.load(d).get(name)

    def resolve(self, relpath: str) -> Node | None:
        node = self.inodes.root
        for part in relpath.split("/") if relpath else []:
            if node.kind != DIR:
                return None
            nxt = self.child(node, part)
            if nxt is None:
                return None
            node = nxt
        return node

    @staticmethod
    def lower_has(d: Node, name: str) -> bool:
        return isinstance(d.lower, LowerDir) and name in d.lower.children

    def lookup(self, parent_ino: int, name: str) -> Node | None:
        parent = self.inodes.node(parent_ino)
        if parent.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        if name == ".":
            node: Node | None = parent
        elif name == "..":
            node = parent.parent or self.inodes.root
        else:
            # (A name of at most NAME_MAX / 4 characters fits in NAME_MAX bytes: skip the encoding.)
            if len(name) > NAME_MAX // 4 and len(os.fsencode(name)) > NAME_MAX:
                raise OverlayError(errno.ENAMETOOLONG)
            if name.startswith(WHITEOUT_PREFIX) or "/" in name:
                return None
            node = self.child(parent, name)
        if node is not None:
            node.nlookup += 1
        return node

    # -- listings ----------------------------------------------------------------------------------

    def opendir(self, ino: int) -> int:
        node = self.inodes.node(ino)
        if node.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        fh = next(self._fh_numbers)
        # A snapshot: entries added or removed while listing must not skip or repeat others. Sorted,
        # so that a daemon taking over the mount lists them in the same order (_inherited).
        self.dir_handles[fh] = sorted(self.load(node).items())
        if self.inodes.journal is not None:
            self.inodes.journal.opened(fh, ino, None)
        return fh

    def readdir(self, fh: int, start: int) -> list[tuple[int, str, Node]]:
        """Entries from offset ``start`` as (next offset, name, node)."""
        if fh < HANDLE_BASE and self.no_open:
            return self._readdir_stateless(fh, start)
        entries = self.dir_handles.get(fh)
        if entries is None:
            entries = self._inherited(fh)
        if entries is None:
            raise OverlayError(errno.EBADF)
        return [(i + 1, name, node) for i, (name, node) in enumerate(entries) if i >= start]

    def _readdir_stateless(self, ino: int, start: int) -> list[tuple[int, str, Node]]:
        """A listing with no handle to hold a snapshot: each entry's offset is derived from its name,
        so a listing resumed after names came or went neither skips nor repeats the others (the
        kernel caches the whole listing, so this runs once per directory and change). Not Python's
        ``hash``, which is salted per process: a listing may be resumed by the next daemon of the
        same mount (keeper.py) with an offset this one gave."""
        d = self.inodes.node(ino)
        if d.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        entries = sorted((_offset(name), name, node) for name, node in self.load(d).items())
        return [e for e in entries if e[0] > start]

    def _inherited(self, fh: int) -> list[tuple[str, Node]] | None:
        """A listing an earlier daemon of this mount had begun: its snapshot died with it, so this is
        a new one, in the same order (sorted), which resumes right when nothing came or went since."""
        journal = self.inodes.journal
        known = journal.recovered.handles.pop(fh, None) if journal is not None else None
        if known is None or known[1] >= 0:
            return None
        entries = sorted(self.load(self.inodes.node(known[0])).items())
        self.dir_handles[fh] = entries
        return entries

    def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh, None)
        if self.inodes.journal is not None:
            self.inodes.journal.recovered.handles.pop(fh, None)
            self.inodes.journal.released(fh)
