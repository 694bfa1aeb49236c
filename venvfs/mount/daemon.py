"""Mount lifecycle: start the FUSE daemon, wait until the mount answers, detect and clear dead mounts,
reload the view, unmount; and the fallback to materialized files where FUSE cannot be used.

One daemon per venv: ``venvfs mount`` holds the venv lock while it checks and starts, and the daemon
holds ``.venvfs/daemon.lock`` for as long as it runs (an flock, so it dies with the process). The
daemon's pid and reload generation are in ``.venvfs/daemon.json``. Where it can (``keeper.py``), the
process started is a keeper that mounts and forks the daemon, and forks another on the same FUSE
connection when one dies; it then holds the lock and is the ``pid``, the daemon is ``server``.

Signals to the daemon: SIGTERM/SIGINT unmount and exit; SIGHUP re-reads the venv's selection and
switches the view (``reload``), dropping upper copies named in ``.venvfs/drop-upper.json`` and what
it cached of objects the store's repair log (``STORE/repaired``) names since it last looked; SIGUSR1
writes the FUSE request counts since the last SIGUSR1 to ``.venvfs/fuse-stats.json`` (counted only
when the daemon started with ``VENVFS_FUSE_STATS`` set; see scripts/perf_mount.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from venvfs.errors import MountError, StateDamaged, VenvError, VenvfsError
from venvfs.fsutil import (
    atomic_write_json,
    crash_point,
    importable_env,
    log_to_stderr,
    open_lock,
    read_json,
    spawn_detached,
)
from venvfs.store.store import Store

# Re-exported: what is mounted is read in the venv layer, which must know it without the mount layer.
from venvfs.venv.mountinfo import MountState as MountState
from venvfs.venv.mountinfo import daemon_pid as daemon_pid
from venvfs.venv.mountinfo import drop_path, info_path, lock_path, prepare_view, venvfs_mounts_below
from venvfs.venv.mountinfo import list_mounts as list_mounts
from venvfs.venv.mountinfo import log_path as log_path
from venvfs.venv.mountinfo import mount_state as mount_state
from venvfs.venv.mountinfo import mounted_fstype as mounted_fstype
from venvfs.venv.mountinfo import queue_drop_upper as queue_drop_upper
from venvfs.venv.mountinfo import reload as reload
from venvfs.venv.mountinfo import status as status
from venvfs.venv.venv import Venv, VenvState

if TYPE_CHECKING:
    from venvfs.mount.keeper import Connection
    from venvfs.mount.loop import DirectLoop

log = logging.getLogger(__name__)

DISABLE_ENV = "VENVFS_DISABLE_FUSE"
_NOT_IMPORTABLE = "pyfuse3/trio are not importable"
READY_TIMEOUT = 60.0


@dataclass
class MountResult:
    venv: Path
    how: Literal["fuse", "already", "materialized"]
    message: str


# -- where things are ------------------------------------------------------------------------------

def _stats_path(venv: Venv) -> Path:
    return venv.state_dir / "fuse-stats.json"


# -- probing ---------------------------------------------------------------------------------------

def fuse_problem() -> str | None:
    """Why FUSE cannot be used here, in a few words; None when it can."""
    if os.environ.get(DISABLE_ENV):
        return f"disabled by {DISABLE_ENV}"
    if not sys.platform.startswith("linux"):
        return f"FUSE mounts are implemented for Linux only, not {sys.platform}"
    if not Path("/dev/fuse").exists():
        return "/dev/fuse does not exist"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        # libfuse opens /dev/fuse itself before any mount; fusermount3 (setuid) is only its way around
        # a missing CAP_SYS_ADMIN for mount(2), not around this. It fails with just
        # "fuse_session_mount failed" (the cause goes to the daemon's log).
        st = os.stat("/dev/fuse")
        import stat

        return (f"no read/write permission on /dev/fuse (mode {stat.filemode(st.st_mode)}, "
                f"owner {_owner(st.st_uid)}, group {_group(st.st_gid)}; it is usually 0666)")
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    # Found, not imported: importing trio and pyfuse3 costs ~0.15 s of every `venvfs mount`, and the daemon
    # imports them anyway and reports an import failure through the ready pipe (then we fall back).
    import importlib.util

    for module in ("pyfuse3", "trio"):
        if importlib.util.find_spec(module) is None:
            return f"{_NOT_IMPORTABLE} (no module named {module!r}); pip install 'venvfs[fuse]'"
    return None


def _owner(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)




def _fusermount_unmount(mp: Path) -> None:
    # -z (lazy): detach now even if files are open; they get ENOTCONN, the mount point is free.
    tool = shutil.which("fusermount3")
    cmd = [tool, "-u", "-z", str(mp)] if tool else ["umount", "-l", str(mp)]
    import subprocess

    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and mounted_fstype(mp) is not None:
        raise MountError(f"cannot unmount {mp}: {proc.stderr.strip() or proc.stdout.strip()}")


def _unmount_below(root: Path) -> bool:
    """Lazily unmount every venvfs mount at or below ``root``; its daemon exits once detached."""
    points = venvfs_mounts_below(root)
    for mp in points:
        _fusermount_unmount(mp)
    return bool(points)


def clear_dead_mount(venv: Venv) -> None:
    """A daemon that died left 'Transport endpoint is not connected' behind: unmount it."""
    pid = daemon_pid(venv)
    if pid is not None:
        _stop(venv, pid)
    mp = venv.site_packages
    if mounted_fstype(mp) is not None:
        log.info("clearing the dead mount on %s", mp)
        _fusermount_unmount(mp)


# -- the daemon process ------------------------------------------------------------------------------

def raise_fd_limit() -> None:
    """Lift the soft limit on open files to the hard one. The daemon holds an fd per open upper
    file and per file unlinked while still open, on behalf of every process using the venv: a
    user's shell limit (often 1024) is sized for one program, not for a filesystem serving many."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(venv_root: Path, store_root: Path, *, allow_other: bool = False, ready_fd: int | None = None,
          resume: dict[str, Any] | None = None) -> int:
    """Run the filesystem until unmounted or signalled (in the daemon process). ``resume``: the state
    of a keeper that replaced its program with this one (``Keeper.upgrade``), whose daemon still serves."""

    def ready(message: str) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, message.encode() + b"\n")
                os.close(ready_fd)
            ready_fd = None

    import importlib

    from venvfs.mount.loop import LOOP_ENV, DirectLoop, import_pyfuse3

    raise_fd_limit()
    use_trio = os.environ.get(LOOP_ENV) != "direct"
    direct = None if use_trio else DirectLoop()
    try:
        pyfuse3 = import_pyfuse3(direct)
        trio = importlib.import_module("trio") if use_trio else None  # untyped before trio 0.23
    except ImportError as e:  # e.g. pyfuse3 installed but libfuse3.so missing
        ready(f"error: {_NOT_IMPORTABLE} ({e}); pip install 'venvfs[fuse]'")
        return 3

    from venvfs.mount.keeper import keeper_problem

    venv = Venv(venv_root)
    if resume is not None:
        lock_fd = int(resume["lock_fd"])  # still locked: the lock went through the exec with the descriptor
    else:
        lock_fd = open_lock(lock_path(venv))
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ready("already: another daemon serves this venv")
            return 0
    try:
        serving = functools.partial(_serve_mounted, venv, store_root, allow_other=allow_other, pyfuse3=pyfuse3,
                                    trio=trio, direct=direct)
        problem = keeper_problem()
        if problem is None or resume is not None:
            restart_argv = [sys.executable, "-m", "venvfs.mount.daemon", "--venv", str(venv.root), "--store",
                            str(store_root), *(["--allow-other"] if allow_other else [])]
            return _keep(venv, allow_other=allow_other, ready=ready, serving=serving, lock_fd=lock_fd,
                         restart_argv=restart_argv, resume=resume)
        log.info("no keeper for this mount (%s): it ends with this process", problem)
        return serving(ready=ready, conn=None)
    finally:
        os.close(lock_fd)


