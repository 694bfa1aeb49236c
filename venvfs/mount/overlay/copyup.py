"""Copy-up: giving a lower (store) entry a copy in the upper layer before anything changes it."""

from __future__ import annotations

import errno
import logging
import os

from venvfs.mount.overlay.inodes import InodeTable, Node, OverlayError, parts, relpath
from venvfs.mount.overlay.lower import EPOCH_NS, Lower
from venvfs.mount.overlay.tree import Tree
from venvfs.venv.upper import DIR, LNK, Upper, clone_or_copy
from venvfs.venv.view import INLINE, OBJECT, LowerDir, LowerFile

log = logging.getLogger(__name__)


class CopyUp:
    """Moves nodes from the lower layer to the upper one (``Node.upper``), keeping their inodes."""

    def __init__(self, inodes: InodeTable, tree: Tree, upper: Upper, lower: Lower) -> None:
        self.inodes = inodes
        self.tree = tree
        self.upper = upper
        self.lower = lower

    def ensure_upper(self, d: Node) -> None:
        """Give directory ``d`` (and its ancestors) a directory in the upper layer."""
        if d.upper:
            return
        if d.parent is None:
            raise OverlayError(errno.ENOENT)
        self.ensure_upper(d.parent)
        self.upper.ensure_dir(parts(d.parent), d.name, 0o755)
        d.upper = True

    def copy_up(self, node: Node, *, content: bool = True) -> None:
        if node.upper:
            return
        if node.kind == DIR:
            self.ensure_upper(node)
            return
        parent = node.parent
        if parent is None:
            raise OverlayError(errno.ENOENT)
        self.ensure_upper(parent)
        entry = node.lower
        assert isinstance(entry, LowerFile)
        parent_parts = parts(parent)
        if node.kind == LNK:
            self.upper.copy_up_symlink(parent_parts, node.name, self.lower.link_target(entry))
        else:
            src = None if entry.kind == INLINE else self.lower.path(entry)
            size = entry.size
            if src is not None and content:
                try:
                    size = src.stat().st_size
                except OSError as e:
                    log.error("/%s: store object missing, cannot copy up (%s)", relpath(node), e)
                    raise OverlayError(errno.EIO) from None
                if entry.kind == OBJECT:
                    # The copy is the venv's own from now on: bad bytes copied now would never be checked.
                    fd = self.lower.open(node, entry)
                    try:
                        self.lower.check_whole(node, entry, fd)
                    finally:
                        os.close(fd)
            self.upper.copy_up_file(parent_parts, node.name, src=src, data=entry.data, size=size,
                                    mode=0o755 if entry.executable else 0o644, mtime_ns=EPOCH_NS,
                                    content=content)
        node.upper = True
        self.inodes.inval_inode(node)

    def copy_up_tree(self, d: Node) -> bool:
        """Copy every lower entry below ``d`` into the upper layer; True if there were any."""
        self.ensure_upper(d)
        had_lower = isinstance(d.lower, LowerDir)
        for child in list(self.tree.load(d).values()):
            if child.kind == DIR:
                had_lower = self.copy_up_tree(child) or had_lower
            elif not child.upper:
                self.copy_up(child)
                had_lower = True
        return had_lower

    def forget_lower(self, d: Node) -> None:
        """``d`` became opaque: no lower directory shows through it, nor below it, any more."""
        d.lower = None
        for child in (d.children or {}).values():
            if child.kind == DIR and child.parent is d:
                self.forget_lower(child)

    def anonymous_copy(self, node: Node) -> int:
        """An fd to a copy of store file ``node`` that has no name (``O_TMPFILE``)."""
        entry = node.lower
        assert isinstance(entry, LowerFile)
        fd = os.open(self.upper.work, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            if entry.kind == INLINE:
                os.pwrite(fd, entry.data or b"", 0)
            else:
                src = self.lower.open(node, entry)
                try:
                    self.lower.check_whole(node, entry, src)
                    clone_or_copy(src, fd, os.fstat(src).st_size)
                finally:
                    os.close(src)
            os.fchmod(fd, 0o755 if entry.executable else 0o644)
        except BaseException:
            os.close(fd)
            raise
        return fd
