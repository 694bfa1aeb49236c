"""The lower layer's files in the store: where a lower file's bytes are, which file type the mount
shows for it, and opening it with its content checked against its digest (``chunks.py``)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from venvfs.fsflags import set_immutable
from venvfs.mount.overlay.inodes import Node, OverlayError, relpath
from venvfs.store.chunks import CorruptObject, ObjectChecker
from venvfs.store.layers import exists
from venvfs.store.store import SOURCE_EPOCH, Store
from venvfs.venv.upper import DIR, LNK, REG
from venvfs.venv.view import OBJECT, PYC, SYMLINK, LowerDir, LowerEntry, LowerFile, View

log = logging.getLogger(__name__)

EPOCH_NS = SOURCE_EPOCH * 1_000_000_000


class Lower:
    """The view (the selection's tree) and the store its files come from. Owns the record of which
    objects were checked (``checker``) and which bytecode files carry the immutable flag."""

    def __init__(self, view: View, store: Store, *, pyc_links: bool) -> None:
        self.view = view
        self.store = store
        # Store bytecode may be shown as symlinks to the store's .pyc files. CPython 3.11's open()
        # calls isatty() on every file, and the kernel forwards that ioctl to a FUSE daemon whatever
        # it answered before: ~50 us a .pyc, about 0.07x of a warm import. Through a symlink the
        # open, the ioctl and the reads land on the store's own filesystem (docs/mount.md,
        # "Bytecode"). But a chmod, utime or write that follows the link reaches the store object,
        # which mode 0444 does not stop for its owner or root: a file is linked only once it carries
        # the immutable flag (``fsflags``), which stops everyone; elsewhere it is a regular file.
        self.pyc_links = pyc_links
        self._sealed: dict[str, bool] = {}  # bytecode digest -> immutable (may be linked)
        # Every store object is checked against its digest as it is first read (``chunks.py``): what
        # the mount serves from the store is never silently wrong, however large the file.
        # Chunk lists come from the local store alone: a lower's own lists are as trustworthy as its
        # objects, and one forged along with an object would pass every chunk check. A lower object
        # gets a local list when a venv selects it (``verify.vouch_lower``), else it is checked whole.
        self.checker = ObjectChecker(store.root)
        self._objects_dirs = [f"{root}/objects" for root in store.layers]
        self._bytecode_dirs: list[str] = []
        # Layered stores: "ab/<digest>" -> the directory of the layer found to hold it. Found once
        # (one stat a layer) and kept: store files never move between layers while they exist.
        self._where: dict[str, str] = {}
        self.set_view(view)

    def set_view(self, view: View) -> None:
        self.view = view
        self._where.clear()
        self._bytecode_dirs = [f"{root}/bytecode/{view.cache_tag or 'none'}" for root in self.store.layers]

    def kind_of(self, entry: LowerEntry) -> int:
        """The file type the mount shows for a lower entry."""
        if isinstance(entry, LowerDir):
            return DIR
        if entry.kind == PYC and self.pyc_links:
            return LNK if self._seal(entry) else REG
        return LNK if entry.kind == SYMLINK else REG

    def _seal(self, entry: LowerFile) -> bool:
        digest = entry.digest
        assert digest is not None
        sealed = self._sealed.get(digest)
        if sealed is None:
            path = self.path_str(entry)
            # A lower store's file is never sealed, or written in any way: it is shown as a file.
            sealed = self._sealed[digest] = path.startswith(self._bytecode_dirs[0] + "/") and set_immutable(path)
        return sealed

    def path(self, entry: LowerFile) -> Path:
        assert entry.digest is not None
        if entry.kind == PYC:
            assert self.view.cache_tag is not None
            return self.store.bytecode_path(self.view.cache_tag, entry.digest)
        return self.store.object_path(entry.digest, entry.executable)

    def path_str(self, entry: LowerFile) -> str:
        """``path`` as a string built without pathlib (this runs for every cold read)."""
        digest = entry.digest
        assert digest is not None
        if entry.kind == PYC:
            rel, dirs = f"{digest[:2]}/{digest}.pyc", self._bytecode_dirs
        else:
            rel, dirs = f"{digest[:2]}/{digest}{'.x' if entry.executable else ''}", self._objects_dirs
        if len(dirs) == 1:
            return f"{dirs[0]}/{rel}"
        where = self._where.get(rel)
        if where is None:
            # An unreachable lower (a dead NFS server with a soft mount) fails this stat with EIO,
            # and the open below then names the local path and fails: EIO to the reader, no hang.
            where = next((d for d in dirs if exists(f"{d}/{rel}")), None)
            if where is None:
                return f"{dirs[0]}/{rel}"
            self._where[rel] = where
        return f"{where}/{rel}"

    def link_target(self, entry: LowerFile) -> str:
        """What a lower entry shown as a symlink points to."""
        if entry.kind == PYC:
            return self.path_str(entry)
        assert entry.target is not None
        return entry.target

    def open(self, node: Node, entry: LowerFile) -> int:
        path = self.path_str(entry)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            log.error("/%s: store file %s unreadable (%s)", relpath(node), path, e)
            raise OverlayError(errno.EIO) from None
        try:
            if entry.kind == OBJECT:
                st = os.fstat(fd)
                if st.st_size != entry.size:
                    log.error("/%s: store object %s is %d bytes, its record says %d (corrupt store)",
                              relpath(node), path, st.st_size, entry.size)
                    raise OverlayError(errno.EIO)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check_whole(self, node: Node, entry: LowerFile, fd: int) -> None:
        assert entry.digest is not None
        try:
            self.checker.check_whole(fd, entry.digest, entry.size)
        except CorruptObject as e:
            log.error("/%s: store object %s %s (corrupt store)", relpath(node), entry.digest, e)
            raise OverlayError(errno.EIO) from None