def _keep(venv: Venv, *, allow_other: bool, ready: Callable[[str], None], serving: Callable[..., int],
          lock_fd: int, restart_argv: list[str], resume: dict[str, Any] | None) -> int:
    """Mount, then serve through a keeper that restarts a daemon that dies (keeper.py); or, with
    ``resume``, go on keeping the mount a keeper of an older venvfs handed over."""
    from venvfs.mount.fuse import mount_options
    from venvfs.mount.keeper import Keeper
    from venvfs.mount.watch import Watcher

    mountpoint = venv.site_packages

    def serve_child(conn: Connection, ready_w: int) -> int:
        def child_ready(message: str) -> None:
            with contextlib.suppress(OSError):
                os.write(ready_w, message.encode() + b"\n")
                os.close(ready_w)

        return int(serving(ready=child_ready, conn=conn))

    if resume is not None:
        watcher = Watcher.adopt(int(resume["watcher_fd"]), resume.get("watcher_pid"))
        keeper = Keeper(mountpoint, serve_child, ready, watcher_pid=watcher.pid)
        keeper.resume(resume)
    else:
        # Unmounts the mount if the keeper and every daemon die without doing so (see watch.py).
        watcher = Watcher(mountpoint, lock_path(venv))
        keeper = Keeper(mountpoint, serve_child, ready, watcher_pid=watcher.pid)
        try:
            keeper.mount(mount_options(allow_other=allow_other))
        except (MountError, OSError) as e:
            watcher.unmounted()
            ready(f"error: {e}")
            return 3
        watcher.mounted(mountpoint)
    # What an upgrade carries over the exec (Keeper.upgrade).
    keeper.upgrade_argv = restart_argv
    keeper.upgrade_refused = lambda why: atomic_write_json(_refusal_path(venv), {"keeper": os.getpid(), "why": why})
    keeper.carried = {"lock_fd": lock_fd, "watcher_fd": watcher.fd, "watcher_pid": watcher.pid}
    try:
        return keeper.run()
    finally:
        watcher.unmounted()
        log.info("unmounted %s", mountpoint)


