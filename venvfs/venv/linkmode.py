"""How store objects become real files in a venv: reflink, then hardlink, then copy.

Modelled on uv's ``link.rs``: the first file probes the best mode for a pair of filesystems, a
failure moves the state machine down one step (once, with the reason kept for the report), and
every file is placed by linking to a temp name and renaming over the destination, so a reader never
sees a half-written file and an interrupted run leaves each file old or new.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import sys
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from venvfs.errors import VenvError, VenvfsError
from venvfs.fsflags import is_immutable
from venvfs.store.store import SOURCE_EPOCH

log = logging.getLogger(__name__)

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h

# Why a mode cannot work on this pair of filesystems (as opposed to a one-off I/O error).
_REFLINK_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}
_HARDLINK_UNSUPPORTED = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES}


class LinkMode(str, Enum):
    AUTO = "auto"
    REFLINK = "reflink"
    HARDLINK = "hardlink"
    COPY = "copy"


_FALLBACK = {LinkMode.REFLINK: LinkMode.HARDLINK, LinkMode.HARDLINK: LinkMode.COPY}


class LinkModeUnavailable(VenvfsError):
    exit_code = 1


class UnsafeDestination(VenvError):
    """A file would be placed through a symlink inside the venv (one a wheel shipped, or any other)."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_MAX_OPEN_DIRS = 128  # far below the usual RLIMIT_NOFILE of 1024


class DirWalker:
    """Directories below ``root``, opened one component at a time with ``O_NOFOLLOW``, never through
    a symlink.

    A path string is resolved by the kernel through every symlink on it, including ones that an
    earlier distribution of the same selection placed (``a -> ../..``, then ``a/L -> ../../..``): a
    chain of links that each stay inside their own wheel leads out of the venv together. Placing
    relative to a directory fd that was reached without following any link leaves no such path.
    The fds are cached (each directory opened once per run) and owned by the walker.
    """

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = root
        self.create = create
        self._fds: dict[str, int] = {}

    def __enter__(self) -> DirWalker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def forget(self, rel_dir: str) -> None:
        """Drop a cached directory (it was removed)."""
        for key in [k for k in self._fds if k == rel_dir or k.startswith(rel_dir + "/")]:
            os.close(self._fds.pop(key))

    def open(self, rel_dir: str) -> int:
        """The fd of ``root/rel_dir`` (created if missing and ``create``): valid until the next call."""
        fd = self._fds.get(rel_dir)
        if fd is not None:
            return fd
        if len(self._fds) >= _MAX_OPEN_DIRS:
            self.close()
        if not rel_dir:
            if self.create:
                self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root, _DIR_FLAGS)
        else:
            parent, _, name = rel_dir.rpartition("/")
            fd = self._open_child(self.open(parent), name, rel_dir)
        self._fds[rel_dir] = fd
        return fd

    def _open_child(self, parent_fd: int, name: str, rel_dir: str) -> int:
        if name in ("", ".", ".."):
            raise UnsafeDestination(f"{self.root / rel_dir}: not a plain directory name")
        for _ in range(2):
            try:
                return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
            except FileNotFoundError:
                if not self.create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile: open it then
                    os.mkdir(name, 0o777, dir_fd=parent_fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and self.is_symlink(parent_fd, name):
                    raise UnsafeDestination(
                        f"{self.root / rel_dir} is a symlink: venvfs places no file through a symlink in "
                        f"a venv (it could lead anywhere); remove it or the distribution that placed it"
                    ) from None
                raise OSError(e.errno, e.strerror, str(self.root / rel_dir)) from None
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)

    @staticmethod
    def is_symlink(dir_fd: int, name: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False


def name_in_error(err: OSError, where: Path, name: str) -> OSError:
    """``err`` of a step relative to the directory ``where``, naming whole paths: the steps name only
    a file's own name (or none, as ``sendfile`` does), and the error's line must say where."""
    if err.filename is None:
        err.filename = str(where / name)
    elif isinstance(err.filename, str) and not os.path.isabs(err.filename):
        err.filename = str(where / err.filename)
    if isinstance(err.filename2, str) and not os.path.isabs(err.filename2):
        err.filename2 = str(where / err.filename2)
    return err


def reflink(src: Path, dst: Path) -> None:
    """Clone ``src``'s extents into a new file ``dst`` (FICLONE on Linux, clonefile on macOS)."""
    dir_fd = os.open(dst.parent, _DIR_FLAGS)
    try:
        reflink_at(src, dir_fd, dst.name)
    finally:
        os.close(dir_fd)


def reflink_at(src: str | Path, dir_fd: int, name: str, *, stamp: int | None = None) -> None:
    """``reflink`` into a new file ``name`` of the directory ``dir_fd``; with ``stamp``, the new file
    gets that mode and the store's mtime (``SOURCE_EPOCH``)."""
    if sys.platform == "darwin":  # pragma: no cover - not testable on the Linux CI
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        # AT_FDCWD is -2 on macOS: src is a path, the new file is relative to dir_fd.
        if libc.clonefileat(-2, os.fsencode(src), dir_fd, os.fsencode(name), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), name)
        if stamp is not None:
            os.chmod(name, stamp, dir_fd=dir_fd)
            os.utime(name, (SOURCE_EPOCH, SOURCE_EPOCH), dir_fd=dir_fd)
        return
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            fcntl.ioctl(fd, FICLONE, sfd)
            _stamp(fd, stamp)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=dir_fd)
            raise
        os.close(fd)
    finally:
        os.close(sfd)


