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
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from venvfs.errors import VenvfsError
from venvfs.fsflags import is_immutable
from venvfs.store import SOURCE_EPOCH

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


def reflink(src: Path, dst: Path) -> None:
    """Clone ``src``'s extents into a new file ``dst`` (FICLONE on Linux, clonefile on macOS)."""
    if sys.platform == "darwin":  # pragma: no cover - not testable on the Linux CI
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.clonefile(os.fsencode(src), os.fsencode(dst), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(dst))
        return
    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.ioctl(fd, FICLONE, s.fileno())
        except BaseException:
            os.close(fd)
            os.unlink(dst)
            raise
        os.close(fd)


def copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def hardlink_warning(files: int | None, why: str) -> str:
    """One line saying that a venv's files are the store's inodes (see ``Linker.hardlink_warning``)."""
    count = f"{files} file(s)" if files is not None else "files"
    return (f"warning: {count} are hardlinks of store objects ({why}): writing one in place (as root, or "
            "after chmod +w) changes it for every venv (`venvfs store verify` finds that, `--repair` fixes it)")


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

    @property
    def used(self) -> LinkMode | None:
        """The mode that placed the most files (normally the only one)."""
        if not self.counts:
            return None
        return max(self.counts, key=lambda m: self.counts[m])

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
        devices = (os.stat(src).st_dev, os.stat(dst.parent).st_dev)
        mode = self._mode_by_devices.get(devices) or self._start_mode()
        # One fixed temporary name per file (callers hold the venv lock): a run killed between link and
        # rename leaves it behind, and the rerun removes it below instead of leaving litter in the venv.
        tmp = dst.parent / f".{dst.name}.venvfs.tmp"
        placed: LinkMode | None = None
        while placed is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            try:
                self._place_one(mode, src, tmp)
                placed = mode
                break
            except OSError as e:
                if mode == LinkMode.HARDLINK and (e.errno == errno.EMLINK
                                                  or (e.errno == errno.EPERM and is_immutable(src))):
                    # The object's link count is at the filesystem's limit (65000 on ext4), or it is
                    # immutable (bytecode a mount links to, which must not gain a writable name): a
                    # limit of that one inode, not of the filesystems, so copy this file and keep
                    # hardlinking.
                    copy(src, tmp)
                    placed = LinkMode.COPY
                    self.link_limit_copies += 1
                    break
                unsupported = _REFLINK_UNSUPPORTED if mode == LinkMode.REFLINK else _HARDLINK_UNSUPPORTED
                nxt = self._next(mode)
                if self.requested != LinkMode.AUTO or nxt is None or e.errno not in unsupported:
                    if self.requested != LinkMode.AUTO and mode != LinkMode.COPY:
                        raise LinkModeUnavailable(
                            f"--link-mode {mode.value} cannot work from {src.parent} to {dst.parent}: "
                            f"{e.strerror}"
                        ) from None
                    raise
                step = f"{mode.value} unavailable ({e.strerror})"
                if step not in self._fallbacks:
                    # The whole chain, so "using X" names the mode really used (reflink -> hardlink -> copy).
                    self._fallbacks.append(step)
                    self.fallback_reason = f"{', '.join(self._fallbacks)}, using {nxt.value}"
                    log.info("%s", self.fallback_reason)
                mode = nxt
        self._mode_by_devices[devices] = mode
        mode = placed
        try:
            if mode != LinkMode.HARDLINK:
                # A hardlink shares the object's inode and already has its mode and mtime.
                os.chmod(tmp, mode_bits if mode_bits is not None else (os.stat(src).st_mode & 0o777) | 0o200)
                os.utime(tmp, (SOURCE_EPOCH, SOURCE_EPOCH))
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self.counts[mode] = self.counts.get(mode, 0) + 1
        return mode

    @staticmethod
    def _place_one(mode: LinkMode, src: Path, tmp: Path) -> None:
        try:
            if mode == LinkMode.REFLINK:
                reflink(src, tmp)
            elif mode == LinkMode.HARDLINK:
                os.link(src, tmp)
            else:
                copy(src, tmp)
        except BaseException:
            # A copy that ran out of space leaves a partial file (in the store's tmp/ or in the venv).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

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
