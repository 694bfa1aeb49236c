"""The per-venv upper layer: a plain directory (``VENV/.venvfs/upper``) that takes every change.

Conventions (OCI image-spec whiteouts, so the layer reads like an image layer when nothing is mounted):

- a file, directory or symlink in the upper layer hides the same name in the lower layer (the store);
- ``.wh.<name>`` (an empty file) hides ``<name>`` of the lower layer; an upper entry of the same name
  wins over its whiteout, so creating over a deleted name never has to remove the whiteout;
- ``.wh..wh..opq`` inside a directory hides every lower entry of that directory.

Every operation goes through directory file descriptors opened component by component with
``O_NOFOLLOW``: no symlink in the upper layer is ever followed and no name can climb out of it.
Copy-up builds the new file in ``VENV/.venvfs/work`` (same filesystem) and renames it into place, so
a crash leaves the lower file showing or the complete copy, never a partial one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
NAME_MAX = 255

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h

_RENAME_EXCHANGE = 2
_DIRPATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CLONE_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM,
                      errno.EBADF}

# Entry kinds, as stat.S_IFMT values.
DIR = stat.S_IFDIR
REG = stat.S_IFREG
LNK = stat.S_IFLNK


def whiteout_name(name: str) -> str:
    return WHITEOUT_PREFIX + name


@dataclass
class Listing:
    entries: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (kind, st_ino)
    whiteouts: set[str] = field(default_factory=set)
    opaque: bool = False


def _kind(entry: os.DirEntry[str]) -> int:
    if entry.is_symlink():
        return LNK
    if entry.is_dir(follow_symlinks=False):
        return DIR
    if entry.is_file(follow_symlinks=False):
        return REG
    return stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)


def clone_or_copy(src_fd: int, dst_fd: int, size: int) -> None:
    """Share extents where the filesystem can (reflink), else copy in the kernel."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return
    except OSError as e:
        if e.errno not in _CLONE_UNSUPPORTED:
            raise
    offset = 0
    while offset < size:
        try:
            n = os.copy_file_range(src_fd, dst_fd, size - offset, offset, offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            n = _copy_rw(src_fd, dst_fd, offset, size)
        if n == 0:
            break
        offset += n


def _copy_rw(src_fd: int, dst_fd: int, offset: int, size: int) -> int:
    done = 0
    while offset + done < size:
        chunk = os.pread(src_fd, min(1 << 20, size - offset - done), offset + done)
        if not chunk:
            break
        os.pwrite(dst_fd, chunk, offset + done)
        done += len(chunk)
    return done


class Upper:
    """The upper directory plus its work directory; all paths are sequences of checked names."""

    def __init__(self, root: Path, work: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.work = work
        self.root_fd = os.open(root, _DIRPATH)
        self.work_fd = os.open(work, _DIRPATH)
        self._seq = 0

    def close(self) -> None:
        for fd in (self.root_fd, self.work_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def clean_work(self) -> None:
        """Leftovers of an interrupted copy-up: never visible, safe to drop."""
        for entry in os.scandir(self.work):
            if entry.is_dir(follow_symlinks=False):
                import shutil

                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    def discard(self, parts: Sequence[str], name: str) -> str:
        """Take ``parts/name`` out of the layer by renaming it into the work dir; returns its name
        there, for ``empty_work``. A rename is metadata only: an unlink of a large file that was
        just written frees its blocks then and there (about a millisecond a file on ext4), and the
        daemon calls this on its request loop. A crash leaves it to ``clean_work``."""
        tmp = self._tmpname()
        with self.dirfd(parts) as pfd:
            os.rename(name, tmp, src_dir_fd=pfd, dst_dir_fd=self.work_fd)
        return tmp

    def empty_work(self, names: Sequence[str]) -> None:
        """Remove what ``discard`` put into the work dir (off the request loop)."""
        for name in names:
            with contextlib.suppress(OSError):
                try:
                    os.unlink(name, dir_fd=self.work_fd)
                except IsADirectoryError:
                    os.rmdir(name, dir_fd=self.work_fd)

    # -- walking -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def dirfd(self, parts: Sequence[str]) -> Iterator[int]:
        """An O_PATH descriptor of the upper directory ``parts`` (ENOENT/ENOTDIR if it is not one)."""
        fd = os.dup(self.root_fd)
        try:
            for part in parts:
                nfd = os.open(part, _DIRPATH, dir_fd=fd)
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def listdir(self, parts: Sequence[str]) -> Listing:
        listing = Listing()
        with self.dirfd(parts) as pfd:
            # O_PATH descriptors cannot be read: open the directory itself for scandir.
            rfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
        try:
            with os.scandir(rfd) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith(WHITEOUT_PREFIX):
                        if name == OPAQUE:
                            listing.opaque = True
                        else:
                            listing.whiteouts.add(name[len(WHITEOUT_PREFIX):])
                        continue
                    listing.entries[name] = (_kind(entry), entry.inode())
        finally:
            os.close(rfd)
        return listing

    def lstat(self, parts: Sequence[str], name: str) -> os.stat_result:
        with self.dirfd(parts) as pfd:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)

    def exists(self, parts: Sequence[str], name: str) -> bool:
        try:
            self.lstat(parts, name)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    # -- changes -----------------------------------------------------------------------------------

    def _tmpname(self) -> str:
        self._seq += 1
        return f"tmp.{os.getpid()}.{self._seq}"

    def mkdir(self, parts: Sequence[str], name: str, mode: int, *, opaque: bool = False) -> None:
        with self.dirfd(parts) as pfd:
            if not opaque:
                os.mkdir(name, mode, dir_fd=pfd)
                return
            # Built in the work dir so the directory never appears without its opaque marker.
            tmp = self._tmpname()
            os.mkdir(tmp, mode, dir_fd=self.work_fd)
            try:
                with self.dirfd_of_work(tmp) as tfd:
                    os.close(os.open(OPAQUE, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=tfd))
                _rename_noreplace(self.work_fd, tmp, pfd, name)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(f"{tmp}/{OPAQUE}", dir_fd=self.work_fd)
                    os.rmdir(tmp, dir_fd=self.work_fd)
                raise

    @contextlib.contextmanager
    def dirfd_of_work(self, name: str) -> Iterator[int]:
        fd = os.open(name, _DIRPATH, dir_fd=self.work_fd)
        try:
            yield fd
        finally:
            os.close(fd)

    def ensure_dir(self, parts: Sequence[str], name: str, mode: int = 0o755) -> None:
        with contextlib.suppress(FileExistsError):
            self.mkdir(parts, name, mode)

    def whiteout(self, parts: Sequence[str], name: str) -> None:
        with self.dirfd(parts) as pfd:
            os.close(os.open(whiteout_name(name), os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=pfd))

    def remove_whiteout(self, parts: Sequence[str], name: str) -> None:
        with self.dirfd(parts) as pfd, contextlib.suppress(FileNotFoundError):
            os.unlink(whiteout_name(name), dir_fd=pfd)

    def make_opaque(self, parts: Sequence[str]) -> None:
        with self.dirfd(parts) as pfd:
            os.close(os.open(OPAQUE, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd))

    def clear_markers(self, parts: Sequence[str]) -> None:
        """Remove the whiteouts and opaque marker of an (otherwise empty) upper directory."""
        listing = self.listdir(parts)
        with self.dirfd(parts) as pfd:
            for name in listing.whiteouts:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(whiteout_name(name), dir_fd=pfd)
            if listing.opaque:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(OPAQUE, dir_fd=pfd)

    def copy_up_file(self, parts: Sequence[str], name: str, *, src: Path | None, data: bytes | None,
                     size: int, mode: int, mtime_ns: int, content: bool = True) -> None:
        """Place a copy of a lower file at ``parts/name``: built in the work dir, fsynced, renamed."""
        tmp = self._tmpname()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=self.work_fd)
        try:
            try:
                if content and data is not None:
                    os.pwrite(fd, data, 0)
                elif content and src is not None:
                    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        clone_or_copy(sfd, fd, size)
                    finally:
                        os.close(sfd)
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
                # A crash after the rename must not leave an empty file shadowing good lower bytes.
                os.fdatasync(fd)
            finally:
                os.close(fd)
            with self.dirfd(parts) as pfd:
                _rename_noreplace(self.work_fd, tmp, pfd, name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.work_fd)
            raise

    def copy_up_symlink(self, parts: Sequence[str], name: str, target: str) -> None:
        tmp = self._tmpname()
        os.symlink(target, tmp, dir_fd=self.work_fd)
        try:
            with self.dirfd(parts) as pfd:
                _rename_noreplace(self.work_fd, tmp, pfd, name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.work_fd)
            raise


@functools.cache
def _libc() -> ctypes.CDLL:
    import ctypes  # only renames that swap need it, not every importer of the upper layer's names

    return ctypes.CDLL(None, use_errno=True)


def rename_exchange(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """Swap two names atomically: renameat2(RENAME_EXCHANGE), which Python's os module lacks."""
    if _libc().renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), _RENAME_EXCHANGE) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    # link+unlink would be RENAME_NOREPLACE for files only; a plain rename is fine because callers
    # copy up only names that have no upper entry (and a directory rename fails on a non-empty one).
    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