def _stamp(fd: int, mode: int | None) -> None:
    # Through the open file: no second lookup of its name, and no window in which a name shows
    # the store's content with another mode.
    if mode is not None:
        os.fchmod(fd, mode)
        os.utime(fd, (SOURCE_EPOCH, SOURCE_EPOCH))


def copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def hardlink_warning(files: int | None, why: str) -> str:
    """One line saying that a venv's files are the store's inodes (see ``Linker.hardlink_warning``)."""
    count = f"{files} file(s)" if files is not None else "files"
    return (f"warning: {count} are hardlinks of store objects ({why}): writing one in place (as root, or "
            "after chmod +w) changes it for every venv (`venvfs store verify` finds that, `--repair` fixes it)")


def copy_at(src: str | Path, dir_fd: int, name: str, *, stamp: int | None = None) -> None:
    """Copy ``src`` into a new file ``name`` of the directory ``dir_fd`` (``stamp``: as ``reflink_at``).
    Raw descriptors, not file objects: eject copies thousands of files, and each file object costs
    an fstat, an ioctl and an lseek more."""
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(sfd).st_size
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            offset = 0
            try:
                # In the kernel, as shutil.copyfile does on Linux (sendfile, not copy_file_range,
                # which may share extents on XFS and btrfs: a copy must be one).
                while offset < size:
                    sent = os.sendfile(fd, sfd, offset, min(size - offset, 1 << 30))
                    if sent == 0:
                        break
                    offset += sent
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP) or offset:
                    raise
                while chunk := os.pread(sfd, 1 << 20, offset):
                    offset += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            _stamp(fd, stamp)
        finally:
            os.close(fd)
    finally:
        os.close(sfd)


