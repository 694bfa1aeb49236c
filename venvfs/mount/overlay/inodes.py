"""The overlay's inodes: ``Node`` (one file or directory as the kernel knows it) and ``InodeTable``
(inode numbers, what keeps a node alive, and the changes the kernel must be told about).

Every other part of the overlay works on these nodes; this module imports none of them.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from venvfs.venv.upper import DIR, Upper
from venvfs.venv.view import LowerEntry

ROOT_INO = 1
# File handles this overlay hands out start here. In the kernel's "no open" mode requests carry no
# handle and the (patched) binding passes the inode number instead, which is always below this.
HANDLE_BASE = 1 << 48


class OverlayError(Exception):
    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(errno_, message or os.strerror(errno_))
        self.errno = errno_


class Node:
    __slots__ = ("children", "entry", "extra_links", "ino", "kind", "lower", "name", "nlookup", "opaque",
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
        self.open_fhs: set[int] | None = None
        # The adapter's reply for a store entry (immutable, so built once); dropped on every change.
        self.entry: object | None = None

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

    def __init__(self, root_lower: LowerEntry | None) -> None:
        root = Node(ROOT_INO, None, "", DIR, upper=True, lower=root_lower)
        self.nodes: dict[int, Node] = {ROOT_INO: root}
        self.root = root
        self._next_ino = ROOT_INO + 1
        # st_ino in the upper layer -> node: the other names of a hard-linked upper file find it.
        self.upper_inos: dict[int, Node] = {}
        # ("inode", ino, "") or ("entry", parent_ino, name): for the adapter to tell the kernel.
        self.invalidations: list[tuple[str, int, str]] = []

    def new(self, parent: Node, name: str, kind: int, *, upper: bool, lower: LowerEntry | None) -> Node:
        node = Node(self._next_ino, parent, name, kind, upper=upper, lower=lower)
        self._next_ino += 1
        self.nodes[node.ino] = node
        return node

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise OverlayError(errno.ESTALE) from None

    def forget(self, ino: int, nlookup: int) -> Node | None:
        """Drop ``nlookup`` of the kernel's lookups; returns the node if the kernel holds none now."""
        node = self.nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return None
        node.nlookup -= nlookup
        self.maybe_free(node)
        return node if node.nlookup <= 0 else None

    def detach(self, parent: Node, name: str, node: Node) -> None:
        node.remove_link(parent, name)
        if not node.attached:
            for k, v in list(self.upper_inos.items()):
                if v is node:
                    del self.upper_inos[k]
            self.maybe_free(node)

    def maybe_free(self, node: Node) -> None:
        if not node.attached and node.nlookup <= 0 and not node.open_fhs:
            self.nodes.pop(node.ino, None)

    def inval_inode(self, node: Node) -> None:
        node.entry = None
        self.invalidations.append(("inode", node.ino, ""))

    def inval_entry(self, parent: Node, name: str) -> None:
        self.invalidations.append(("entry", parent.ino, name))
