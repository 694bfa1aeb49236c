"""The watcher that unmounts a venv's site-packages when its daemon (and keeper) die without unmounting it.

A daemon killed by SIGKILL (or the OOM killer) leaves a dead FUSE mount: every access fails with
ENOTCONN ("Transport endpoint is not connected", uv's "os error 107"), and ``site.py`` skips a
site-packages it cannot stat, so the interpreter-start hook below the mount never runs and Python
says only ``ModuleNotFoundError``. Once the dead mount is gone, the underlying directory shows its
``_venvfs_automount.pth`` again and the next Python start (or activation) mounts the venv anew.

libfuse's own ``auto_unmount`` (a ``fusermount3`` that waits for the daemon to close its socket)
does not do this for venvfs: before unmounting it opens the mount point to see whether the
filesystem still answers, and in the kernel's "no open" mode that open is answered by the kernel
itself (no OPENDIR is sent), so a dead mount looks alive and stays. Measured: per-open mode 3 of 3
dead mounts cleared, no-open mode 0 of 3.

So each daemon starts one small watcher (a POSIX shell script using awk and ``flock(1)``) in a
session of its own (a kill of the daemon's process group spares it). It
holds the read end of a pipe whose only writer is the daemon. With a keeper (``keeper.py``) the
keeper starts it, and every daemon the keeper forks shares the writing end: a daemon's death is the
keeper's to repair, and only the end of all of them together is a dead mount. The daemon writes ``mounted <mount
id> <device>`` once mounted and ``clean`` once it has unmounted; the end of file without ``clean``
means the daemon is gone without unmounting. The watcher then takes the daemon lock (held by every
live daemon of the venv, so a new daemon is never unmounted: while the watcher holds the lock none
can start, and one that started first keeps it), checks in ``/proc/self/mountinfo`` (which asks
nothing of the filesystem) that the mount at the mount point is still the one its daemon made, and
lazily unmounts it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Runs as `sh -c WATCHER sh MOUNTPOINT ESCAPED_MOUNTPOINT LOCK FUSERMOUNT` with the pipe as stdin:
# POSIX sh, awk and util-linux's flock(1), about 1 MB where a Python watcher took 11 MB (measured RSS).
# The mount point is compared as /proc/self/mountinfo escapes it, through ENVIRON (awk -v would
# interpret the backslashes).
WATCHER = r"""
last=
while IFS= read -r line; do last=$line; done
case $last in "mounted "*) ;; *) exit 0 ;; esac
WANT=${last#mounted } MP=$2 exec flock -w 5 "$3" sh -c '
    found=$(awk '"'"'$5 == ENVIRON["MP"] { f = $1 " " $3 } END { print f }'"'"' /proc/self/mountinfo)
    if [ "$found" = "$WANT" ]; then exec "$1" -u -z "$2"; fi
' sh "$4" "$1"
"""


def _escaped(path: str) -> str:
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def mount_identity(mountpoint: Path) -> tuple[str, str] | None:
    """The mount id and device (``major:minor``) of the topmost mount at ``mountpoint``, from
    ``/proc/self/mountinfo``: read without asking the filesystem anything (the daemon calls this
    before it serves its first request)."""
    from venvfs.venv.mountinfo import topmost

    entry = topmost(mountpoint)
    return (entry.mount_id, entry.device) if entry else None


def fusermount() -> str | None:
    """fusermount3 on this process's ``PATH``, else the older fusermount, which unmounts a FUSE 3 mount
    just as well. ``PATH`` is read at each call: a command forked by the service has its client's."""
    return _fusermount_on(os.environ.get("PATH", os.defpath))


@functools.cache
def _fusermount_on(path: str) -> str | None:
    """Looked up once per process and ``PATH`` value."""
    return shutil.which("fusermount3", path=path) or shutil.which("fusermount", path=path)


@functools.cache
def tools(path: str) -> tuple[str, str] | None:
    """The watcher's shell and fusermount on ``path`` (a ``PATH`` value), if flock(1) and awk are there
    too: looked up once per process and ``PATH``, and by the mount service before it forks (four
    walks of ``PATH``, then the shell's own, were ~1 ms of every mount)."""
    sh = shutil.which("sh", path=path)
    tool = _fusermount_on(path)
    if sh is None or tool is None or shutil.which("flock", path=path) is None or shutil.which("awk", path=path) is None:
        return None
    return sh, tool


class Watcher:
    """The daemon's side: start the watcher, tell it the mount, tell it the mount is gone."""

    def __init__(self, mountpoint: Path, lock: Path) -> None:
        self._fd = -1
        self.pid: int | None = None
        found = tools(os.environ.get("PATH", os.defpath))
        if found is None:
            # Nothing to unmount with: a dead mount is then cleared by `venvfs mount` (or activation).
            log.info("no watcher for %s: sh, fusermount3, flock(1) or awk is missing", mountpoint)
            return
        sh, tool = found
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(
                [sh, "-c", WATCHER, "sh", str(mountpoint), _escaped(str(mountpoint)), str(lock), tool],
                stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd="/",
            )
        except OSError:
            os.close(w)
            return
        finally:
            os.close(r)
        self._fd = w
        self.pid = proc.pid

    @classmethod
    def adopt(cls, fd: int, pid: int | None) -> Watcher:
        """The watcher an earlier program of this process started (a keeper's upgrade: keeper.py)."""
        watcher = cls.__new__(cls)
        watcher._fd, watcher.pid = fd, pid
        return watcher

    @property
    def fd(self) -> int:
        return self._fd

    def _say(self, line: str) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self._fd, line.encode() + b"\n")

    def mounted(self, mountpoint: Path) -> None:
        ident = mount_identity(mountpoint)
        if ident is not None:
            self._say(f"mounted {ident[0]} {ident[1]}")

    def unmounted(self) -> None:
        """The daemon unmounted (or never mounted): the watcher exits without touching anything."""
        self._say("clean")
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- the venv removed under a live mount -----------------------------------------------------------

