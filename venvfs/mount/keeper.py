"""The keeper: the process that holds a mount's FUSE connection, so the mount outlives its daemon.

The kernel keeps a FUSE connection for as long as any process holds its ``/dev/fuse`` descriptor.
The keeper mounts (``fusermount3`` hands the descriptor back over a unix socket, ``_FUSE_COMMFD``,
as libfuse itself does as a normal user; root gets the same from it), reads the kernel's one
``FUSE_INIT`` request, and forks the daemon that serves the mount (``daemon.serve_connection``): libfuse
is given ``/dev/fd/N`` as the mount point, which means "serve this descriptor", and the recorded
``FUSE_INIT`` (``pyfuse3.replay_init``, venvfs's pyfuse3 patch), because libfuse answers EIO to every
request before one. When the daemon dies unexpectedly (a bug, the OOM killer, ``kill -9``) the keeper

1. writes ``FUSE_NOTIFY_RESEND`` to the descriptor (Linux 6.9+): the requests the dead daemon had
   read and not answered go back into the queue, with the same ids;
2. forks a new daemon at once, which serves them. Inode numbers and file handles mean what they
   meant (``overlay/journal.py``); requests the dead daemon had carried out are answered as done
   (``overlay/resend.py``).

The forked daemon shares the keeper's open file description of ``/dev/fuse``: the requests a daemon
has read sit on that description's list, which the kernel would end with ECONNABORTED if the last
descriptor of it closed, and which RESEND puts back instead.

The keeper holds the daemon lock and is the pid in ``daemon.json`` (``server`` names the daemon):
SIGTERM/SIGINT stop the daemon and unmount; SIGHUP and SIGUSR1 are passed on. It ends once the
connection ends (an unmount by anyone, also mid-restart: the descriptor then polls POLLERR), and
never keeps a dead mount alive: a daemon that cannot start, or that dies more than twenty times
within ten seconds, makes it unmount and exit. The shell watcher (``watch.py``) stays, started by the keeper:
its pipe is shared with the daemons, so only the end of the keeper and every daemon together
(``kill -9`` of both) unmounts through it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from venvfs.errors import MountError
from venvfs.mount.watch import fusermount

log = logging.getLogger(__name__)

KEEPER_ENV = "VENVFS_KEEPER"  # "0": no keeper (the daemon mounts itself; its death ends the mount)
FUSE_INIT = 26
FUSE_NOTIFY_RESEND = 7
_IN_HEADER = struct.Struct("<IIQQIIII")  # fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, pad
_OUT_HEADER = struct.Struct("<IiQ")  # fuse_out_header: len, error (the notify code when unique is 0), unique
# A daemon that dies this often this fast is not helped by another start (a request that kills every
# daemon would be resent to each; a restart takes ~25 ms, so a loop reaches this in about half a second).
CRASH_WINDOW = 10.0
CRASHES_ALLOWED = 20
STOP_TIMEOUT = 10.0
# Run by the interpreter an upgrade would exec, before it does: every module of the venvfs now installed
# that a daemon may load must import (some load only once it serves), and the FUSE libraries too. Once
# exec'd, the old program is gone: a new program that fails then leaves the daemon without its keeper,
# and a daemon that cannot start would cost the mount. Refused before the exec, nothing changes.
_UPGRADE_CHECK = """
import importlib, os, pathlib, venvfs
root = pathlib.Path(venvfs.__file__).parent
for sub in ("mount", "store", "venv", "hooks"):
    for path in sorted((root / sub).rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] != "__main__":
            importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
import pyfuse3
if not getattr(pyfuse3, "REPLAY_INIT", False):
    raise SystemExit("its pyfuse3 lacks venvfs's patch (scripts/build-pyfuse3)")
if os.environ.get({loop_env!r}) != "direct":
    import trio
