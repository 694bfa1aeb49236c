"""The pyfuse3 adapter: protocol only. Every request becomes one ``Overlay`` call; every error becomes
a ``FUSEError`` here, at one boundary, so no exception can reach pyfuse3's loop and end the daemon.

Cache policy: store entries are immutable, so entries, attributes and failed lookups are cached by
the kernel "forever" and store files keep their pages across opens. Whatever changes behind the
kernel's back (a copy-up, a view reload) is invalidated through a dedicated thread, because the
notification calls block on the very kernel locks an in-flight request may hold.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import queue
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT, ModeT, XAttrNameT

from venvfs.fsflags import can_set_immutable
from venvfs.mount.overlay import Attr, Node, Overlay, OverlayError, SetAttr

log = logging.getLogger(__name__)

FOREVER = 1e6  # seconds; the kernel caps it and we invalidate on every change
NO_OPEN_ENV = "VENVFS_NO_OPEN"  # "0": keep per-open requests even where the binding could do without
PYC_LINKS_ENV = "VENVFS_PYC_LINKS"  # "1": show store bytecode as symlinks into the store (needs root)
STATS_ENV = "VENVFS_FUSE_STATS"  # set (to anything) for the daemon: count requests per type (scripts/perf_mount.py)
UPPER_ATTR_TIMEOUT = 1.0  # upper files change through writes the kernel already accounts for
# glibc's malloc gives back freed memory only from the top of its heap: a read reply (up to 128 KB)
# freed below a block still in use stays the daemon's, and an import of the scientific set left about
# 1 MB of such holes. malloc_trim returns their pages; it takes about 0.1 ms, so once per this many
# requests, and once the daemon is idle (``trim``; the daemon's loop calls it). (A fixed mmap threshold
# frees them at once, but made every 128 KB read 8 times slower.)
TRIM_EVERY = 1024

Ctx = pyfuse3.RequestContext
P = ParamSpec("P")
R = TypeVar("R")


def boundary(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self = args[0]
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OverlayError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            # A bug or a corrupt layer: this request fails, the filesystem stays up.
            log.exception("%s%r failed", fn.__name__, args[1:])
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            assert isinstance(self, Operations)
            self.flush_invalidations()

    return wrapper


class Invalidator:
    """Runs kernel cache invalidations on a thread of its own (see the module docstring)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, int, str] | Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="venvfs-invalidate", daemon=True)
        self._thread.start()

    def put(self, item: tuple[str, int, str]) -> None:
        self._queue.put(item)

    def after(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the invalidation thread once everything put before it has been done."""
        self._queue.put(fn)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if callable(item):
                try:
                    item()
                except Exception:
                    log.exception("after invalidating")
                continue
            kind, ino, name = item
            try:
                if kind == "inode":
                    pyfuse3.invalidate_inode(ino, False)
                else:
                    pyfuse3.invalidate_entry(ino, os.fsencode(name))
            except OSError as e:
                # ENOENT: the kernel holds nothing for it, which is what we wanted.
                if e.errno not in (errno.ENOENT, errno.ENOTCONN, errno.EBADF):
                    log.warning("invalidating %s %d %r: %s", kind, ino, name, e)
            except Exception:
                log.exception("invalidating %s %d %r", kind, ino, name)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another C library, no ctypes)."""
    try:
        import ctypes

        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return None
    return trim


def no_open_available() -> bool:
    """Whether the kernel's "no open" mode can be used: it needs a pyfuse3 that passes the inode
    where the kernel sends a zero file handle (venvfs's patch, ``scripts/build-pyfuse3``)."""
    return bool(getattr(pyfuse3, "ZERO_FH_IS_INODE", False)) and os.environ.get(NO_OPEN_ENV, "1") != "0"


def pyc_links_wanted(*, allow_other: bool) -> bool:
    """Whether to show store bytecode as symlinks into the store (``Overlay.pyc_links``): asked for
    with ``VENVFS_PYC_LINKS=1``, and possible only for a daemon that may set the immutable flag
    (root), since a link is safe only to an object nobody can change. Not for a mount shared with
    other users: they may not be allowed into the owner's store directory."""
    if allow_other or os.environ.get(PYC_LINKS_ENV) != "1":
        return False
    if not can_set_immutable():
        log.info("%s=1 ignored: bytecode links need CAP_LINUX_IMMUTABLE (root) to keep the store unchanged",
                 PYC_LINKS_ENV)
        return False
    return True


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    # Read by venvfs's pyfuse3 patch (stock pyfuse3 ignores it): symlink targets stay in the kernel's
    # page cache, so following a store .pyc link costs no READLINK round trip.
    enable_cache_symlinks = True

    def __init__(self, overlay: Overlay, invalidator: Invalidator | None = None) -> None:
        super().__init__()
        self.overlay = overlay
        self.invalidator = invalidator
        # With no OPEN to carry it, O_TRUNC must come as a SETATTR (read by the patched pyfuse3).
        self.enable_atomic_o_trunc = not overlay.no_open
        self._negative = pyfuse3.EntryAttributes()
        self._negative.st_ino = 0
        self._negative.entry_timeout = FOREVER
        # One reply serves every store entry, its own fields filled in per request (``_node_entry``).
        self._store_reply = self.entry(overlay.store_attr_template())
        self._store_stat = overlay.store_stat
        self.requests = 0  # handled so far (those through ``boundary``)
        self._trimmed_at = 0
        self._malloc_trim = _malloc_trim()

    def count_requests(self) -> dict[str, int]:
        """Wrap every request handler with a counter; returns the live counts (for scripts/perf_mount.py).

        Only done when asked (``VENVFS_FUSE_STATS``): a wrapper costs a little on every request.
        """
        counts: dict[str, int] = {}
        for name in _REQUESTS:
            handler = getattr(self, name)

            def counted(*args: Any, _handler: Any = handler, _name: str = name) -> Any:
                counts[_name] = counts.get(_name, 0) + 1
                return _handler(*args)

            setattr(self, name, counted)
        return counts

    def flush_invalidations(self) -> None:
        self.requests += 1
        if self.requests - self._trimmed_at >= TRIM_EVERY:
            self.trim()
        journal = self.overlay.inodes.journal
        if journal is not None:
            journal.flush()  # before the reply: no inode number reaches the kernel unrecorded
        pending = self.overlay.invalidations
        if not pending:
            return
        self.overlay.invalidations = []
        if self.invalidator is not None:
            for item in pending:
                self.invalidator.put(item)

    @property
    def untrimmed(self) -> bool:
        return self.requests != self._trimmed_at

    def trim(self) -> None:
        """Give the pages of freed heap memory back to the kernel (see TRIM_EVERY)."""
        self._trimmed_at = self.requests
        if self._malloc_trim is not None:
            self._malloc_trim(0)

    # -- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def entry(attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.ino
        e.generation = 0
        e.entry_timeout = FOREVER
        e.attr_timeout = FOREVER if attr.immutable else UPPER_ATTR_TIMEOUT
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = 4096
        e.st_blocks = attr.blocks
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        return e

    def _node_entry(self, node: Node) -> pyfuse3.EntryAttributes:
        """The reply for ``node``. Nothing is kept per node (a reply is 200 bytes, and a walked tree has
        tens of thousands); a store entry's fills in the one shared reply, which pyfuse3 copies into
        the kernel's reply before any other request runs (no await between this and its reply)."""
        if node.upper:
            return self.entry(self.overlay.attr(node))
        mode, size, nlink, blocks = self._store_stat(node)
        e = self._store_reply
        e.st_ino = node.ino
        e.st_mode = mode
        e.st_size = size
        e.st_nlink = nlink
        e.st_blocks = blocks
        return e

    # -- requests ----------------------------------------------------------------------------------

    @boundary
    async def lookup(self, parent_inode: InodeT, name: FileNameT, ctx: Ctx) -> pyfuse3.EntryAttributes:
        node = self.overlay.lookup(parent_inode, os.fsdecode(name))
        if node is None:
            # A cached "no such name": Python's import system probes many of them.
            return self._negative
        try:
            return self._node_entry(node)
        except BaseException:
            self.overlay.forget(node.ino, 1)
            raise

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        try:
            for ino, n in inode_list:
                self.overlay.forget(ino, n)
        except Exception:
            log.exception("forget")

    @boundary
    async def getattr(self, inode: InodeT, ctx: Ctx) -> pyfuse3.EntryAttributes:
        return self._node_entry(self.overlay.node(inode))

    @boundary
    async def setattr(self, inode: InodeT, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: FileHandleT | None, ctx: Ctx) -> pyfuse3.EntryAttributes:
        changes = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self.entry(self.overlay.setattr(inode, changes, fh))

    @boundary
    async def readlink(self, inode: InodeT, ctx: Ctx) -> FileNameT:
        return os.fsencode(self.overlay.readlink(inode))

    @boundary
    async def opendir(self, inode: InodeT, ctx: Ctx) -> FileHandleT:
        if self.overlay.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # see open()
        return self.overlay.opendir(inode)

    @boundary
    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for next_id, name, node in self.overlay.readdir(fh, start_id):
            try:
                entry = self._node_entry(node)
            except (OverlayError, OSError) as e:
                log.error("readdir: %s: %s", name, e)
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), entry, next_id):
                break
            node.nlookup += 1  # readdirplus replies count as lookups

    @boundary
    async def releasedir(self, fh: FileHandleT) -> None:
        self.overlay.releasedir(fh)

    @boundary
    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        return None  # directory changes are made with *at calls the upper filesystem journals

    @boundary
    async def open(self, inode: InodeT, flags: FlagT, ctx: Ctx) -> pyfuse3.FileInfo:
        if self.overlay.no_open:
            # "No open" mode: OPEN and OPENDIR answered ENOSYS once, after which the kernel sends
            # neither (nor RELEASE), keeps every file's pages and caches directory listings. A warm
            # import then costs the daemon almost no requests instead of an OPEN and a RELEASE per module.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        fh, keep = self.overlay.open(inode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @boundary
    async def create(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, flags: FlagT,
                     ctx: Ctx) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, node = self.overlay.create(parent_inode, os.fsdecode(name), mode, flags, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fh), self._node_entry(node)

    @boundary
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        return self.overlay.read(fh, off, size)

    @boundary
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        return self.overlay.write(fh, off, buf)

    async def flush(self, fh: FileHandleT) -> None:
        # Nothing to do on close(): ENOSYS makes the kernel stop sending FLUSH for good, one request
        # less for every file Python opens.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @boundary
    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        self.overlay.fsync(fh, datasync)

    @boundary
    async def release(self, fh: FileHandleT) -> None:
        self.overlay.release(fh)

    @boundary
    async def mknod(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, rdev: int,
                    ctx: Ctx) -> pyfuse3.EntryAttributes:
        return self._node_entry(self.overlay.mknod(parent_inode, os.fsdecode(name), mode, rdev, ctx.uid, ctx.gid))

    @boundary
    async def mkdir(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, ctx: Ctx) -> pyfuse3.EntryAttributes:
        return self._node_entry(self.overlay.mkdir(parent_inode, os.fsdecode(name), mode, ctx.uid, ctx.gid))

    @boundary
    async def symlink(self, parent_inode: InodeT, name: FileNameT, target: FileNameT,
                      ctx: Ctx) -> pyfuse3.EntryAttributes:
        node = self.overlay.symlink(parent_inode, os.fsdecode(name), os.fsdecode(target), ctx.uid, ctx.gid)
        return self._node_entry(node)

    @boundary
    async def link(self, inode: InodeT, new_parent_inode: InodeT, new_name: FileNameT,
                   ctx: Ctx) -> pyfuse3.EntryAttributes:
        return self._node_entry(self.overlay.link(inode, new_parent_inode, os.fsdecode(new_name)))

    @boundary
    async def unlink(self, parent_inode: InodeT, name: FileNameT, ctx: Ctx) -> None:
        self.overlay.unlink(parent_inode, os.fsdecode(name))

    @boundary
    async def rmdir(self, parent_inode: InodeT, name: FileNameT, ctx: Ctx) -> None:
        self.overlay.rmdir(parent_inode, os.fsdecode(name))

    @boundary
    async def rename(self, parent_inode_old: InodeT, name_old: FileNameT, parent_inode_new: InodeT,
                     name_new: FileNameT, flags: FlagT, ctx: Ctx) -> None:
        self.overlay.rename(parent_inode_old, os.fsdecode(name_old), parent_inode_new, os.fsdecode(name_new),
                            flags)

    @boundary
    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: Ctx) -> bytes:
        return self.overlay.getxattr(inode, os.fsdecode(name))

    @boundary
    async def listxattr(self, inode: InodeT, ctx: Ctx) -> Sequence[XAttrNameT]:
        return [os.fsencode(n) for n in self.overlay.listxattr(inode)]

    @boundary
    async def setxattr(self, inode: InodeT, name: XAttrNameT, value: bytes, ctx: Ctx) -> None:
        self.overlay.setxattr(inode, os.fsdecode(name), value)

    @boundary
    async def removexattr(self, inode: InodeT, name: XAttrNameT, ctx: Ctx) -> None:
        self.overlay.removexattr(inode, os.fsdecode(name))

    @boundary
    async def statfs(self, ctx: Ctx) -> pyfuse3.StatvfsData:
        s = self.overlay.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.bsize
        out.f_frsize = s.frsize
        out.f_blocks = s.blocks
        out.f_bfree = s.bfree
        out.f_bavail = s.bavail
        out.f_files = s.files
        out.f_ffree = s.ffree
        out.f_favail = s.favail
        out.f_namemax = s.namemax
        return out


_REQUESTS = ("lookup", "forget", "getattr", "setattr", "readlink", "opendir", "readdir", "releasedir", "fsyncdir",
             "open", "create", "read", "write", "flush", "fsync", "release", "mknod", "mkdir", "symlink", "link",
             "unlink", "rmdir", "rename", "getxattr", "listxattr", "setxattr", "removexattr", "statfs")


def mount_options(*, allow_other: bool) -> set[str]:
    # default_permissions: the kernel checks mode bits, so the daemon never decides access itself.
    options = set(pyfuse3.default_options) | {"fsname=venvfs", "subtype=venvfs", "default_permissions"}
    if allow_other:
        options.add("allow_other")
    return options
