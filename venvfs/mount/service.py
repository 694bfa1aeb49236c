"""The per-user mount service: one warm process that forks each mount's daemon.

A daemon started from scratch is a new interpreter that imports trio, pyfuse3 and venvfs's mount
layer (about a quarter of a second) before it builds a view that takes milliseconds. The service
imports all of that once and then, for each mount, forks a child that runs the same
``daemon.serve`` a spawned daemon runs. pyfuse3 serves one mount per process, so every mount stays
a process of its own; the child starts a new session at once, so killing the service (even with
SIGKILL) unmounts nothing, and a mount never depends on it after its start.

The service is an accelerator, never a single point of failure: ``request_mount`` returns None
whenever the service cannot be used (absent and not startable, stale, refused, a socket that is not
safe), and the caller then spawns the daemon as it always did.

Security: the socket lives in the user's runtime directory (``$XDG_RUNTIME_DIR/venvfs``, else a
``/tmp/runtime-UID`` that must be the user's own and 0700, as the XDG spec asks), is mode 0600, and
every connection's peer credentials (``SO_PEERCRED``) must carry the service's own uid: a socket's
mode is the kernel's first check, the uid the second, and no request from another user is served.
One service per user and store: its socket name carries the store's path hash.

Under systemd (``--systemd``, the user unit ``venvfs hook unit --install`` writes) the service
tells systemd it is ready once its socket listens (``Type=notify``), never exits for idleness, takes
the socket over from a service a command started before it, and, when a client runs a newer
venvfs from the same installation (an upgrade in place), exits with ``RESTART_EXIT`` so that systemd
starts the new code; a client of another installation is answered "stale" and mounts without it.

Given a ``runner`` (the CLI layer's ``thin.serve``; this layer never imports the CLI), the service
also runs whole commands: an ``op: run`` request carries the client's descriptors, and a forked child
becomes the command (docs/design.md, "The mount service").

Each forked daemon takes the title ``venvfs-mount SITE-PACKAGES`` (``/proc/PID/cmdline``, what
``ps`` and ``pkill -f`` read): a fork without exec would otherwise show the service's command line,
and ``pkill -f venvfs.cli.service`` would kill every mount with the service.

Fork safety: the service process has no threads (nothing it imports starts one, and it serves
connections one at a time from one loop), so the child inherits no lock held by a thread that does
not exist in it. The child writes the daemon's ready line straight into the client's connection,
so the service never waits for a mount to come up.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from venvfs.fsutil import importable_env, log_to_stderr
from venvfs.mount import serviceclient
from venvfs.mount.serviceclient import IDLE_ENV, MAX_REQUEST, connect, identity
from venvfs.store.warm import Warmer

log = logging.getLogger(__name__)

# The service's exit status when a client runs an upgraded venvfs from the service's own installation:
# the systemd unit restarts the service on it (RestartForceExitStatus=), whatever Restart= says.
RESTART_EXIT = 75  # EX_TEMPFAIL
TITLE = "venvfs-mount"
WARM_AFTER_S = 0.25  # quiet time after a request before the service learns the store again (warm.py)

# -- the service's side ------------------------------------------------------------------------------

def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _take_over(live: socket.socket, path: Path) -> bool:
    """Ask the live service on ``path`` to exit (a command started it before systemd started us), and
    wait until its socket no longer answers. Its mounts are unaffected: they never depend on it."""
    with live:
        with contextlib.suppress(OSError):
            live.sendall(json.dumps({"op": "handover", "identity": identity()}).encode() + b"\n")
            live.shutdown(socket.SHUT_WR)
        live.settimeout(5.0)
        try:
            answer = live.recv(100)
        except OSError:
            answer = b""
    if answer not in (b"bye\n", b"stale\n"):
        return False
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        again = connect(path)
        if again is None:
            return True
        again.close()
        time.sleep(0.02)
    return False


def _listen(path: Path, *, take_over: bool = False) -> socket.socket:
    """Bind ``path`` (replacing a dead service's socket, never a live one's, unless ``take_over``
    and it agrees to leave), mode 0600."""
    live = connect(path)
    if live is not None and not (take_over and _take_over(live, path)):
        live.close()
        raise SystemExit(f"a mount service already answers on {path}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # the socket is born 0600: no window in which others may connect
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(64)
    return sock


def _child(conn: socket.socket, request: dict[str, object]) -> int:  # pragma: no cover - forked child
    """Become the mount's daemon: a session of its own, the client's environment, output to the log."""
    from venvfs.mount import daemon

    _set_title(Path(str(request["venv"])))
    os.setsid()
    env = request.get("env")
    if isinstance(env, dict):
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
    # What the daemon starts (its ingest worker) must import this very venvfs, as a spawned daemon
    # does (daemon._spawn_process), also when it runs from a source tree the client found by its cwd.
    os.environ.update(importable_env(dict(os.environ)))
    null = os.open(os.devnull, os.O_RDWR)
    logfd = os.open(str(request["log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    fd = os.dup(conn.fileno())
    conn.close()
    os.closerange(3, fd)
    os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
    os.chdir("/")
    log_to_stderr()  # now the log file
    # The service reaps its children by ignoring SIGCHLD; inherited, that would make libfuse's
    # waitpid for fusermount3 fail (ECHILD), so the daemon gets the default back.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return daemon.serve(Path(str(request["venv"])), Path(str(request["store"])),
                        allow_other=bool(request.get("allow_other")), ready_fd=fd)


def _set_title(venv_root: Path) -> None:  # pragma: no cover - forked child
    from venvfs.venv.venv import Venv

    try:
        title = f"{TITLE} {Venv(venv_root).site_packages}"
    except Exception:  # the daemon reports a broken venv; the title only names it
        title = f"{TITLE} {venv_root}"
    set_title(title, short=TITLE)


def set_title(title: str, *, short: str | None = None) -> None:  # pragma: no cover - forked children
    """What ``ps`` shows for a process the service forked (its command line is the service's until
    then). Without setproctitle (it comes with venvfs[fuse]) only the ``short`` name (comm, 15
    bytes) can be set safely, argv's memory being the interpreter's; None leaves it as it is."""
    try:
        import setproctitle
    except ImportError:
        if short is not None:
            import ctypes

            pr_set_name = 15
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(pr_set_name, short.encode(), 0, 0, 0)
        return
    setproctitle.setproctitle(title)


# A command run in a fork of the service (``op: run``): the forked child gets the connection, the
# request and the client's descriptors, and never returns (``venvfs/cli/thin.py`` is the one runner).
Runner = Callable[[socket.socket, dict[str, object], list[int]], NoReturn]
MAX_FDS = 8


def _read_request(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    """One request: a JSON line, and the descriptors sent with it (``SCM_RIGHTS``; ``run`` only)."""
    data = b""
    fds: list[int] = []
    while b"\n" not in data and len(data) < MAX_REQUEST:
        chunk, got, flags, _ = socket.recv_fds(conn, 65536, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        fds += got
        if flags & socket.MSG_CTRUNC:
            _close(fds)
            raise ValueError("too many descriptors in a request")
        if not chunk:
            break
        data += chunk
    try:
        request = json.loads(data.partition(b"\n")[0].decode())
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
    except ValueError:
        _close(fds)
        raise
    return request, fds


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _handle(conn: socket.socket, mine: str, *, systemd: bool = False, runner: Runner | None = None) -> bool:
    """Serve one connection; False when this service should exit (it is stale, or hands over)."""
    if _peer_uid(conn) != os.getuid():
        log.warning("refused a connection from uid %d", _peer_uid(conn))
        conn.sendall(b"refused\n")
        return True
    conn.settimeout(5.0)
    request, fds = _read_request(conn)
    try:
        return _answer(conn, request, fds, mine, systemd=systemd, runner=runner)
    finally:
        _close(fds)  # the forked child has its own copies


def _answer(conn: socket.socket, request: dict[str, object], fds: list[int], mine: str, *, systemd: bool,
            runner: Runner | None) -> bool:
    if request.get("op") == "handover":
        if systemd:  # systemd's service stays; a second one under systemd is a misconfiguration
            conn.sendall(b"refused\n")
            return True
        log.info("exiting: the service under systemd takes over")
        conn.sendall(b"bye\n")
        return False
    theirs = str(request.get("identity"))
    if theirs != mine:
        conn.sendall(b"stale\n")
        if systemd and theirs.partition(":")[2] != mine.partition(":")[2]:
            # Another installation of venvfs: it mounts without the service; ours stays for its own.
            log.info("not serving a client that runs %s (this service runs %s)", theirs, mine)
            return True
        log.info("exiting: a client runs %s, this service %s", theirs, mine)
        if systemd:
            raise SystemExit(RESTART_EXIT)
        return False
    op = request.get("op")
    if op == "run" and runner is not None:
        child = _fork(lambda: runner(conn, request, fds))
        log.debug("command %s: pid %d", request.get("argv"), child)
        return True
    if op != "mount":
        conn.sendall(b"error: unknown request\n")
        return True
    child = _fork(lambda: _child(conn, request))
    log.info("mount of %s: daemon pid %d", request.get("venv"), child)
    return True


def mount_in_fork(request: dict[str, object], timeout: float) -> str:  # pragma: no cover - a worker
    """A mount for a command that runs in a fork of the service (``cli/thin.py``): that process forks
    the daemon itself, as the service would (``_child``), and reads its ready line from a socket pair.
    The service's own round trip (a connection, the client's environment as JSON both ways, a wait
    behind the service's other requests, one more fork of the service's larger process) is saved.
    The daemon starts a session of its own at once, so the command's exit orphans it harmlessly
    (it is re-parented, as a daemon the service forked would be once the service exits). The worker's
    one other thread (``thin._listen``, blocked reading the client's signal pipe) holds no lock the
    child could inherit taken."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with ours:
        with theirs:
            _fork(lambda: _child(theirs, request))
        return serviceclient.read_line(ours, timeout)


def _fork(body: Callable[[], int]) -> int:
    gc.freeze()  # what this request allocated too (the same reason as in serve_forever)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = body()
        finally:
            # Never back into the service's loop (nor its finally, which removes the socket).
            os._exit(code)
    return pid


def _learning(warmer: Warmer, work: Callable[[], None]) -> None:
    """Learning the store is only a shortcut for the commands: whatever goes wrong in it (a store being
    deleted under the service, a record that is not what it says) must not end the service."""
    try:
        work()
    except Exception:
        log.exception("learning the store failed; the service goes on without it")
        warmer.stop()


def _notify_ready() -> None:
    """sd_notify(READY=1): systemd's ``Type=notify`` start returns once the socket listens."""
    address = os.environ.pop("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket's name
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(address)
        s.sendall(b"READY=1")


def serve_forever(store_root: Path, path: Path, *, systemd: bool = False, runner: Runner | None = None) -> int:
    """Serve mounts (and, given a ``runner``, whole commands) on ``path`` until idle, stale or handed over."""
    # Everything a daemon imports, once, before the first fork (what a child imports is its own memory;
    # `python -X importtime -m venvfs.cli.service` shows the children's imports in their logs).
    import resource  # noqa: F401

    import platformdirs  # noqa: F401

    from venvfs.hooks import target  # noqa: F401
    from venvfs.mount import daemon, fuse, ingest, keeper, watch  # noqa: F401
    from venvfs.mount.loop import import_pyfuse3
    from venvfs.mount.overlay import Overlay  # noqa: F401
    from venvfs.venv import pending  # noqa: F401
    from venvfs.venv.upper import Upper  # noqa: F401
    from venvfs.venv.view import view_for  # noqa: F401

    with contextlib.suppress(ImportError):
        import_pyfuse3(None)
    with contextlib.suppress(ImportError):
        import setproctitle  # noqa: F401 - each fork sets its title (set_title): a dlopen per fork otherwise
    watch.libc()  # once here rather than in every forked daemon
    watch.tools(os.environ.get("PATH", os.defpath))  # the same, for the clients that share the service's PATH
    # A forked daemon shares these pages until either process writes to them, and a cyclic collection
    # writes to every object it visits (gc_refs in each header): in the child it copies the service's
    # heap into each mount (about 8 MB of unique memory per daemon, measured), in the service it splits
    # the pages of every live child. Frozen objects are never visited, and stay frozen: the service
    # allocates little per request, and what it does is mostly freed by reference counting.
    gc.collect()
    gc.freeze()
    mine = identity()
    # The service's commands fork their mounts' daemons themselves (mount_in_fork).
    serviceclient.in_service = (store_root, mount_in_fork, os.getpid())
    # Under systemd the service is wanted for the whole session, and a restart is systemd's to make.
    idle = float("inf") if systemd else float(os.environ.get(IDLE_ENV, "1800"))
    # Children are reaped as they exit; their exit status is in their own logs.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    listener = _listen(path, take_over=systemd)
    bound = os.stat(path).st_ino
    log.info("mount service for %s on %s (pid %d%s)", store_root, path, os.getpid(),
             ", under systemd" if systemd else "")
    _notify_ready()
    last = time.monotonic()
    warmer = Warmer(store_root)
    try:
        while True:
            _learning(warmer, warmer.refresh)
            # Learning the store (warm.py) only while no request waits (a step is one record), and not
            # while the last request's command likely still runs: on two cores it would take the CPU
            # from the command (and the client, and the mount) it is meant to speed up.
            wait = min(3600.0, max(1.0, idle / 10))
            if warmer.pending():
                wait = max(0.0, last + WARM_AFTER_S - time.monotonic())
            ready, _, _ = select.select([listener], [], [], wait)
            if not ready and warmer.pending() and time.monotonic() >= last + WARM_AFTER_S:
                _learning(warmer, warmer.step)
                continue
            if not ready:
                if time.monotonic() - last > idle:
                    log.info("exiting after %g s without a request", idle)
                    return 0
                continue
            last = time.monotonic()
            try:
                conn, _ = listener.accept()
            except OSError as e:
                if e.errno in (errno.EINTR, errno.ECONNABORTED):
                    continue
                raise
            with conn:
                try:
                    if not _handle(conn, mine, systemd=systemd, runner=runner):
                        return 0
                except (OSError, ValueError) as e:
                    log.warning("a request failed: %s", e)
    finally:
        # Only our own socket: a newer service may have bound the path since.
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == bound:
                path.unlink()
        listener.close()


if __name__ == "__main__":  # pragma: no cover - a unit written before the program moved to the CLI layer
    # `venvfs hook unit --install` now names venvfs.cli.service; a unit installed earlier still runs
    # this module, and would otherwise end at once (systemd counts exit 0 a success and leaves it).
    import runpy

    runpy.run_module("venvfs.cli.service", run_name="__main__", alter_sys=True)