@dataclass
class Linker:
    """Places files by the best mode that works; ``used`` and ``fallback_reason`` say what happened."""

    requested: LinkMode = LinkMode.AUTO
    allow_hardlink: bool = True  # False for eject: a hardlink would keep the venv tied to the store
    fallback_reason: str | None = None
    counts: dict[LinkMode, int] = field(default_factory=dict)
    _mode_by_devices: dict[tuple[int, int], LinkMode] = field(default_factory=dict)
    _fallbacks: list[str] = field(default_factory=list)
    link_limit_copies: int = 0  # files copied because their object had too many hardlinks already
    # Threads may place files with one linker (eject): its counts and fallbacks change under this.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def used(self) -> LinkMode | None:
        """The mode that placed the most files (normally the only one)."""
        if not self.counts:
            return None
        return max(self.counts, key=lambda m: self.counts[m])

    def settled_mode(self, src_dev: int, dst_dev: int) -> LinkMode | None:
        """The mode files from ``src_dev`` to ``dst_dev`` are placed by, once a first file settled it."""
        return self._mode_by_devices.get((src_dev, dst_dev))

    def _start_mode(self) -> LinkMode:
        if self.requested != LinkMode.AUTO:
            if self.requested == LinkMode.HARDLINK and not self.allow_hardlink:
                raise LinkModeUnavailable("hardlinks are not allowed here (they would share inodes with the store)")
            return self.requested
        return LinkMode.REFLINK

    def _next(self, mode: LinkMode) -> LinkMode | None:
        nxt = _FALLBACK.get(mode)
        if nxt == LinkMode.HARDLINK and not self.allow_hardlink:
            nxt = LinkMode.COPY
        return nxt

    def place(self, src: Path, dst: Path, *, mode_bits: int | None = None) -> LinkMode:
        """Make ``dst`` a file with ``src``'s content, atomically replacing whatever is there."""
        dir_fd = os.open(dst.parent, _DIR_FLAGS)
        try:
            return self.place_at(src, dir_fd, dst.name, dst.parent, mode_bits=mode_bits)
        finally:
            os.close(dir_fd)

    def place_at(self, src: str | Path, dir_fd: int, name: str, where: Path, *, mode_bits: int | None = None,
                 src_dev: int | None = None) -> LinkMode:
        """``place`` into the directory ``dir_fd`` (which is ``where``, named in errors): every step
        is relative to it, so no symlink on the way there is resolved again. ``src_dev`` with
        ``mode_bits``: the caller's stat of ``src`` (eject has one of every file), not made again."""
        try:
            return self._place_at(src, dir_fd, name, where, mode_bits, src_dev)
        except OSError as e:
            raise name_in_error(e, where, name) from None

    def _place_at(self, src: str | Path, dir_fd: int, name: str, where: Path, mode_bits: int | None,
                  src_dev: int | None) -> LinkMode:
        if src_dev is None or mode_bits is None:
            src_st = os.stat(src)
            src_dev = src_st.st_dev
            mode_bits = mode_bits if mode_bits is not None else (src_st.st_mode & 0o777) | 0o200
        devices = (src_dev, os.fstat(dir_fd).st_dev)
        bits = mode_bits
        mode = self._mode_by_devices.get(devices) or self._start_mode()
        # One fixed temporary name per file (callers hold the venv lock): a run killed between link and
        # rename leaves it behind, and the rerun removes it below instead of leaving litter in the venv.
        tmp = f".{name}.venvfs.tmp"
        placed: LinkMode | None = None
        leftover = True  # one killed run's temporary may be in the way: _place_one removes it
        while placed is None:
            try:
                self._place_one(mode, src, dir_fd, tmp, bits)
                placed = mode
                break
            except FileExistsError:
                if not leftover:
                    raise
                leftover = False
            except OSError as e:
                if mode == LinkMode.HARDLINK and (e.errno == errno.EMLINK
                                                  or (e.errno == errno.EPERM and is_immutable(src))):
                    # The object's link count is at the filesystem's limit (65000 on ext4), or it is
                    # immutable (bytecode a mount links to, which must not gain a writable name): a
                    # limit of that one inode, not of the filesystems, so copy this file and keep
                    # hardlinking.
                    copy_at(src, dir_fd, tmp, stamp=bits)
                    placed = LinkMode.COPY
                    with self._lock:
                        self.link_limit_copies += 1
                    break
                unsupported = _REFLINK_UNSUPPORTED if mode == LinkMode.REFLINK else _HARDLINK_UNSUPPORTED
                nxt = self._next(mode)
                if self.requested != LinkMode.AUTO or nxt is None or e.errno not in unsupported:
                    if self.requested != LinkMode.AUTO and mode != LinkMode.COPY:
                        raise LinkModeUnavailable(
                            f"--link-mode {mode.value} cannot work from {Path(src).parent} to {where}: "
                            f"{e.strerror}"
                        ) from None
                    raise
                step = f"{mode.value} unavailable ({e.strerror})"
                with self._lock:
                    if step not in self._fallbacks:
                        # The whole chain, so "using X" names the mode really used (reflink -> hardlink -> copy).
                        self._fallbacks.append(step)
                        self.fallback_reason = f"{', '.join(self._fallbacks)}, using {nxt.value}"
                        log.info("%s", self.fallback_reason)
                mode = nxt
        self._mode_by_devices[devices] = mode
        mode = placed
        try:
            # A copy or reflink got its mode and mtime as it was made; a hardlink shares the object's.
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        with self._lock:
            self.counts[mode] = self.counts.get(mode, 0) + 1
        return mode

    @staticmethod
    def _place_one(mode: LinkMode, src: str | Path, dir_fd: int, tmp: str, bits: int) -> None:
        try:
            if mode == LinkMode.REFLINK:
                reflink_at(src, dir_fd, tmp, stamp=bits)
            elif mode == LinkMode.HARDLINK:
                os.link(src, tmp, dst_dir_fd=dir_fd)
            else:
                copy_at(src, dir_fd, tmp, stamp=bits)
        except BaseException:
            # A copy that ran out of space leaves a partial file (in the store's tmp/ or in the venv).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise

    def add_placed(self, mode: LinkMode, n: int, fallback_reason: str | None) -> None:
        """Count ``n`` files another linker placed by ``mode`` (after ``fallback_reason``) as this one's."""
        if n:
            with self._lock:
                self.counts[mode] = self.counts.get(mode, 0) + n
                self.fallback_reason = self.fallback_reason or fallback_reason

    def hardlink_warning(self) -> str | None:
        """The one line to print when files were placed as hardlinks of store objects: mode 0444 is
        their only protection, which stops neither root nor an owner who runs ``chmod u+w``."""
        n = self.counts.get(LinkMode.HARDLINK, 0)
        if not n:
            return None
        why = "as asked" if self.requested == LinkMode.HARDLINK else "this filesystem cannot reflink"
        return hardlink_warning(n, why)

    def summary(self) -> str:
        if not self.counts:
            return "no files placed"
        parts = ", ".join(f"{n} by {m.value}" for m, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        if self.link_limit_copies:
            parts += f" ({self.link_limit_copies} copied: their store object cannot take another hardlink)"
        return parts + (f" ({self.fallback_reason})" if self.fallback_reason else "")
