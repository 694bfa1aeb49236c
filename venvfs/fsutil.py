"""Small filesystem primitives: atomic writes, locks, safe relative paths."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import posixpath
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from venvfs.errors import Busy, IOFailure
from venvfs.progress import human_bytes

log = logging.getLogger(__name__)


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
    import ctypes

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


@functools.cache
def _linkat() -> Any:
    import ctypes

    if sys.platform != "linux" or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).linkat
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    return fn


_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400


def link_fd(fd: int, dst: str | Path) -> None:
    """Give the open file ``fd`` the new name ``dst`` (Linux: linkat(2) of ``/proc/self/fd/N`` with
    ``AT_SYMLINK_FOLLOW``, as open(2) describes for ``O_TMPFILE``). Python's ``os.link`` cannot: it
    calls link(2) for that case, which links the magic symlink itself and fails with EXDEV.
    ENOSYS where there is no such call or no ``/proc``."""
    fn = _linkat()
    if fn is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), str(dst))
    if fn(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, os.fsencode(dst), _AT_SYMLINK_FOLLOW) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dst))


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True,
                       tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The temporary is made in ``tmp_dir`` (same filesystem) if given, else beside ``path``.
    """
    import tempfile  # here: most commands write nothing, and it costs `random` and `hashlib`

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


def atomic_write_json(path: Path, data: Any, *, durable: bool = True, tmp_dir: Path | None = None,
                      indent: int | None = 1) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=indent, sort_keys=True) + "\n").encode(), durable=durable,
                       tmp_dir=tmp_dir)


def file_identity(path: str) -> list[int]:
    """What tells a file from its replacement, or from itself changed: device, inode, size, mtime and
    ctime (ns). A JSON list, as the caches that key on a binary keep it."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def read_own_json(path: Path) -> Any:
    """A cache file's JSON, or None: unreadable, or not the user's own, or writable by anyone else (a
    root command with another user's ``$HOME`` must not take that user's word, nor anyone their files)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return None
            return json.load(f)
    except (OSError, ValueError):
        return None


def dead_connection(err: OSError) -> bool:
    """Whether ``err`` is a FUSE mount's whose daemon is gone: ENOTCONN once the connection's descriptor
    is closed, ECONNABORTED while the kernel is still tearing a killed daemon's connection down."""
    return err.errno in (errno.ENOTCONN, errno.ECONNABORTED)


def read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.load(f)


LOCK_TIMEOUT_ENV = "VENVFS_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 60.0
# After this long a waiting command says what it waits for: a silent wait looks like a hang.
LOCK_NOTICE_AFTER = 1.0

_lock_timeout: float | None = None  # set by the CLI's --wait; None: the environment or the default


def set_lock_timeout(seconds: float | None) -> None:
    """How long a waiting lock gives up after (``--wait``); None returns to $VENVFS_LOCK_TIMEOUT."""
    global _lock_timeout
    _lock_timeout = seconds


def lock_timeout() -> float:
    if _lock_timeout is not None:
        return _lock_timeout
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT
    return value if value >= 0 else float("inf")


def lock_holders(path: Path) -> list[int]:
    """Pids holding an flock on ``path``, from the kernel's own table (``/proc/locks``).

    The kernel's record, not one venvfs writes: it names holders that are no venvfs command (an
    ``flock(1)`` in a script), is never stale, and needs no write to a file shared holders read.
    A holder in another pid namespace is listed as pid 0 (the kernel cannot name it here).
    """
    try:
        st = os.stat(path)
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids: list[int] = []
    for line in text.splitlines():
        fields = line.split()
        # "N: FLOCK ADVISORY WRITE pid maj:min:ino 0 EOF"; waiters carry "->" after the number.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
            with contextlib.suppress(ValueError):
                if int(fields[4]) not in pids:
                    pids.append(int(fields[4]))
    return pids


def describe_holders(path: Path) -> str:
    """``held by pid N (command …)`` for the lock on ``path``, as far as this process can tell."""
    described = []
    for pid in lock_holders(path)[:3]:
        if pid == 0:
            described.append("a process in another pid namespace")
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            # rstrip: a title set with setproctitle (a forked mount daemon) is padded with blanks.
            command = " ".join(os.fsdecode(a) for a in argv).rstrip()
        except FileNotFoundError:
            # The kernel names the process that took the lock; a child that inherited the
            # descriptor holds it on after that one exits.
            described.append(f"pid {pid}, which has exited (a process it started holds the lock on)")
            continue
        except OSError:
            command = ""
        if len(command) > 200:
            command = command[:199] + "…"
        described.append(f"pid {pid} ({command})" if command else f"pid {pid}")
    return "held by " + ", ".join(described) if described else "held by another process"


