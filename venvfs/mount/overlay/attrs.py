"""Attributes: what stat shows for a node of either layer, setattr (chmod, chown, truncate, utime),
extended attributes, and statfs."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from venvfs.mount.overlay.copyup import CopyUp
from venvfs.mount.overlay.files import Files, Handle
from venvfs.mount.overlay.inodes import ROOT_INO, InodeTable, Node, OverlayError, parts, relpath, upper_at
from venvfs.mount.overlay.lower import EPOCH_NS, Lower
from venvfs.venv.upper import DIR, LNK, NAME_MAX, REG, Upper
from venvfs.venv.view import SYMLINK, LowerDir, LowerFile

log = logging.getLogger(__name__)

_DIR_MODE = stat.S_IFDIR | 0o755
_LNK_MODE = stat.S_IFLNK | 0o777
_FILE_MODE = stat.S_IFREG | 0o644
_EXEC_MODE = stat.S_IFREG | 0o755


class Attr:
    __slots__ = ("atime_ns", "blocks", "ctime_ns", "gid", "immutable", "ino", "mode", "mtime_ns", "nlink",
                 "rdev", "size", "uid")

    def __init__(self, ino: int, mode: int, size: int, *, nlink: int = 1, uid: int = 0, gid: int = 0,
                 rdev: int = 0, blocks: int | None = None, atime_ns: int = EPOCH_NS, mtime_ns: int = EPOCH_NS,
                 ctime_ns: int = EPOCH_NS, immutable: bool = False) -> None:
        self.ino = ino
        self.mode = mode
        self.size = size
        self.nlink = nlink
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.blocks = blocks if blocks is not None else (size + 511) // 512
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.immutable = immutable  # store content: the kernel may cache it without limit

    @classmethod
    def from_stat(cls, ino: int, st: os.stat_result) -> Attr:
        return cls(ino, st.st_mode, st.st_size, nlink=st.st_nlink, uid=st.st_uid, gid=st.st_gid, rdev=st.st_rdev,
                   blocks=st.st_blocks, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)


@dataclass
class SetAttr:
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


@dataclass
class StatFs:
    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    namemax: int


class Attributes:
    """Reads and changes a node's metadata. A store entry's attributes are made up here (owner: the
    mount's user, times: the store's epoch); an upper one's are the upper file's, reached through an
    open handle (``Files``) once the file has no name left."""

    def __init__(self, inodes: InodeTable, upper: Upper, lower: Lower, copyup: CopyUp, files: Files, *,
                 uid: int, gid: int, no_open: bool) -> None:
        self.inodes = inodes
        self.upper = upper
        self.lower = lower
        self.copyup = copyup
        self.files = files
        self.uid = uid
        self.gid = gid
        self.no_open = no_open

    def attr(self, node: Node) -> Attr:
        if node.upper:
            if not node.attached:
                for fh in node.open_fhs or ():
                    h = self.files.handles[fh]
                    if h.fd >= 0:
                        return Attr.from_stat(node.ino, os.fstat(h.fd))
                raise OverlayError(errno.ENOENT)
            if node.ino == ROOT_INO:
                st = os.stat(".", dir_fd=self.upper.root_fd)
            else:
                p = parts(node)
                st = self.upper.lstat(p[:-1], p[-1])
            attr = Attr.from_stat(node.ino, st)
            if node.kind == DIR and isinstance(node.lower, LowerDir):
                attr.nlink = 1  # merged: the upper count misses lower subdirs; 1 means "unknown" to find
            return attr
        mode, size, nlink, blocks = self.store_stat(node)
        return Attr(node.ino, mode, size, nlink=nlink, uid=self.uid, gid=self.gid, blocks=blocks, immutable=True)

    def store_stat(self, node: Node) -> tuple[int, int, int, int]:
        """(mode, size, nlink, blocks) of a store entry (``node.upper`` false); owner, times and the
        rest are the same for every store entry (``attr``). No ``Attr``: the adapter builds its reply
        to the kernel from these for every request, and keeps none per node."""
        entry = node.lower
        if isinstance(entry, LowerDir):
            subdirs = sum(1 for c in entry.children.values() if isinstance(c, LowerDir))
            return _DIR_MODE, 4096, 2 + subdirs, 8
        assert entry is not None
        if node.kind == LNK:
            size = entry.size if entry.kind == SYMLINK else len(os.fsencode(self.lower.path_str(entry)))
            return _LNK_MODE, size, 1, 0
        size = entry.size
        if size < 0:
            try:
                size = entry.size = os.stat(self.lower.path_str(entry)).st_size
            except OSError as e:
                log.error("/%s: store bytecode missing (%s)", relpath(node), e)
                raise OverlayError(errno.EIO) from None
        # Shown writable (0644/0755, unlike the read-only object) so installers may replace or edit
        # them; any write copies up first.
        return _EXEC_MODE if entry.executable else _FILE_MODE, size, 1, (size + 511) // 512

    def readlink(self, ino: int) -> str:
        node = self.inodes.node(ino)
        if node.kind != LNK:
            raise OverlayError(errno.EINVAL)
        if not node.upper:
            entry = node.lower
            assert isinstance(entry, LowerFile)
            return self.lower.link_target(entry)
        p = parts(node)
        with self.upper.dirfd(p[:-1]) as pfd:
            return os.readlink(p[-1], dir_fd=pfd)

    # -- setattr -----------------------------------------------------------------------------------

    def setattr(self, ino: int, changes: SetAttr, fh: int | None = None) -> Attr:
        node = self.inodes.node(ino)
        if not node.upper:
            self.copyup.copy_up(node, content=changes.size != 0)
        # In no-open mode ftruncate arrives with a zero handle: the node's inode handle stands in.
        handles = self.files.handles
        h = handles.get(fh) if fh else handles.get(ino) if self.no_open else None
        if h is not None and (h.store or h.node is not node or h.fd < 0):
            h = None
        if not node.attached and h is None:
            raise OverlayError(errno.ENOENT)
        if node.attached:
            with upper_at(self.upper, node) as (pfd, name):
                self._apply(node, changes, h, pfd, name)
        else:
            assert h is not None
            self._apply_fd(changes, h.fd)
        return self.attr(node)

    def _apply(self, node: Node, c: SetAttr, h: Handle | None, pfd: int, name: str) -> None:
        if c.size is not None:
            if node.kind != REG:
                raise OverlayError(errno.EINVAL if node.kind != DIR else errno.EISDIR)
            if h is not None and h.writable:
                os.ftruncate(h.fd, c.size)
            else:
                fd = self.files.open_upper_writing(parts(node), os.O_WRONLY)
                try:
                    os.ftruncate(fd, c.size)
                finally:
                    os.close(fd)
        if c.mode is not None and node.kind != LNK:
            os.chmod(name, stat.S_IMODE(c.mode), dir_fd=pfd, follow_symlinks=False)
        if c.uid is not None or c.gid is not None:
            os.chown(name, -1 if c.uid is None else c.uid, -1 if c.gid is None else c.gid, dir_fd=pfd,
                     follow_symlinks=False)
        if c.atime_ns is not None or c.mtime_ns is not None:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns if c.atime_ns is None else c.atime_ns,
                               st.st_mtime_ns if c.mtime_ns is None else c.mtime_ns),
                     dir_fd=pfd, follow_symlinks=False)

    @staticmethod
    def _apply_fd(c: SetAttr, fd: int) -> None:
        if c.size is not None:
            os.ftruncate(fd, c.size)
        if c.mode is not None:
            os.fchmod(fd, stat.S_IMODE(c.mode))
        if c.uid is not None or c.gid is not None:
            os.fchown(fd, -1 if c.uid is None else c.uid, -1 if c.gid is None else c.gid)
        if c.atime_ns is not None or c.mtime_ns is not None:
            st = os.fstat(fd)
            os.utime(fd, ns=(st.st_atime_ns if c.atime_ns is None else c.atime_ns,
                             st.st_mtime_ns if c.mtime_ns is None else c.mtime_ns))

    # -- extended attributes -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _xattr_path(self, node: Node) -> Iterator[str]:
        with upper_at(self.upper, node) as (pfd, name):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                # The magic link reaches the very inode opened above, never a path looked up again.
                yield f"/proc/self/fd/{fd}"
            finally:
                os.close(fd)

    def getxattr(self, ino: int, name: str) -> bytes:
        node = self.inodes.node(ino)
        if not node.upper or node.kind == LNK:
            raise OverlayError(errno.ENODATA)
        with self._xattr_path(node) as path:
            return os.getxattr(path, name)

    def listxattr(self, ino: int) -> list[str]:
        node = self.inodes.node(ino)
        if not node.upper or node.kind == LNK:
            return []
        with self._xattr_path(node) as path:
            return os.listxattr(path)

    def setxattr(self, ino: int, name: str, value: bytes) -> None:
        node = self.inodes.node(ino)
        if node.kind == LNK:
            raise OverlayError(errno.EPERM)
        self.copyup.copy_up(node)
        with self._xattr_path(node) as path:
            os.setxattr(path, name, value)

    def removexattr(self, ino: int, name: str) -> None:
        node = self.inodes.node(ino)
        if not node.upper or node.kind == LNK:
            raise OverlayError(errno.ENODATA)
        with self._xattr_path(node) as path:
            os.removexattr(path, name)

    def statfs(self) -> StatFs:
        st = os.statvfs(self.upper.root)
        return StatFs(st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree,
                      st.f_favail, NAME_MAX)