def _serve_mounted(venv: Venv, store_root: Path, *, allow_other: bool, ready: Callable[[str], None],
                   conn: Connection | None, pyfuse3: Any, trio: Any, direct: DirectLoop | None) -> int:
    """Mount (or, with ``conn``, take over the keeper's connection) and serve until unmounted or signalled."""
    from venvfs.hooks.target import PTH_NAME
    from venvfs.mount import serviceclient
    from venvfs.mount.fuse import STATS_ENV, Invalidator, Operations, mount_options, no_open_available, pyc_links_wanted
    from venvfs.mount.overlay import InodeJournal, Overlay
    from venvfs.mount.serviceclient import identity
    from venvfs.mount.watch import Watcher, detach, watch_removal
    from venvfs.store.repairlog import repaired_entries
    from venvfs.venv.upper import Upper
    from venvfs.venv.view import view_for
    try:
        store = Store.open(store_root, create=False)
        state = _confirmed(venv, venv.read_state())
        started = time.monotonic()
        view = view_for(venv, store, state)
        upper = Upper(venv.upper_dir, venv.state_dir / "work")
        upper.clean_work()
        # A mount a keeper holds may outlive this daemon: the next one must know the inode numbers.
        journal = InodeJournal(venv.state_dir / "inodes.journal", fresh=conn.restarts == 0) if conn else None
        overlay = Overlay(view, upper, store, no_open=no_open_available(),
                          pyc_links=pyc_links_wanted(allow_other=allow_other), journal=journal)
        if conn is not None and conn.restarts:
            overlay.resent.restarted()
        # Modes arrive with the caller's umask applied by the kernel; ours must not apply twice.
        os.umask(0)
        invalidator = Invalidator()
        ops = Operations(overlay, invalidator)
        counts = ops.count_requests() if os.environ.get(STATS_ENV) else None
        mountpoint = venv.site_packages
        # Unmounts the mount if this process dies without doing so (see venvfs/mount/watch.py); a
        # keeper has its own, which a dead daemon does not trigger.
        watcher = Watcher(mountpoint, lock_path(venv)) if conn is None else None
        # The directory the mount will cover, reachable once covered (see watch.detach).
        underneath: int | None = (conn.underneath if conn is not None else
                                  os.open(mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        detached = False
        if conn is not None and conn.restarts:
            crash_point("daemon:restarted")  # every later daemon dies at once: the keeper must give up
        try:
            # libfuse reads "/dev/fd/N" as "serve this descriptor, already mounted" (fuse_session_mount).
            pyfuse3.init(ops, f"/dev/fd/{conn.fd}" if conn else str(mountpoint),
                         mount_options(allow_other=allow_other))
            if conn is not None:
                pyfuse3.replay_init(conn.init)
        except Exception as e:
            if watcher is not None:
                watcher.unmounted()
            ready(f"error: mounting {mountpoint} failed ({e})")
            invalidator.close()
            return 3
        if watcher is not None:
            watcher.mounted(mountpoint)

        def removed(why: str) -> None:
            # Detached at once from this thread, not through the loop: the remover is walking toward
            # the mount point. The loop serves what is still open and ends when the kernel lets go.
            nonlocal detached
            detached = detach(mountpoint, underneath, PTH_NAME)
            log.info("the venv is being removed under the mount (%s): %s", why,
                     "detached the mount" if detached else "could not detach the mount")

        watch_removal(venv.root, venv.state_dir,
                      frozenset({os.fsencode(lock_path(venv).name), b"lock"}), removed)  # Venv.locked's file
        log.info("mounted %s (%d dists, view built in %.3fs, %s, %s loop)", mountpoint, len(state.selection),
                 time.monotonic() - started,
                 "no-open mode" if overlay.no_open else "an OPEN per file: this pyfuse3 lacks venvfs's patch",
                 "trio" if direct is None else "direct")
        generation = 0
        if conn is not None and conn.restarts:
            # `venvfs add` waits for a generation above the one it saw; this daemon read the state afresh.
            with contextlib.suppress(OSError, ValueError):
                generation = int(read_json(info_path(venv)).get("generation", 0)) + 1
        scheduler = None
        from venvfs.mount.ingest import IngestScheduler, auto_ingest_enabled

        if auto_ingest_enabled():
            # Completed installs go into the store by themselves, from a worker process (ingest.py).
            scheduler = IngestScheduler(venv, store.root, overlay.activity)
        # Repairs before this daemon started left nothing in its caches.
        repairs_seen = repaired_entries(store.root)

        watcher_pid = conn.watcher_pid if conn else watcher.pid if watcher else None

        def write_info(generation: int = generation) -> None:
            # "pid" is what signals go to (the keeper passes them on); "server" the process serving.
            # A killed keeper leaves its daemon serving, and the one to signal (keeper._hup_when_orphaned).
            keeper = conn.keeper_pid if conn is not None and os.getppid() == conn.keeper_pid else None
            atomic_write_json(info_path(venv), {"pid": keeper or os.getpid(),
                                                 "server": os.getpid(), "mountpoint": str(mountpoint),
                                                 "generation": generation, "log": str(log_path(venv)),
                                                 "no_open": overlay.no_open, "pyc_links": overlay.pyc_links,
                                                 "watcher": watcher_pid,
                                                 "restarts": conn.restarts if conn else 0,
                                                 # The mount service this daemon is a fork of, if any.
                                                 "service": serviceclient.in_service[2]
                                                 if serviceclient.in_service else None,
                                                 "venvfs": identity()},
                              durable=False)

        def do_reload() -> None:
            nonlocal generation
            try:
                new_state = _confirmed(venv, venv.read_state())
                overlay.replace_view(view_for(venv, store, new_state))
                drop = drop_path(venv)
                if drop.exists():
                    items = read_json(drop)
                    begun = time.monotonic()
                    dropped = overlay.drop_upper([p if isinstance(p, list) else str(p) for p in items])
                    drop.unlink()
                    log.info("dropped %d upper copies now served by the store (%.3fs)", dropped,
                             time.monotonic() - begun)
                new_repairs = repaired_entries(store.root) - repairs_seen
                if new_repairs:
                    repairs_seen.update(new_repairs)
                    repaired = {line.split(" ")[0] for line in new_repairs}
                    files = overlay.forget_objects(repaired)
                    log.info("%d store object(s) repaired: %d file(s) will be read again from the store",
                             len(repaired), files)
                ops.flush_invalidations()
                log.info("reloaded the view: %d dists", len(new_state.selection))
            except Exception:
                log.exception("reload failed; the previous view stays")
            generation += 1
            # Published once the kernel has been told (the invalidations run on their own thread, in
            # order): `venvfs add` returns when it sees the new generation, and what its caller lists
            # next must be the new view, not a listing the kernel still caches.
            invalidator.after(functools.partial(write_info, generation))

        def on_signal(signum: int) -> None:
            if signum == signal.SIGHUP:
                do_reload()
            elif signum == signal.SIGUSR1:
                # Request counts since the last SIGUSR1 (only kept with VENVFS_FUSE_STATS set).
                atomic_write_json(_stats_path(venv), dict(counts or {}), durable=False)
                if counts is not None:
                    counts.clear()
            else:
                log.info("signal %d: unmounting", signum)
                pyfuse3.terminate()

        async def run() -> None:
            assert trio is not None
            async with contextlib.AsyncExitStack() as stack:
                nursery = await stack.enter_async_context(trio.open_nursery())
                signals = stack.enter_context(trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                                                        signal.SIGUSR1))

                async def fuse_main() -> None:
                    await pyfuse3.main()
                    nursery.cancel_scope.cancel()

                async def trim_when_idle() -> None:
                    seen = ops.requests
                    while True:
                        await trio.sleep(IDLE_TRIM_S)
                        if ops.requests == seen and ops.untrimmed:
                            ops.trim()
                        seen = ops.requests

                nursery.start_soon(fuse_main)
                nursery.start_soon(trim_when_idle)
                write_info()
                if drop_path(venv).exists():
                    do_reload()  # a commit killed before its reload queued upper copies to drop
                if scheduler is not None:
                    scheduler.start()
                ready("ok")
                async for signum in signals:
                    on_signal(signum)

        try:
            if direct is None:
                assert trio is not None
                trio.run(run)
            else:
                write_info()
                if drop_path(venv).exists():
                    do_reload()
                if scheduler is not None:
                    scheduler.start()
                direct.run(pyfuse3, on_signal, ready)
        finally:
            if scheduler is not None:
                scheduler.stop()
            # Lazy unmount inside libfuse: also succeeds with files still open. Not once detached: the
            # mount point may already hold another mount (a venv made again where this one was). Not
            # a keeper's mount either: the keeper unmounts it (libfuse did not mount it).
            pyfuse3.close(unmount=not detached and conn is None)
            if watcher is not None:
                watcher.unmounted()
            if underneath is not None and conn is None:
                os.close(underneath)
            invalidator.close()
            upper.close()
            if journal is not None:
                journal.close()
            if conn is None:
                log.info("unmounted %s", mountpoint)
        return 0
    except Exception as e:
        log.exception("daemon failed")
        ready(f"error: {e}")
        return 1


# A daemon that served requests and then none for this long gives freed heap pages back (fuse.TRIM_EVERY).
IDLE_TRIM_S = 1.0


def _confirmed(venv: Venv, state: VenvState) -> VenvState:
    """``state`` less what an ingest in progress selected and an installer has removed since
    (``venv.pending.unconfirmed``): checked here, on the request loop, so no request sees it."""
    from venvfs.venv.pending import leave_out_unconfirmed

    gone = leave_out_unconfirmed(venv, state)
    if gone:
        log.info("left out of the view, changed since its ingest read it: %s", ", ".join(sorted(gone)))
    return state


def _spawn(venv: Venv, store: Store, *, allow_other: bool) -> None:
    """Start the daemon, forked by the user's mount service (``mount/service.py``) or, where that
    cannot be used, as a new detached process, and wait until it is ready."""
    from venvfs.mount import serviceclient as service

    logfile = log_path(venv)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    message = service.request_mount(venv.root, store.root, allow_other=allow_other, logfile=logfile,
                                    timeout=READY_TIMEOUT)
    if message is None:
        message = _spawn_process(venv, store, logfile, allow_other=allow_other)
    if message == "ok" or message.startswith("already"):
        return
    if not message:
        message = f"the daemon exited without a word; see {logfile}"
    raise MountError(message.removeprefix("error: ") + _libfuse_cause(logfile))


def _spawn_process(venv: Venv, store: Store, logfile: Path, *, allow_other: bool) -> str:
    """Start the daemon detached (double fork: no zombie, no controlling terminal); its ready line."""
    r, w = os.pipe()
    argv = [sys.executable, "-m", "venvfs.mount.daemon", "--venv", str(venv.root), "--store", str(store.root),
            "--ready-fd", str(w), "--log", str(logfile)]
    if allow_other:
        argv.append("--allow-other")
    try:
        spawn_detached(argv, importable_env(dict(os.environ)), logfile, keep_fd=w)
    finally:
        os.close(w)
    try:
        return _read_ready(r, READY_TIMEOUT)
    finally:
        os.close(r)


def _libfuse_cause(logfile: Path) -> str:
    """libfuse writes why a mount failed ("fuse: failed to open /dev/fuse: ...", "fusermount3: ...")
    to the daemon's stderr, our log, and tells pyfuse3 only "fuse_session_mount failed"."""
    try:
        with open(logfile, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith(("fuse:", "fusermount3:", "fusermount:")):
            return f": {line.strip()}"
    return ""


def _read_ready(fd: int, timeout: float) -> str:
    import select

    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return "error: the daemon did not answer within a minute"
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _stop(venv: Venv, pid: int, *, timeout: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while daemon_pid(venv) is not None:
        if time.monotonic() > deadline:
            log.warning("daemon %d did not stop on SIGTERM; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            break
        time.sleep(0.02)


def _wait_answers(mp: Path, venv: Venv) -> None:
    root_dev = os.stat(venv.root).st_dev
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError):
            if os.stat(mp).st_dev != root_dev:
                # Not for the answer alone (the stat got one): a listing makes the kernel treat the root's
                # atime as stale, so the next stat of site-packages asks the daemon again, and a dead
                # mount fails it with ENOTCONN. The activation hook's `[ ! -d site-packages ]` and
                # `hook status` need that: the root's attributes are otherwise cached for good.
                os.listdir(mp)
                return
        if time.monotonic() > deadline:
            raise MountError(f"{mp} does not answer after mounting")
        time.sleep(0.01)


# -- what commands call ----------------------------------------------------------------------------

def _fallback(venv: Venv, store: Store, reason: str) -> MountResult:
    from venvfs.venv import layout

    state = venv.read_state()
    if state.layout == "mounted":
        layout.to_materialized(venv, store, state)
    # Within the fallback's one line: where hardlinks were the only choice, an in-place write reaches the store.
    exposed = (" (hardlinks of store objects: writing one in place, as root or after chmod +w, changes it for "
               "every venv)" if state.link_mode == "hardlink" else "")
    return MountResult(venv.root, "materialized",
                       f"{reason}: {venv.root} keeps real files in site-packages instead of a FUSE mount{exposed}")


def _take_in(venv: Venv, store: Store, state: VenvState) -> None:
    """What an installer wrote below the mount point while it was unmounted, which the mount would
    hide, into the upper layer (venvfs/venv/takein.py); said in one line."""
    from venvfs.venv import takein

    took = takein.take_in(venv, store, state).message
    if took:
        log.warning("%s: %s", venv.root, took)


def mount(path: Path, store: Store, *, allow_other: bool = False, foreground: bool = False,
          mode: Literal["auto", "fuse", "materialize"] = "auto", hooks: bool | None = None) -> MountResult:
    """Serve ``path``'s site-packages from the store; idempotent. Falls back to materialized files
    where FUSE is unusable (unless ``mode="fuse"``). ``hooks`` turns the automount hooks on or off
    (remembered in the venv's state); None keeps the venv's choice."""
    from venvfs.venv import automount, eject, layout

    # Before anything changes: a shared store that is down is one clear line (exit 5), not a mount
    # whose every import fails.
    store.check_lowers()
    venv = Venv.open(path)
    with venv.locked(wait=True):
        if not venv.is_managed:
            from venvfs.venv.adopt import adopt

            adopt(venv, store, already_locked=True)
        state = venv.read_state()
        if Path(state.store) != store.root:
            raise VenvError(f"{venv.root} uses the store {state.store}, not {store.root}")
        abandoned = eject.abandon_eject(venv, state)  # mounting is keeping venvfs
        if abandoned:
            log.warning("%s", abandoned)
        if hooks is not None and hooks != state.hooks:
            state.hooks = hooks
            venv.write_state(state)
        problem = "--mode materialize was given" if mode == "materialize" else fuse_problem()
        # Looked at whatever this process can do: a venv another venvfs mounted (one with pyfuse3,
        # or a user who may open /dev/fuse) is served by that mount, and falling back here would
        # take in and materialize files through it, and its ingest would deselect them all.
        current = mount_state(venv)
        if problem is not None and mode != "materialize" and current == "mounted":
            automount.install(venv)
            return MountResult(venv.root, "already", f"{venv.site_packages} is already mounted")
        if problem is not None:
            if mode == "fuse":
                raise MountError(f"cannot mount {venv.root}: {problem}")
            if current != "unmounted":
                _unmount_locked(venv)
            layout.resume(venv, store, state)
            if state.layout == "mounted":
                _take_in(venv, store, state)  # before real files are placed around it
            result = _fallback(venv, store, problem)
            automount.install(venv)  # materialized: removes the .pth, so activation stops calling mount
            return result
        if current == "mounted":
            layout.resume(venv, store, state)  # only stale markers can be left while mounted
            # Puts the activation blocks back after a tool recreated them; the .pth is under the mount.
            automount.install(venv)
            return MountResult(venv.root, "already", f"{venv.site_packages} is already mounted")
        if current == "dead":
            clear_dead_mount(venv)
        # A switch that a killed command left half done (its markers) is finished before mounting.
        layout.resume(venv, store, state)
        if state.layout == "materialized":
            layout.to_mounted(venv, store, state)
        _take_in(venv, store, state)
        # Before the mount covers site-packages: the .pth hook is written in the directory underneath.
        automount.install(venv)
        if not foreground:
            # A daemon whose selection has no valid index builds it (a new selection, or bytecode
            # compiled since the index was written). Checked here (~0.3 ms when there is one) and
            # built in a child: this process forks the daemon, or the service does (view.cache_view).
            prepare_view(venv, store, apart=True)
            try:
                _spawn(venv, store, allow_other=allow_other)
            except MountError as e:
                if mode == "fuse":
                    raise
                result = _fallback(venv, store, f"FUSE mount failed ({e})")
                automount.install(venv)
                return result
            _wait_answers(venv.site_packages, venv)
            return MountResult(venv.root, "fuse", f"mounted {venv.site_packages} (log: {log_path(venv)})")
    code = serve(venv.root, store.root, allow_other=allow_other)
    if code != 0:
        raise MountError(f"the daemon exited with {code}")
    return MountResult(venv.root, "fuse", "unmounted")


def _unmount_locked(venv: Venv) -> bool:
    pid = daemon_pid(venv)
    if pid is not None:
        _stop(venv, pid)
    if mounted_fstype(venv.site_packages) is not None:
        _fusermount_unmount(venv.site_packages)
        return True
    return pid is not None


def unmount(venv: Venv) -> bool:
    """Unmount ``venv`` for a caller that already holds the venv lock; True if something was mounted."""
    return _unmount_locked(venv)


def umount(path: Path, store: Store | None = None, *, materialize: bool = False) -> bool:
    """Unmount ``path``'s site-packages (also with files open); True if something was mounted.
    With ``materialize`` the venv returns to the materialized layout (real files)."""
    try:
        venv = Venv.open(path)
    except VenvError:
        if materialize:
            raise
        # No venv any more (`rm -rf` of a mounted venv removes pyvenv.cfg and the upper layer, and
        # leaves the mount behind, busy): still unmount every venvfs mount below ``path``.
        return _unmount_below(Path(path))
    with venv.locked(wait=True):
        if materialize and venv.is_managed:
            state = venv.read_state()
            if state.layout == "mounted":
                from venvfs.venv.materialize import check_selection

                # Before the unmount: a selection that cannot be placed leaves the venv mounted.
                store = store or Store.open(Path(state.store), create=False)
                check_selection(venv, store, state)
        was = _unmount_locked(venv)
        if venv.is_managed:
            from venvfs.venv import automount, layout

            try:
                state = venv.read_state()
            except StateDamaged:
                return was  # unmounted all the same; `venvfs mount` restores the state
            try:
                layout.resume(venv, store, state)
            except (VenvfsError, OSError) as e:
                if materialize:
                    raise
                # Unmounted all the same: finishing a half-done change needs the venv's store, and
                # the next command that reaches it finishes it (`venvfs status` says so meanwhile).
                log.warning("%s: unmounted; an interrupted change could not be finished yet (%s)", venv.root, e)
                return was
            if materialize and state.layout == "mounted":
                layout.to_materialized(venv, store or Store.open(Path(state.store), create=False), state)
            # Unmounted in the mounted layout, the .pth must be visible again for the next start.
            automount.install(venv)
    return was


def _refusal_path(venv: Venv) -> Path:
    """Where a keeper says why it refused an upgrade (``Keeper.upgrade``), for ``restart`` to raise."""
    return venv.state_dir / "restart-refused.json"


def restart(venv: Venv, *, timeout: float = 60.0) -> dict[str, object] | None:
    """Have the mount's keeper run the venvfs now installed and start that venvfs's daemon on the same
    connection (``keeper.Keeper.upgrade``); returns the new ``daemon.json``, None if not mounted."""
    pid = daemon_pid(venv)
    if pid is None:
        return None
    before = read_json(info_path(venv))
    if before.get("server") in (None, before.get("pid")):
        raise MountError(f"the mount of {venv.root} has no keeper (see {log_path(venv)} for why): "
                         f"`venvfs umount` and `venvfs mount` it to run the venvfs now installed")
    refusal = _refusal_path(venv)
    refusal.unlink(missing_ok=True)  # an earlier restart's: this one's answer is the next
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            now = read_json(info_path(venv))
            if now.get("server") != before.get("server") and now.get("restarts", 0) > before.get("restarts", 0):
                return dict(now)
        with contextlib.suppress(FileNotFoundError, ValueError):
            why = str(read_json(refusal).get("why", "the keeper refused the upgrade"))
            refusal.unlink(missing_ok=True)
            raise MountError(f"{why}; the mount of {venv.root} serves on with venvfs {before.get('venvfs')} "
                             f"(see {log_path(venv)})")
        if daemon_pid(venv) is None:
            raise MountError(f"the mount of {venv.root} ended during the restart; see {log_path(venv)}")
        time.sleep(0.02)
    raise MountError(f"the daemon of {venv.root} was not replaced within {timeout:.0f}s; see {log_path(venv)}")


def invalidate_repaired(store: Store) -> list[str]:
    """Make every running daemon of ``store``'s venvs drop what it cached of repaired objects (the
    store has logged them in ``STORE/repaired``); returns the venvs told. A daemon that cannot be
    reached is logged, not fatal: the repair itself is done, and its next start reads fresh inodes."""
    told = []
    for info in list_mounts(store):
        if info["state"] != "mounted":
            continue
        venv = Venv(Path(str(info["venv"])))
        try:
            if reload(venv):
                told.append(str(venv.root))
        except (MountError, OSError) as e:
            log.warning("could not tell the mount of %s about repaired objects (%s); remount it", venv.root, e)
    return told


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m venvfs.mount.daemon")
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--allow-other", action="store_true")
    parser.add_argument("--resume", help=argparse.SUPPRESS)  # a keeper's state, from Keeper.upgrade
    args = parser.parse_args(argv)
    log_to_stderr()
    resume = json.loads(args.resume) if args.resume else None
    return serve(args.venv, args.store, allow_other=args.allow_other, ready_fd=args.ready_fd, resume=resume)


if __name__ == "__main__":
    sys.exit(_main())
