"""Open files: file handles, the bounded fd cache of the kernel's "no open" mode, pinning of files
unlinked while open, and reads (checked against the store's digests), writes and fsync."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator

from venvfs.mount.overlay.copyup import CopyUp
from venvfs.mount.overlay.inodes import HANDLE_BASE, InodeTable, Node, OverlayError, parts, relpath
from venvfs.mount.overlay.lower import Lower
from venvfs.store.chunks import CorruptObject, needs_chunks
from venvfs.venv.upper import DIR, REG, Upper
from venvfs.venv.view import INLINE, OBJECT, PYC, LowerFile

log = logging.getLogger(__name__)

# In the kernel's "no open" mode files are read by inode, so the fds are a cache: at most this many
# stay open.
INODE_FDS_MAX = 256


class Handle:
    __slots__ = ("by_inode", "data", "fd", "node", "store", "writable")

    def __init__(self, node: Node, fd: int, *, store: bool, writable: bool, data: bytes | None = None,
                 by_inode: bool = False) -> None:
        self.node = node
        self.fd = fd
        self.store = store
        self.writable = writable
        self.data = data
        # No-open mode: the one handle of a node, keyed by its inode, living until the kernel forgets
        # the node; its fd is reopened on demand, upgraded to writable on the first write.
        self.by_inode = by_inode

    def switch(self, fd: int, *, store: bool, writable: bool) -> None:
        """Serve this handle from ``fd`` (-1: open on demand) from now on, closing the fd it had."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.store, self.writable, self.data = fd, store, writable, None


