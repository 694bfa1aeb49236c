"""The overlay's inodes: ``Node`` (one file or directory as the kernel knows it) and ``InodeTable``
(inode numbers, what keeps a node alive, and the changes the kernel must be told about).

Every other part of the overlay works on these nodes; this module imports none of them.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator

from venvfs.mount.overlay.journal import InodeJournal
from venvfs.venv.upper import DIR, Upper
from venvfs.venv.view import LowerEntry

ROOT_INO = 1
# File handles this overlay hands out start here. In the kernel's "no open" mode requests carry no
# handle and the (patched) binding passes the inode number instead, which is always below this.
HANDLE_BASE = 1 << 48
# What a node the kernel may hold from a daemon before this one counts as lookups: the kernel's true
# count died with that daemon, and a node freed too early would answer ESTALE to a file still in use.
# Its FORGETs bring it down; the cost is memory for the nodes the kernel held at the restart.
INHERITED_LOOKUPS = 1 << 40


class OverlayError(Exception):
    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(errno_, message or os.strerror(errno_))
        self.errno = errno_


class Node:
    __slots__ = ("children", "extra_links", "ino", "kind", "lower", "name", "nlookup", "opaque",
                 "open_fhs", "parent", "upper")

    def __init__(self, ino: int, parent: Node | None, name: str, kind: int, *, upper: bool,
                 lower: LowerEntry | None) -> None:
        self.ino = ino
        self.parent = parent
        self.name = name
        self.kind = kind
        self.upper = upper  # the upper layer has this name (a file's bytes then come from there)
        self.lower = lower  # file: its lower source; dir: the lower dir merged into it (None if opaque)
        self.opaque = False
        self.children: dict[str, Node] | None = None  # loaded on first use
        self.nlookup = 0
        self.extra_links: list[tuple[Node, str]] | None = None
        # A tuple, not a set: in no-open mode every file read gets a handle, and a set is 216 bytes.
        self.open_fhs: tuple[int, ...] | None = None

    @property
    def attached(self) -> bool:
        return self.parent is not None or self.ino == ROOT_INO

    def add_link(self, parent: Node, name: str) -> None:
        if self.parent is None:
            self.parent, self.name = parent, name
        else:
            self.extra_links = [*(self.extra_links or []), (parent, name)]

    def remove_link(self, parent: Node, name: str) -> None:
        if self.parent is parent and self.name == name:
            if self.extra_links:
                self.parent, self.name = self.extra_links.pop(0)
            else:
                self.parent, self.name = None, ""
        elif self.extra_links:
            self.extra_links = [(p, n) for p, n in self.extra_links if not (p is parent and n == name)]

    def __repr__(self) -> str:
        return f"Node({self.ino}, {self.name!r}, kind={self.kind:o}, upper={self.upper})"


def parts(node: Node) -> list[str]:
    """The path of ``node`` below the mount's root, as names (ENOENT once it has no name)."""
    out: list[str] = []
    n = node
    while n.ino != ROOT_INO:
        if n.parent is None:
            raise OverlayError(errno.ENOENT)
        out.append(n.name)
        n = n.parent
    out.reverse()
    return out


def relpath(node: Node) -> str:
    return "/".join(parts(node))


@contextlib.contextmanager
def upper_at(upper: Upper, node: Node) -> Iterator[tuple[int, str]]:
    """(directory fd, name) of ``node`` in the upper layer, for the *at system calls."""
    if node.ino == ROOT_INO:
        yield upper.root_fd, "."
        return
    p = parts(node)
    with upper.dirfd(p[:-1]) as pfd:
        yield pfd, p[-1]


