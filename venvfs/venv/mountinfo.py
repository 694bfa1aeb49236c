"""A venv's mount seen from the venv layer: what is mounted on site-packages, which daemon serves
it, and the request that makes that daemon re-read the selection.

The venv layer needs these to refuse a change under a live mount, to report one (``status``) and to
make a changed selection (``select``) show in a running mount, all without knowing how a mount is
made. They are the client side of files in ``VENV/.venvfs/`` (``daemon.lock``, ``daemon.json``,
``drop-upper.json``) and of SIGHUP; the mount layer (``venvfs.mount.daemon``) is the other side: it
starts daemons, holds the lock, and reloads on the signal.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from venvfs.errors import MountError, VenvError, VenvfsError
from venvfs.fsutil import atomic_write_json, dead_connection, lock_holders, read_json
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

log = logging.getLogger(__name__)

MountState = Literal["mounted", "dead", "unmounted"]


def log_path(venv: Venv) -> Path:
    import platformdirs

    return Path(platformdirs.user_log_dir("venvfs")) / f"mount-{venv.root.name}-{Store._venv_id(venv.root)}.log"


def drop_path(venv: Venv) -> Path:
    return venv.state_dir / "drop-upper.json"


def lock_path(venv: Venv) -> Path:
    return venv.state_dir / "daemon.lock"


def info_path(venv: Venv) -> Path:
    return venv.state_dir / "daemon.json"


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo`` (read without asking any filesystem anything)."""

    mount_id: str
    device: str  # major:minor
    point: str
    fstype: str


def mounts() -> list[MountEntry]:
    """The mount table, in mount order (a later entry at a point lies on top of an earlier one)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5:
            found.append(MountEntry(fields[0], fields[2], _unescape(fields[4]), (right.split() or ["?"])[0]))
    return found


def topmost(mountpoint: Path) -> MountEntry | None:
    """The mount on top at ``mountpoint``, or None."""
    target = os.path.abspath(mountpoint)
    at = [m for m in mounts() if m.point == target]
    return at[-1] if at else None


def mounted_fstype(mountpoint: Path) -> str | None:
    """The filesystem type mounted at ``mountpoint`` (the topmost), or None."""
    entry = topmost(mountpoint)
    return entry.fstype if entry else None


def venvfs_mounts_below(root: Path) -> list[Path]:
    """Every venvfs mount point at or below ``root``, deepest first (the order to unmount in)."""
    prefix = os.path.abspath(root).rstrip("/") + "/"
    points = [Path(m.point) for m in mounts() if m.fstype == "fuse.venvfs" and (m.point + "/").startswith(prefix)]
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def daemon_pid(venv: Venv) -> int | None:
    """The pid of this venv's running daemon (it holds the daemon lock), else None."""
    path = lock_path(venv)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError:
        # Another user's venv (its lock files are its owner's alone): the kernel's lock table
        # still says whether a daemon holds it.
        if not lock_holders(path):
            return None
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return None
        finally:
            os.close(fd)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return int(read_json(info_path(venv))["pid"])
    return None


def mount_state(venv: Venv) -> MountState:
    mp = venv.site_packages
    fstype = mounted_fstype(mp)
    if fstype is None:
        return "unmounted"
    if not fstype.startswith("fuse"):
        raise MountError(f"{mp} has a {fstype} filesystem mounted on it, not venvfs")
    try:
        os.stat(mp)
    except OSError as e:
        if dead_connection(e):
            return "dead"
        raise
    return "mounted" if daemon_pid(venv) is not None else "dead"


def queue_drop_upper(venv: Venv, paths: Sequence[str]) -> None:
    """Name upper copies the store now serves; the daemon drops them at its next reload or start."""
    if paths:
        atomic_write_json(drop_path(venv), list(paths))


def reload(venv: Venv, *, store: Store | None = None, drop_upper: Sequence[str] | None = None,
           timeout: float = 60.0) -> bool:
    """Make a running daemon re-read the venv's selection; returns False if none runs.

    Called after the selection changed (``venvfs add/remove``, ``commit``); returns once the new
    view is live, so the caller's next file access sees it. Given the ``store``, the index of the
    new selection is built here first when the store lacks it (``view.cache_view``): not in the
    daemon, whose memory would keep the cost.
    """
    pid = daemon_pid(venv)
    if pid is None:
        return False
    if store is not None:
        prepare_view(venv, store)
    if drop_upper:
        atomic_write_json(drop_path(venv), list(drop_upper), durable=False)
    try:
        generation = int(read_json(info_path(venv)).get("generation", 0))
    except (OSError, ValueError):
        generation = 0
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    # A small selection change is live within a few ms: look often at first, then every 10 ms.
    pause = 0.001
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if int(read_json(info_path(venv)).get("generation", 0)) > generation:
                return True
        if daemon_pid(venv) is None:
            raise MountError(f"the daemon of {venv.root} exited during a reload; see {log_path(venv)}")
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
    raise MountError(f"the daemon of {venv.root} did not reload within {timeout:.0f}s")


def prepare_view(venv: Venv, store: Store, *, apart: bool = False) -> None:
    """Build the index of the selection a daemon of ``venv`` serves, if the store lacks a valid one
    (``view.cache_view``, which says what ``apart`` is for): before a daemon starts or reloads, in
    the process that asks for it."""
    from venvfs.venv.pending import leave_out_unconfirmed
    from venvfs.venv.view import cache_view

    try:
        state = venv.read_state()
        # The selection the daemon will serve (``daemon._confirmed``): what an ingest in progress
        # selected and an installer has removed since stays out of its view.
        leave_out_unconfirmed(venv, state)
        cache_view(venv, store, state, apart=apart)
    except (OSError, ValueError, VenvfsError) as e:
        # Only an optimisation: the daemon builds what is missing itself.
        log.info("could not index the selection of %s for its daemon: %s", venv.root, e)


def status(venv: Venv) -> dict[str, object]:
    state = mount_state(venv)
    info: dict[str, object] = {"venv": str(venv.root), "mountpoint": str(venv.site_packages), "state": state}
    if state == "mounted":
        info["pid"] = daemon_pid(venv)
        written: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            written = read_json(info_path(venv))
            # "no open": the kernel sends no request per file opened; "pyc links": store bytecode is
            # shown as symlinks into the store (see docs/mount.md).
            info["no_open"] = bool(written.get("no_open", False))
            info["pyc_links"] = bool(written.get("pyc_links", False))
        # The log the daemon writes, as it named it (it may run with other XDG directories than this
        # command); computing it here would import platformdirs into every `venvfs list`.
        log = written.get("log")
        info["log"] = log if isinstance(log, str) else str(log_path(venv))
    return info


def list_mounts(store: Store) -> list[dict[str, object]]:
    out = []
    for root in store.registered_venvs():
        try:
            venv = Venv.open(root)
            info = status(venv)
        except (VenvError, MountError, OSError):
            continue
        if info["state"] != "unmounted":
            out.append(info)
    return out