"""


@dataclass
class Connection:
    """What a daemon forked by the keeper serves: the descriptor, the recorded FUSE_INIT, the
    directory below the mount point (for ``watch.detach``), and which start this is (0: the mount's first)."""

    fd: int
    init: bytes
    underneath: int
    keeper_pid: int
    watcher_pid: int | None
    restarts: int


def keeper_problem() -> str | None:
    """Why this daemon cannot have a keeper, or None."""
    if os.environ.get(KEEPER_ENV) == "0":
        return f"turned off by {KEEPER_ENV}=0"
    try:
        import pyfuse3
    except ImportError as e:
        return str(e)
    if not getattr(pyfuse3, "REPLAY_INIT", False):
        return "this pyfuse3 lacks venvfs's patch (scripts/build-pyfuse3)"
    if not hasattr(os, "pidfd_open"):
        return "no pidfd_open"
    if fusermount() is None:
        return "fusermount3 is not installed"
    return None


def open_mount(mountpoint: Path, options: Collection[str]) -> int:
    """Mount a FUSE connection at ``mountpoint`` and return its descriptor (``fusermount3``
    passes it back over a socket, ``_FUSE_COMMFD``)."""
    tool = fusermount()
    if tool is None:
        raise MountError("fusermount3 is not installed")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        proc = subprocess.run([tool, "-o", ",".join(sorted(options)), "--", str(mountpoint)], env=env,
                              pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=False)
        theirs.close()
        if proc.returncode != 0:
            raise MountError(f"mounting {mountpoint} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1, socket.MSG_CMSG_CLOEXEC)
    if not fds:
        raise MountError(f"mounting {mountpoint}: {tool} passed no descriptor back")
    return fds[0]


def read_init(fd: int, timeout: float = 10.0) -> bytes:
    """The kernel's FUSE_INIT, the first request of every new connection."""
    readable, _, _ = select.select([fd], [], [], timeout)
    if not readable:
        raise MountError("the kernel sent no FUSE_INIT")
    data = os.read(fd, 1 << 21)  # /dev/fuse refuses reads into buffers smaller than the largest request
    if len(data) < _IN_HEADER.size or _IN_HEADER.unpack_from(data)[1] != FUSE_INIT:
        raise MountError(f"the first request on the connection is not FUSE_INIT ({data[:16]!r})")
    return data


def notify_resend(fd: int) -> bool:
    """Put the requests a dead daemon had read back into the queue; False where the kernel cannot."""
    try:
        os.write(fd, _OUT_HEADER.pack(_OUT_HEADER.size, FUSE_NOTIFY_RESEND, 0))
    except OSError as e:
        # EINVAL before Linux 6.9: those requests stay unanswered until the mount ends (docs/mount.md).
        log.warning("FUSE_NOTIFY_RESEND failed (%s): the calls the dead daemon had taken wait until unmount",
                    os.strerror(e.errno or errno.EINVAL))
        return False
    return True


_PR_SET_PDEATHSIG = 1


def _failure(stderr: str, code: int) -> str:
    """One line for a Python that failed: its exception, and where (the last frame of the traceback;
    a SyntaxError names the file it could not compile)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return f"exit status {code}"
    where = next((line.strip() for line in reversed(lines) if line.lstrip().startswith('File "')), "")
    return f"{lines[-1].strip()} ({where})" if where else lines[-1].strip()


def _hup_when_orphaned() -> None:
    """A daemon whose keeper is killed goes on serving (its programs see nothing) and from then on
    takes the signals itself: the kernel sends it SIGHUP, a reload, which rewrites ``daemon.json``
    with its own pid (``daemon.write_info`` checks its parent)."""
    from venvfs.mount.watch import libc as load_libc

    libc = load_libc()
    if libc is not None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)


def _connection_gone(fd: int) -> bool:
    p = select.poll()
    p.register(fd, 0)  # POLLERR/POLLHUP are always reported: the connection was aborted or unmounted
    return any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _fd, ev in p.poll(0))


class Keeper:
    """Runs in the process that would have been the daemon; see the module docstring."""

    def __init__(self, mountpoint: Path, serve: Callable[[Connection, int], int],
                 ready: Callable[[str], None], *, watcher_pid: int | None = None) -> None:
        self.mountpoint = mountpoint
        self.watcher_pid = watcher_pid
        self._serve = serve  # runs in the forked daemon: (connection, ready-pipe fd) -> exit code
        self._ready = ready
        self.fd = -1
        self.init = b""
        self.underneath = -1
        self.identity: tuple[str, str] | None = None
        self.child: int | None = None
        self._pidfd = -1
        self.restarts = 0
        self.stopping = False
        self.deaths: list[float] = []
        # An upgrade (SIGUSR2): this program replaced by ``upgrade_argv`` (the venvfs now installed),
        # keeping the descriptors in ``carried`` (the daemon lock, the watcher's pipe) and this pid.
        self.upgrade_argv: list[str] = []
        self.carried: dict[str, Any] = {}
        self.upgrade_asked = False
        # Told why an upgrade was refused (the mount serves on, on this program), so that the
        # `venvfs restart` waiting for it hears at once.
        self.upgrade_refused: Callable[[str], None] = lambda why: None
        self.handing_over = False  # resumed: the old program's daemon is stopping, a new one follows

    def mount(self, options: Collection[str]) -> None:
        from venvfs.mount.watch import mount_identity

        self.underneath = os.open(self.mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fd = open_mount(self.mountpoint, options)
            self.identity = mount_identity(self.mountpoint)
            self.init = read_init(self.fd)
        except BaseException:
            self._unmount()
            if self.fd >= 0:
                os.close(self.fd)
            os.close(self.underneath)
            raise

    def _fork(self) -> tuple[int, int]:
        """Start a daemon; returns (pid, read end of its ready pipe)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        conn = Connection(self.fd, self.init, self.underneath, os.getpid(), self.watcher_pid, self.restarts)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the daemon
            code = 1
            try:
                os.close(r)
                _hup_when_orphaned()
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                    signal.signal(sig, signal.SIG_DFL)
                code = self._serve(conn, w)
            except BaseException:
                log.exception("daemon failed")
            finally:
                os._exit(code)
        os.close(w)
        self.child = pid
        self._pidfd = os.pidfd_open(pid)
        return pid, r

    def _reap(self) -> int:
        """The exit of the current daemon as a shell reports it (128+N for signal N)."""
        assert self.child is not None
        _pid, status = os.waitpid(self.child, 0)
        os.close(self._pidfd)
        self.child, self._pidfd = None, -1
        return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)

    def resume(self, state: dict[str, Any]) -> None:
        """Go on with the mount an older keeper program of this process held (``upgrade``): its daemon
        is asked to stop, and ``run`` starts this venvfs's daemon in its place."""
        self.fd, self.underneath = int(state["fd"]), int(state["underneath"])
        self.init = bytes.fromhex(str(state["init"]))
        identity = state.get("identity")
        self.identity = (str(identity[0]), str(identity[1])) if identity else None
        self.restarts = int(state["restarts"])
        for fd in (self.fd, self.underneath, *[int(v) for k, v in state.items() if k.endswith("_fd")]):
            if fd >= 0:
                os.set_inheritable(fd, False)
        child = state.get("child")
        if child is not None:
            self.child, self._pidfd = int(child), os.pidfd_open(int(child))
            # SIGTERM: the daemon answers what it has read and stops reading (its handlers never
            # wait), so the handover resends nothing and no call sees an error.
            self.handing_over = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signal.SIGTERM)

    def upgrade(self) -> None:
        """Replace this program by the venvfs now installed, in this process, while the daemon serves."""
        self.upgrade_asked = False
        if not self.upgrade_argv:
            return
        from venvfs.mount.loop import LOOP_ENV

        try:
            check = subprocess.run([self.upgrade_argv[0], "-c", _UPGRADE_CHECK.format(loop_env=LOOP_ENV)],
                                   stdin=subprocess.DEVNULL,
                                   capture_output=True, text=True, check=False, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            self._refuse(f"the venvfs now installed could not be checked: {e}")
            return
        if check.returncode != 0:
            self._refuse(f"the venvfs now installed does not start: {_failure(check.stderr, check.returncode)}")
            return
        state = {"fd": self.fd, "underneath": self.underneath, "init": self.init.hex(),
                 "identity": list(self.identity) if self.identity else None, "restarts": self.restarts + 1,
                 "child": self.child, **self.carried}
        inherited = [fd for fd in (self.fd, self.underneath,
                                   *[int(v) for k, v in self.carried.items() if k.endswith("_fd")]) if fd >= 0]
        for fd in inherited:
            os.set_inheritable(fd, True)
        log.info("upgrading: %s", " ".join(self.upgrade_argv))
        # No handler is reset first: exec itself gives every caught signal its default action, and a
        # failed exec must find the loop's handlers and wakeup descriptor where they were.
        try:
            os.execv(self.upgrade_argv[0], [*self.upgrade_argv, "--resume", json.dumps(state)])
        except OSError as e:
            for fd in inherited:
                os.set_inheritable(fd, False)
            self._refuse(f"running the venvfs now installed failed: {e}")

    def _refuse(self, why: str) -> None:
        log.error("upgrade refused, serving on with this venvfs: %s", why)
        try:
            self.upgrade_refused(why)
        except OSError as e:
            log.warning("could not record the refusal for `venvfs restart`: %s", e)

    def _signal(self, signum: int) -> None:
        if signum == signal.SIGUSR2:
            self.upgrade_asked = True
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
            log.info("signal %d: stopping the daemon and unmounting", signum)
            if self.child is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child, signal.SIGTERM)
        elif self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signum)

    def _unmount(self) -> None:
        """Unmount what this keeper mounted, if it is still there (never a mount made since)."""
        from venvfs.mount.watch import mount_identity

        if self.identity is None or mount_identity(self.mountpoint) != self.identity:
            return
        tool = fusermount()
        cmd = [tool, "-u", "-z", str(self.mountpoint)] if tool else ["umount", "-l", str(self.mountpoint)]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log.error("unmounting %s: %s", self.mountpoint, proc.stderr.strip())

    def run(self) -> int:
        """Serve until the connection ends or a stop is asked for; the exit code of the daemon process."""
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
        for sig in handled:
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries the number
        code = 0
        try:
            code = self._loop(wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig in handled:
                signal.signal(sig, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            if self.child is not None:
                self._stop_child()
            self._unmount()
            os.close(self.fd)
            os.close(self.underneath)
        return code

    def _stop_child(self) -> None:
        assert self.child is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child, signal.SIGTERM)
        if not select.select([self._pidfd], [], [], STOP_TIMEOUT)[0]:
            log.warning("daemon %d did not stop on SIGTERM; killing it", self.child)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signal.SIGKILL)
        self._reap()

    def _loop(self, wake_r: int) -> int:
        ready_r = -1
        if self.child is None:
            _pid, ready_r = self._fork()
        ready_buf = b""
        first = not self.handing_over
        failed = False  # the first daemon did not come up: the mount never served
        started = time.monotonic()
        while True:
            poller = select.poll()
            poller.register(wake_r, select.POLLIN)
            poller.register(self.fd, 0)
            if self._pidfd >= 0:
                poller.register(self._pidfd, select.POLLIN)
            if ready_r >= 0:
                poller.register(ready_r, select.POLLIN)
            events = dict(poller.poll())
            if wake_r in events:
                with contextlib.suppress(BlockingIOError):
                    for signum in os.read(wake_r, 64):
                        self._signal(signum)
            if ready_r >= 0 and ready_r in events:
                chunk = os.read(ready_r, 4096)
                ready_buf += chunk
                if b"\n" in ready_buf or not chunk:
                    line = ready_buf.decode(errors="replace").strip()
                    os.close(ready_r)
                    ready_r, ready_buf = -1, b""
                    if first:
                        self._ready(line)
                        if line != "ok":
                            failed = self.stopping = True
                    elif line == "ok":
                        log.info("daemon restarted: serving again %.3fs after the last one died",
                                 time.monotonic() - started)
            if self._pidfd >= 0 and self._pidfd in events:
                code = self._reap()
                if self.handing_over:
                    self.handing_over = False
                    log.info("the daemon of the program before the upgrade stopped (exit %d)", code)
                    if not self.stopping and not _connection_gone(self.fd):
                        started = time.monotonic()
                        notify_resend(self.fd)  # nothing should be pending; a daemon killed meanwhile would have
                        _pid, ready_r = self._fork()
                        continue
                if ready_r >= 0:
                    os.close(ready_r)
                    ready_r = -1
                    if first:
                        self._ready("")  # exited without a ready line: the caller points to the log
                        return code or 1
                if self.stopping or code == 0 or _connection_gone(self.fd):
                    # 0: the daemon ended on purpose (a SIGTERM, the connection's end), as before keepers.
                    return (code or 1) if failed else 0
                started = time.monotonic()
                self.deaths = [t for t in self.deaths if started - t < CRASH_WINDOW] + [started]
                if len(self.deaths) > CRASHES_ALLOWED:
                    log.error("the daemon died %d times within %gs (last exit %d); unmounting",
                              len(self.deaths), CRASH_WINDOW, code)
                    return code
                log.warning("the daemon died (exit %d); starting another on the same connection", code)
                first = False
                self.restarts += 1
                notify_resend(self.fd)
                _pid, ready_r = self._fork()
                continue
            if self.fd in events and _connection_gone(self.fd):
                log.info("the connection ended (unmounted)")
                if self.child is not None:
                    self._stop_child()
                return 0
            if self.stopping and self.child is None:
                return 0
            if self.upgrade_asked and self.child is not None and ready_r < 0 and not self.stopping:
                self.upgrade()  # returns only if it was refused