@functools.cache
def libc() -> Any:
    """libc through ctypes, loaded once ahead of need (the mount service loads it before it forks).
    The process's own symbols (``dlopen(NULL)``), which include libc's: ``find_library`` would run
    ``ldconfig -p`` (a fork and an exec, ~5 ms of every mount's start)."""
    import ctypes

    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1, lib.inotify_add_watch, lib.umount2  # noqa: B018 - resolved now, not later
    except (OSError, AttributeError):
        return None
    return lib


_IN_DELETE = 0x200
_IN_MOVE_SELF = 0x800
_IN_MOVED_FROM = 0x40
_IN_IGNORED = 0x8000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


def watch_removal(venv_root: Path, state_dir: Path, lock_names: frozenset[bytes],
                  on_removed: Callable[[str], None]) -> bool:
    """Call ``on_removed(why)`` (once, from a thread of its own) when the venv is being removed under
    the mount: the daemon's lock file in ``.venvfs/`` deleted, ``.venvfs/`` moved, or its
    ``pyvenv.cfg`` deleted.

    ``uv venv --clear`` and ``uv sync`` after a Python change remove ``.venv`` recursively: they
    delete ``.venvfs/`` (state and upper layer), everything below the mount (through it), and then
    fail with EBUSY on the mount point itself, leaving a venv with no state under a live mount. A
    daemon that unmounts itself as soon as the removal starts lets that removal finish (measured
    with uv 0.13.9 in docs/automount.md). Returns False where inotify is unavailable."""
    lib = libc()
    if lib is None:
        return False
    fd = lib.inotify_init1(_IN_CLOEXEC)
    if fd < 0:
        return False
    # IN_DELETE_SELF of a directory comes only once its inode is freed, and the daemon holds files in
    # both: the deletion of a lock file (the venv's, the daemon's) is the first sign instead: nothing
    # of venvfs deletes them, and eject and umount stop the daemon before they move .venvfs.
    watches: dict[int, tuple[frozenset[bytes], str]] = {}
    # The upper layer's own removal comes first in a recursive delete of .venvfs (uv 0.13.9: upper/,
    # then daemon.json, lock, daemon.lock, ...): nothing of venvfs removes it under a live mount.
    lock_names = lock_names | {b"upper"}
    for path, mask, names, what in (
            (state_dir, _IN_DELETE | _IN_MOVED_FROM | _IN_MOVE_SELF, lock_names, "its .venvfs is being removed"),
            # Not the venv's own move: a mount follows its directory.
            # CACHEDIR.TAG: uv writes it into every venv it makes, and only a removal deletes it.
            (venv_root, _IN_DELETE | _IN_MOVED_FROM, frozenset({b"pyvenv.cfg", b"CACHEDIR.TAG"}),
             "the venv is being removed")):
        wd = lib.inotify_add_watch(fd, os.fsencode(str(path)), mask)
        if wd >= 0:
            watches[wd] = (names, what)

    def run() -> None:
        while True:
            try:
                data = os.read(fd, 4096)
            except InterruptedError:
                continue
            except OSError:
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & _IN_IGNORED or wd not in watches:
                    continue
                wanted, what = watches[wd]
                if not mask & _IN_MOVE_SELF and name not in wanted:
                    continue
                on_removed(what)
                return

    threading.Thread(target=run, name="venvfs-removal-watch", daemon=True).start()
    return True


_MNT_DETACH = 2


def detach(mountpoint: Path, underneath: int | None, hook_name: str) -> bool:
    """Detach the mount now (lazily: open files keep being served until closed), after removing the
    automount hook from the directory underneath (``underneath``: a descriptor of it taken before
    mounting), so that a removal that listed site-packages through the mount finds it empty once the
    mount is gone. Returns whether the mount was detached."""
    if underneath is not None:
        with contextlib.suppress(OSError):
            os.unlink(hook_name, dir_fd=underneath)
    if os.geteuid() == 0:
        # umount2 directly: microseconds, against milliseconds for starting fusermount3, while the
        # remover walks on toward the mount point.
        lib = libc()
        if lib is not None and lib.umount2(os.fsencode(str(mountpoint)), _MNT_DETACH) == 0:
            return True
    tool = fusermount()
    if tool is None:
        return False
    proc = subprocess.run([tool, "-u", "-z", str(mountpoint)], stdin=subprocess.DEVNULL,
                          capture_output=True)
    return proc.returncode == 0