class InodeTable:
    """Every node the kernel may name, by inode number.

    A node stays while it has a name (``attached``), the kernel holds lookups on it (``nlookup``), or
    an open handle refers to it (``open_fhs``, kept by ``Files``): ``maybe_free`` drops it once none
    holds. ``Node`` fields are shared state by design: the namespace links and unlinks nodes, copy-up
    and the view reload move them between layers, ``Files`` counts handles on them; this table only
    numbers them and decides when one may go.
    """

    def __init__(self, root_lower: LowerEntry | None, journal: InodeJournal | None = None) -> None:
        root = Node(ROOT_INO, None, "", DIR, upper=True, lower=root_lower)
        self.nodes: dict[int, Node] = {ROOT_INO: root}
        self.root = root
        # Where the kernel's numbers are kept for a daemon that takes over this mount (journal.py).
        self.journal = journal
        recovered = journal.recovered if journal is not None else None
        self._next_ino = max(ROOT_INO + 1, recovered.next_ino if recovered else 0)
        # (parent ino, name) -> the number an earlier daemon gave that name, and the reverse.
        self._inherited = dict(recovered.names) if recovered else {}
        self._inherited_where = dict(recovered.where) if recovered else {}
        # Loads a directory's children (Tree.load), set by the overlay: how a number an earlier
        # daemon gave is found again, by loading its parent.
        self.loader: Callable[[Node], object] | None = None
        # st_ino in the upper layer -> node: the other names of a hard-linked upper file find it.
        self.upper_inos: dict[int, Node] = {}
        # ("inode", ino, "") or ("entry", parent_ino, name): for the adapter to tell the kernel.
        self.invalidations: list[tuple[str, int, str]] = []

    def new(self, parent: Node, name: str, kind: int, *, upper: bool, lower: LowerEntry | None) -> Node:
        ino = self._inherited.pop((parent.ino, name), None) if self._inherited else None
        if ino is not None and ino not in self.nodes:
            self._inherited_where.pop(ino, None)
            node = Node(ino, parent, name, kind, upper=upper, lower=lower)
            node.nlookup = INHERITED_LOOKUPS
        else:
            node = Node(self._next_ino, parent, name, kind, upper=upper, lower=lower)
            self._next_ino += 1
            if self.journal is not None:
                self.journal.created(node.ino, parent.ino, name)
        self.nodes[node.ino] = node
        return node

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            node = self._find_inherited(ino, depth=0)
            if node is None:
                raise OverlayError(errno.ESTALE) from None
            return node

    def _find_inherited(self, ino: int, depth: int) -> Node | None:
        """A number an earlier daemon of this mount gave: its parent loaded, the name gets it back."""
        where = self._inherited_where.get(ino)
        if where is None or self.loader is None or depth > 4096:
            return self.nodes.get(ino)
        parent_ino, _name = where
        parent = self.nodes.get(parent_ino) or self._find_inherited(parent_ino, depth + 1)
        if parent is None or parent.kind != DIR:
            return None
        try:
            self.loader(parent)
        except (OverlayError, OSError):
            return None
        return self.nodes.get(ino)

    def renaming(self, node: Node, old: tuple[Node, str], new: tuple[Node, str], replaced: Node | None,
                 *, undo: Node | None = None) -> None:
        """Record, before it is done, that ``node`` moves from ``old`` to ``new`` (and ``replaced``
        loses that name); ``undo``: the rename failed, ``node`` is back and so is the node it would
        have replaced."""
        journal = self.journal
        if journal is None:
            return
        if node.parent is old[0] and node.name == old[1]:
            journal.moved(node.ino, new[0].ino, new[1])
        if replaced is not None and not replaced.extra_links:
            journal.gone(replaced.ino)
        if undo is not None:
            journal.moved(undo.ino, old[0].ino, old[1])
        journal.flush()

    def forget_inherited(self, parent: Node, name: str) -> None:
        """An earlier daemon's name is gone (a resent unlink found it done): its number must not go
        to a new file of that name while the kernel may still hold it."""
        ino = self._inherited.pop((parent.ino, name), None)
        if ino is not None:
            self._inherited_where.pop(ino, None)
            if self.journal is not None:
                self.journal.gone(ino)

    def relinked(self, node: Node) -> None:
        """``node``'s first name changed (a rename, an exchange): recorded for a later daemon."""
        if self.journal is not None:
            if node.attached and node.parent is not None:
                self.journal.moved(node.ino, node.parent.ino, node.name)
            elif not node.attached:
                self.journal.gone(node.ino)

    def forget(self, ino: int, nlookup: int) -> Node | None:
        """Drop ``nlookup`` of the kernel's lookups; returns the node if the kernel holds none now."""
        node = self.nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return None
        node.nlookup -= nlookup
        self.maybe_free(node)
        return node if node.nlookup <= 0 else None

    def detach(self, parent: Node, name: str, node: Node) -> None:
        first = node.parent is parent and node.name == name
        node.remove_link(parent, name)
        if first:
            self.relinked(node)
        if not node.attached:
            for k, v in list(self.upper_inos.items()):
                if v is node:
                    del self.upper_inos[k]
            self.maybe_free(node)

    def maybe_free(self, node: Node) -> None:
        if not node.attached and node.nlookup <= 0 and not node.open_fhs:
            self.nodes.pop(node.ino, None)

    def inval_inode(self, node: Node) -> None:
        self.invalidations.append(("inode", node.ino, ""))

    def inval_entry(self, parent: Node, name: str) -> None:
        self.invalidations.append(("entry", parent.ino, name))