def _lock_mode(directory: Path) -> int:
    # Nobody but those who may write the directory may open the lock file: any open descriptor can
    # flock, read-only ones too, so a readable lock file lets any local user stall every writer. A
    # directory shared with a group on purpose (g+w) is shared with its lock.
    try:
        dir_mode = os.stat(directory).st_mode
    except OSError:
        return 0o600
    return 0o660 if dir_mode & stat.S_IWGRP else 0o600


def open_lock(path: Path) -> int:
    """A descriptor of the lock file ``path`` (created if missing) that only its owner can open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _lock_mode(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o777 & ~mode:
            # A lock file made before locks were private (0644): closed now (by its owner or root;
            # the lock is the directory's own file). A descriptor some other user opened before
            # this keeps working until it is closed: waits end with a clear error anyway.
            with contextlib.suppress(PermissionError):
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def flock(path: Path, *, exclusive: bool, wait: bool = True, what: str = "") -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created if missing, mode 0600) for the duration of the block.

    flock locks belong to the open file description, so they vanish with the process: a killed
    venvfs never leaves a stale lock behind. With ``wait``, a held lock is waited for up to
    ``lock_timeout()`` seconds, saying after a second what it waits for; then ``Busy`` (exit 7).
    """
    what = what or str(path)
    fd = open_lock(path)
    try:
        op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        _acquire(fd, op, path, what, lock_timeout() if wait else 0.0)
        yield
    finally:
        os.close(fd)


def _acquire(fd: int, op: int, path: Path, what: str, timeout: float) -> None:
    # Polled rather than a blocking flock: a blocking one can be given neither a deadline nor a
    # notice without signals, which a library must not take over from its caller.
    start = time.monotonic()
    delay = 0.005
    noticed = False
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waited = time.monotonic() - start
        if waited >= timeout:
            holders = describe_holders(path)
            if timeout == 0:
                raise Busy(f"{what} is locked, {holders}; try again when it ends") from None
            raise Busy(f"gave up after {timeout:g} s waiting for the lock on {what}, {holders} "
                       f"(--wait SECONDS or ${LOCK_TIMEOUT_ENV} waits longer)") from None
        if not noticed and waited >= LOCK_NOTICE_AFTER:
            noticed = True
            log.warning("waiting for the lock on %s, %s (giving up after %g s)", what, describe_holders(path),
                        timeout)
        time.sleep(min(delay, max(timeout - waited, 0.0)))
        delay = min(delay * 2, 0.1)


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


# -- processes venvfs starts -----------------------------------------------------------------------------

def exists(name: str) -> bool:
    """``Path(name).exists()`` without building a Path (for loops over every object of a venv); an
    error other than "no such file" is raised, not taken for absence."""
    try:
        os.stat(name)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def log_to_stderr() -> None:
    """The logging of venvfs's own processes (the mount service, a daemon, an ingest worker):
    everything from INFO up, timed and with the pid, to stderr, their log file. Forced: a daemon
    forked by a command (``service.mount_in_fork``) would keep the command's own, which shows
    warnings only, untimed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s",
                        stream=sys.stderr, force=True)


def importable_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this very venvfs first on PYTHONPATH: what venvfs starts runs from "/", so it must
    find the same venvfs without the caller's cwd (a source tree, a venv that is not the caller's)."""
    # Not resolved: a venvfs reached through a symlinked directory (the benchmark's venvfs-stock does
    # so, to give its environment this venvfs without the site-packages around it) stays reached so.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)}


def spawn_detached(argv: list[str], env: dict[str, str], logfile: Path, *, keep_fd: int | None = None,
                   log_mode: int = 0o644) -> None:
    """Run ``argv`` detached (double fork: no zombie; its own session: no controlling terminal, and
    a kill of the caller's process group spares it), stdin /dev/null, output appended to ``logfile``,
    in "/". Only ``keep_fd`` survives of the caller's descriptors: an inherited flock (flock(1)'s, a
    venv lock a parent holds) would otherwise stay locked for as long as the child runs."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            null = os.open(os.devnull, os.O_RDWR)
            logfd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, log_mode)
            os.dup2(null, 0)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            if keep_fd is None:
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            else:
                os.set_inheritable(keep_fd, True)
                os.closerange(3, keep_fd)
                os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
            os.chdir("/")
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)