class Files:
    """Owns the handles (``handles``: by number, and in no-open mode by inode) and the fds they
    hold. A handle keeps its node alive through ``Node.open_fhs``, which the inode table reads."""

    def __init__(self, inodes: InodeTable, upper: Upper, lower: Lower, copyup: CopyUp, fh_numbers: Iterator[int],
                 *, no_open: bool) -> None:
        self.inodes = inodes
        self.upper = upper
        self.lower = lower
        self.copyup = copyup
        self._fh_numbers = fh_numbers
        self.no_open = no_open
        self.handles: dict[int, Handle] = {}
        self._fd_cache: dict[int, Handle] = {}  # no-open mode: inode handles holding an fd, oldest first

    def new_fh(self, handle: Handle, flags: int) -> int:
        fh = next(self._fh_numbers)
        self._register(fh, handle)
        if self.inodes.journal is not None:
            # What it takes to open it again: a daemon that takes over the mount meets this number.
            self.inodes.journal.opened(fh, handle.node.ino, flags)
        return fh

    def _register(self, fh: int, handle: Handle) -> None:
        self.handles[fh] = handle
        node = handle.node
        node.open_fhs = (*node.open_fhs, fh) if node.open_fhs else (fh,)

    def open_upper(self, node: Node, flags: int) -> int:
        return self.open_upper_parts(parts(node), flags)

    def open_upper_parts(self, path: list[str], flags: int) -> int:
        # The kernel tracks the file position (O_APPEND included): writes arrive with explicit offsets.
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOCTTY | os.O_DIRECT | os.O_NOATIME)
        with self.upper.dirfd(path[:-1]) as pfd:
            return os.open(path[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)

    def open_upper_writing(self, path: list[str], flags: int) -> int:
        """Open an upper file for a write the kernel has already allowed: it checked the mode when
        the caller opened the file, or before it sent a truncate (default_permissions). In no-open
        mode the daemon opens files itself, later, and a daemon that is not root meets the mode
        again: a file made read-only since must not refuse writes through a file opened before, so
        the owner's write bit is lifted for this open alone (a crash in between leaves it lifted)."""
        try:
            return self.open_upper_parts(path, flags)
        except PermissionError as e:
            denied = e
        with self.upper.dirfd(path[:-1]) as pfd:
            st = os.stat(path[-1], dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & stat.S_IWUSR:
                raise denied
            mode = stat.S_IMODE(st.st_mode)
            os.chmod(path[-1], mode | stat.S_IWUSR, dir_fd=pfd)
            try:
                return self.open_upper_parts(path, flags)
            finally:
                os.chmod(path[-1], mode, dir_fd=pfd)

    def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Returns (file handle, whether the kernel may keep cached pages from earlier opens)."""
        handle, keep = self._open(ino, flags)
        return self.new_fh(handle, flags), keep

    def _inherited(self, fh: int) -> Handle | None:
        """A handle an earlier daemon of this mount gave the kernel, opened again (journal.py). O_TRUNC
        and O_CREAT were that open's; they are not done twice."""
        journal = self.inodes.journal
        known = journal.recovered.handles.pop(fh, None) if journal is not None else None
        if known is None or known[1] < 0:
            return None
        ino, flags = known
        handle, _keep = self._open(ino, flags & ~(os.O_TRUNC | os.O_CREAT | os.O_EXCL))
        self._register(fh, handle)
        return handle

    def _open(self, ino: int, flags: int) -> tuple[Handle, bool]:
        node = self.inodes.node(ino)
        if node.kind == DIR:
            raise OverlayError(errno.EISDIR)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if not node.upper and (writable or flags & os.O_TRUNC):
            self.copyup.copy_up(node, content=not flags & os.O_TRUNC)
        if node.upper:
            fd = self.open_upper(node, flags)
            return Handle(node, fd, store=False, writable=writable), False
        entry = node.lower
        assert isinstance(entry, LowerFile)
        if entry.kind == INLINE:
            return Handle(node, -1, store=True, writable=False, data=entry.data), True
        if entry.kind == PYC or (entry.digest is not None and self.lower.checker.checked(entry.digest)):
            # Checked before: open the store file only when the kernel reads, which with pages kept
            # across opens (keep_cache: store bytes never change) it mostly does not.
            return Handle(node, -1, store=True, writable=False), True
        # A missing or resized object fails the open itself, and so does a damaged small one (Python
        # reads those whole anyway); a large one is checked chunk by chunk as it is read.
        fd = self.lower.open(node, entry)
        try:
            if entry.kind == OBJECT and not needs_chunks(entry.size):
                self.lower.check_whole(node, entry, fd)
        except BaseException:
            os.close(fd)
            raise
        return Handle(node, fd, store=True, writable=False), True

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is not None:
            return h
        if fh < HANDLE_BASE and self.no_open:
            node = self.inodes.node(fh)
            if node.kind == DIR:
                raise OverlayError(errno.EISDIR)
            h = Handle(node, -1, store=not node.upper, writable=False, by_inode=True,
                       data=node.lower.data if not node.upper and isinstance(node.lower, LowerFile)
                       and node.lower.kind == INLINE else None)
            self.handles[fh] = h
            node.open_fhs = (*node.open_fhs, fh) if node.open_fhs else (fh,)
            return h
        inherited = self._inherited(fh) if fh >= HANDLE_BASE else None
        if inherited is not None:
            return inherited
        raise OverlayError(errno.EBADF)

    def cache_fd(self, h: Handle) -> None:
        """Count ``h``'s fresh fd against INODE_FDS_MAX, closing the oldest cached ones beyond it."""
        cache = self._fd_cache
        cache.pop(h.node.ino, None)
        cache[h.node.ino] = h
        while len(cache) > INODE_FDS_MAX:
            ino = next(iter(cache))
            old = cache.pop(ino)
            if old.fd >= 0 and (old.store or old.node.attached):
                # An unlinked upper file is reachable through this fd alone: never close that one.
                os.close(old.fd)
                old.fd = -1
                old.writable = False

    def pin(self, node: Node) -> None:
        """No-open mode: ``node`` (an upper file) loses its last name while the kernel may still
        have it open; hold an fd to it, as an open handle would, until the kernel forgets it."""
        if not self.no_open or node.nlookup <= 0 or node.kind != REG or not node.upper or node.extra_links:
            return
        h = self.handle(node.ino)
        if h.fd >= 0 and not h.store and h.writable:
            self._fd_cache.pop(node.ino, None)
            return
        path = parts(node)
        try:
            fd = self.open_upper_writing(path, os.O_RDWR)
            writable = True
        except PermissionError:
            fd = self.open_upper_parts(path, os.O_RDONLY)
            writable = False
        h.switch(fd, store=False, writable=writable)
        self._fd_cache.pop(node.ino, None)

    def created(self, node: Node, fd: int) -> None:
        """No-open mode: ``fd`` (read-write) to the file just created as ``node`` serves its inode handle."""
        h = self.handle(node.ino)
        h.switch(fd, store=False, writable=True)
        self.cache_fd(h)

    def _writable(self, h: Handle) -> None:
        """No-open mode: make inode handle ``h`` writable, copying its file up first if needed."""
        node = h.node
        if not node.attached:
            if node.upper:
                raise OverlayError(errno.EBADF)  # unlinked, and its pinned fd is read-only
            # A store file deleted while open, now written: overlayfs would have copied it up at
            # open time; the copy goes where an unlinked file lives, nowhere.
            h.switch(self.copyup.anonymous_copy(node), store=False, writable=True)
            node.upper = True
            self.inodes.inval_inode(node)
            return
        self.copyup.copy_up(node)
        h.switch(self.open_upper_writing(parts(node), os.O_RDWR), store=False, writable=True)
        self.cache_fd(h)

    def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handle(fh)
        if h.store and h.node.upper and h.node.attached:
            # Copied up since this handle opened: read the copy, which a writer may have changed.
            with contextlib.suppress(OSError):
                h.switch(self.open_upper(h.node, os.O_RDONLY), store=False, writable=False)
                if h.by_inode:
                    self.cache_fd(h)
        if h.data is not None:
            return h.data[off:off + size]
        if h.fd < 0:
            if h.store:
                entry = h.node.lower
                assert isinstance(entry, LowerFile)
                h.fd = self.lower.open(h.node, entry)
            else:
                h.fd = self.open_upper(h.node, os.O_RDONLY)
            if h.by_inode:
                self.cache_fd(h)
        try:
            if h.store:
                entry = h.node.lower
                if isinstance(entry, LowerFile) and entry.kind == OBJECT and entry.digest is not None:
                    return self.lower.checker.read(h.fd, entry.digest, entry.size, off, size)
            return os.pread(h.fd, size, off)
        except CorruptObject as e:
            log.error("/%s: store object %s %s (corrupt store)", relpath(h.node) if h.node.attached else "?",
                      h.node.lower.digest if isinstance(h.node.lower, LowerFile) else "?", e)
            raise OverlayError(errno.EIO) from None
        except OSError as e:
            if h.store:
                log.error("/%s: reading the store failed (%s)", relpath(h.node) if h.node.attached else "?", e)
                raise OverlayError(errno.EIO) from None
            raise

    def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handle(fh)
        if h.by_inode and (not h.writable or h.fd < 0 or h.store):
            self._writable(h)
        if not h.writable or h.store:
            raise OverlayError(errno.EBADF)
        return os.pwrite(h.fd, buf, off)

    def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handle(fh)
        if h.by_inode and h.fd < 0 and not h.store:
            # Its fd was closed (cache eviction) after a write: fsync reaches the file through any fd.
            h.fd = self.open_upper(h.node, os.O_RDONLY)
            self.cache_fd(h)
        if h.store or h.fd < 0:
            return
        if datasync:
            os.fdatasync(h.fd)
        else:
            os.fsync(h.fd)

    def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if fh >= HANDLE_BASE and self.inodes.journal is not None:
            self.inodes.journal.recovered.handles.pop(fh, None)
            self.inodes.journal.released(fh)
        if h is None:
            return
        if h.fd >= 0:
            os.close(h.fd)
        if h.by_inode:
            self._fd_cache.pop(fh, None)
        node = h.node
        if node.open_fhs:
            node.open_fhs = tuple(n for n in node.open_fhs if n != fh) or None
        self.inodes.maybe_free(node)

    def fsyncdir(self, ino: int) -> None:
        node = self.inodes.node(ino)
        if not node.upper:
            return
        with self.upper.dirfd(parts(node)) as pfd:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- the store file under a node changed (view reload, repair) ---------------------------------

    def drop_store_fds(self, node: Node) -> None:
        """Close every fd held on ``node``'s store file: the next read opens the store's file again."""
        for fh in node.open_fhs or ():
            h = self.handles.get(fh)
            if h is not None and h.store and h.fd >= 0:
                h.switch(-1, store=True, writable=False)
        self._fd_cache.pop(node.ino, None)

    def serve_from_store(self, node: Node) -> None:
        """``node``'s upper copy went (identical to the store's): its inode handle reads the store."""
        h = self.handles.get(node.ino)
        if h is not None and h.by_inode:
            # Its fd reaches the unlinked upper copy: read the store's from now on.
            h.switch(-1, store=True, writable=False)
            self._fd_cache.pop(node.ino, None)
