"""Small filesystem primitives: atomic writes, locks, safe relative paths."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from venvfs.errors import Busy, IOFailure
from venvfs.progress import human_bytes


def fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory holding the new name is synced (POSIX leaves
    # directory updates to the filesystem's discretion until then).
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Flush everything written to the filesystem holding ``path`` (data and metadata).

    One syncfs makes a batch of unsynced objects durable at once: cheaper than an fsync per file
    and per directory, and it also covers file contents, which directory fsyncs do not.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.syncfs
        except (OSError, AttributeError):  # not glibc/Linux: the whole-system sync is the fallback
            os.sync()
            return
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True,
                       tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The temporary is made in ``tmp_dir`` (same filesystem) if given, else beside ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any, *, durable: bool = True, tmp_dir: Path | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), durable=durable,
                       tmp_dir=tmp_dir)


def read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.load(f)


@contextlib.contextmanager
def flock(path: Path, *, exclusive: bool, wait: bool = True, what: str = "") -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created if missing) for the duration of the block.

    flock locks belong to the open file description, so they vanish with the process: a killed
    venvfs never leaves a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, op | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(f"{what or path} is locked by another venvfs command; try again when it ends") from None
        yield
    finally:
        os.close(fd)


class UnsafePath(ValueError):
    """A relative path that would resolve outside its root."""


def safe_relpath(path: str) -> str:
    """Return ``path`` normalized as a relative POSIX path inside its root, or raise ``UnsafePath``.

    Rejects what a malicious archive uses to escape: absolute paths, ``..`` components, drive
    letters and backslashes (a separator on Windows, so a traversal there), NUL bytes and empty names.
    """
    if not path or "\x00" in path:
        raise UnsafePath(f"empty or NUL-containing path {path!r}")
    if "\\" in path:
        raise UnsafePath(f"backslash in path {path!r}")
    if path.startswith("/") or (len(path) >= 2 and path[1] == ":"):
        raise UnsafePath(f"absolute path {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise UnsafePath(f"path {path!r} escapes its destination")
    return posixpath.join(*parts)


def symlink_stays_inside(link_path: str, target: str) -> bool:
    """Whether a symlink at relative ``link_path`` pointing to ``target`` resolves inside the same root.

    ``..`` is only accepted before any other component: after one (``a/../..``) it is resolved from
    wherever ``a`` physically leads, which is outside whenever ``a`` is itself a symlink (``a -> ..``).
    """
    if target.startswith("/") or "\\" in target or not target or "\x00" in target:
        return False
    depth = len(link_path.split("/")) - 1
    descended = False
    for part in target.split("/"):
        if part == "..":
            if descended:
                return False
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            descended = True
            depth += 1
    return True


def is_enospc(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


def describe_oserror(err: OSError) -> str:
    """``[Errno 28] No space left on device: '/a/b'`` as one plain line: "/a/b: no space left on device"."""
    what = (err.strerror or str(err) or type(err).__name__)
    what = what[:1].lower() + what[1:] if what[1:2].islower() else what
    paths = [os.fsdecode(p) for p in (err.filename, err.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {what}" if paths else what


def free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def io_failure(err: OSError, doing: str, *, need: int | None = None, where: Path | None = None) -> IOFailure:
    """The one line for a filesystem error met while ``doing`` something: what, where, and for a full
    disk how much was needed and how much is free (on ``where``'s filesystem, else the failed path's)."""
    if not is_enospc(err):
        return IOFailure(f"{doing}: {describe_oserror(err)}")
    # A copy's error names source and destination; only the destination's filesystem is full.
    target = err.filename2 if err.filename2 is not None else err.filename
    line = f"{doing}: {describe_oserror(OSError(err.errno, err.strerror, target))}"
    if where is None and target is not None:
        where = Path(os.fsdecode(target))
        while not where.exists() and where != where.parent:
            where = where.parent
    free = free_bytes(where) if where is not None else None
    room = [f"needs up to {human_bytes(need)}" if need is not None else "",
            f"{human_bytes(free)} free there" if free is not None else ""]
    if any(room):
        line += f" ({', '.join(r for r in room if r)})"
    return IOFailure(line)


CRASH_ENV = "VENVFS_TEST_CRASH_AT"


def crash_point(step: str) -> None:
    """Test-only fault injection: with ``VENVFS_TEST_CRASH_AT=<step>`` the process dies here as if by
    SIGKILL (no cleanup, no finally, no atexit), so tests can stop a multi-step change of a venv at a
    named step deterministically. The steps are listed in docs/design.md ("Interrupted commands")."""
    if os.environ.get(CRASH_ENV) == step:
        os._exit(137)
