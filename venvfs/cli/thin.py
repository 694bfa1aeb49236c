"""Commands run in a warm fork of the user's mount service: both halves of that, client and worker.

A ``venvfs`` command pays its interpreter's start (~20 ms) and then ~60 ms of imports and parser
before it does anything (measured: ``venvfs list`` 74 ms, ``mount`` of a mounted venv 89 ms). The
mount service (``mount/service.py``) has all of that imported already, so where one answers on the
store's socket the client sends it the command line, its environment, umask, open-file limit and
its standard streams and working directory as descriptors (``SCM_RIGHTS``), and the service forks a
worker that becomes the command: same uid (``SO_PEERCRED``, checked on both ends), same groups, same
interpreter and venvfs (else the client is told to run it itself), the client's terminal. The client
only waits: it imports ``os`` and the C halves of ``socket`` and ``json``, and nothing of venvfs's but
the socket path.

The protocol, one line each way at a time: the client sends the request (JSON) with five descriptors;
the worker answers ``started PID``, then ``exit N`` (none: it was killed; the client exits 137), or
``exec JSON`` (a wrapped installer: the *client* process becomes uv or pip, so the installer keeps the
user's process, terminal, signals and exit status); anything else before ``started`` (``stale``,
``other: …``) and the client runs the command itself. Signals the client gets (Ctrl-C, SIGTERM,
SIGHUP) go to the worker as ``signal N`` lines on a pipe passed with the request; a client that
vanishes hangs the worker up (SIGHUP), as its terminal closing would. Ctrl-Z stops the worker's
process group (``started PID`` names it) and then the client; continuing the client continues it.

Where nothing answers, the command runs in the client as before: the service is an accelerator, and
only commands that need it (a mount) start it. ``VENVFS_SERVICE=0`` runs everything locally.
"""

from __future__ import annotations

# The interpreter's own signal module, loaded at its start (free to import): signal.py wraps it in
# enums, whose import is ~2 ms of every command's start.
import _signal  # type: ignore[import-not-found,unused-ignore]  # no stub: a C module
import os
import sys

TYPE_CHECKING = False  # typing itself is 2 ms of every command's start; mypy reads this name as True
if TYPE_CHECKING:
    import _socket
    import socket
    from collections.abc import Iterator
    from typing import Any, NoReturn

DISABLE_ENV = "VENVFS_SERVICE"  # the same switch as serviceclient.DISABLE_ENV ("0": never use it)
# Run where they are typed: the benchmark measures this process and must not share the service's pages
# or its CPU accounting.
LOCAL_COMMANDS = frozenset({"bench"})
# The daemon in the calling process (the user asked for it there), and what needs no command at all.
LOCAL_OPTIONS = frozenset({"--foreground", "--version"})
# SIGINT, SIGTERM, SIGHUP, SIGQUIT (numbers: the signal module is not loaded before it is needed)
FORWARDED = (2, 15, 1, 3)
SIGTSTP, SIGSTOP, SIGCONT = 20, 19, 18  # Linux's numbers (x86, arm, riscv alike)


# -- the client's side ---------------------------------------------------------------------------------

def run(argv: list[str]) -> int | None:
    """Run ``argv`` in a fork of the warm service: its exit status, or None to run it here."""
    if os.environ.get(DISABLE_ENV) == "0" or not _eligible(argv):
        return None
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        # A closed standard stream cannot be handed over, and the socket would take its number.
        return None
    # The C modules, not socket.py and json: those import enum, selectors and re (~8 ms of each
    # command's start, measured with -X importtime), for a connect and one message.
    import _socket

    from venvfs.mount import socketpath

    path = socketpath.socket_path(socketpath.guess_store_root(argv))
    if path is None:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None
        # The runtime directory is checked to be ours, and the server must be too: a command hands it
        # its terminal and environment.
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        if int.from_bytes(creds[4:8], sys.byteorder) != os.getuid():
            return None
        try:
            here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        request = {"op": "run", "identity": socketpath.identity(), "python": _python(),
                   "argv": argv, "env": dict(os.environ), "umask": _umask(), "gid": os.getgid(),
                   "groups": sorted(os.getgroups()), "nofile": _nofile()}
        data = _json(request).encode() + b"\n"
        # Signals travel on a pipe of their own, so the request can end with the socket's write side
        # shut: a service from before `op: run` reads a request to its end, and answers "stale" at once.
        signals_r, signals_w = os.pipe2(os.O_CLOEXEC)
        # From before the request goes: a Ctrl-C typed as the worker starts must reach the worker, not
        # end this process with a traceback while the command runs on.
        forwarder = _Forwarder(signals_w)
        try:
            try:
                rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, here, signals_r))
                sent = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
                sock.sendall(data[sent:])
                sock.shutdown(_socket.SHUT_WR)
            except OSError:
                return None  # a closed standard stream (EBADF) or a service gone: run it here
            finally:
                os.close(here)
                os.close(signals_r)
            return _follow(sock, forwarder)
        finally:
            forwarder.restore()
            os.close(signals_w)
    finally:
        sock.close()


def exit_now(code: int) -> NoReturn:
    """End the client once its command has: its output is the worker's, and this process holds nothing
    to clean up, so the interpreter's finalization (~3 ms) is skipped."""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib is one more import on every command's start
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _json(value: object) -> str:
    """The request as JSON, written with the C string encoder the json package uses itself: the
    package would import its decoder, and with it re."""
    from _json import encode_basestring_ascii as quote

    if isinstance(value, str):
        return quote(value)
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{quote(str(k))}: {_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_json(v) for v in value) + "]"
    raise TypeError(f"not in a request: {type(value).__name__}")


def _eligible(argv: list[str]) -> bool:
    for arg in argv:
        if arg in LOCAL_OPTIONS or arg in ("-h", "--help"):
            return False
        if not arg.startswith("-"):
            return arg not in LOCAL_COMMANDS
    return False  # no command: the help, which is free


def _python() -> list[object]:
    """What decides which modules a command imports: the interpreter, its prefix (the venv) and its
    path, less the first entry (the script's directory or the working directory) and venvfs's own
    directory, which the service has first on its path (``fsutil.importable_env``) and the identity
    already compares."""
    import venvfs

    # As reached and as resolved: importable_env puts the package's parent first as reached (not
    # resolved), so a venvfs linked into a site-packages appears there twice in the service's path.
    reached = os.path.dirname(os.path.dirname(os.path.abspath(venvfs.__file__)))
    ours = {reached, os.path.realpath(reached), os.path.dirname(os.path.dirname(os.path.realpath(venvfs.__file__)))}
    return [os.path.realpath(sys.executable), sys.prefix,
            [p for p in sys.path[1:] if not {os.path.abspath(p or "."), os.path.realpath(p or ".")} & ours]]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _nofile() -> list[int]:
    import resource  # a builtin module: no file to find or read

    return list(resource.getrlimit(resource.RLIMIT_NOFILE))


class _Forwarder:
    """The client's signal handlers while a worker runs its command: each signal goes to the worker as
    a ``signal N`` line on the signal pipe, held back until the worker has started (the command has not
    begun before; a refusal then leaves the signal to this process)."""

    def __init__(self, pipe: int) -> None:
        self.pipe = pipe
        self.started = False
        self.worker = 0
        self.received: list[int] = []
        self.previous = {signum: _signal.signal(signum, self._handle) for signum in FORWARDED}

    def _handle(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        if self.started:
            self._send(signum)

    def _send(self, signum: int) -> None:
        try:  # noqa: SIM105 - contextlib is one more import on every command's start
            os.write(self.pipe, f"signal {signum}\n".encode())
        except OSError:
            pass

    def start(self, worker: int) -> None:
        self.started = True
        self.worker = worker
        for signum in self.received:
            self._send(signum)
        self.previous[SIGTSTP] = _signal.signal(SIGTSTP, self._suspend)

    def _suspend(self, _signum: int, _frame: object) -> None:
        """Ctrl-Z: the worker's process group is stopped (SIGSTOP: it is in no terminal's foreground,
        where SIGTSTP would be discarded), then this process, by the default action the shell waits
        for; continued (fg, bg), it continues the worker. The worker cannot stop itself on a line of
        the signal pipe: stopped, it would never read the line that continues it."""
        self._to_worker(SIGSTOP)
        _signal.signal(SIGTSTP, _signal.SIG_DFL)
        os.kill(os.getpid(), SIGTSTP)  # returns once continued
        _signal.signal(SIGTSTP, self._suspend)
        self._to_worker(SIGCONT)

    def _to_worker(self, signum: int) -> None:
        try:  # noqa: SIM105 - contextlib is one more import on every command's start
            os.killpg(self.worker, signum)
        except OSError:
            pass

    def restore(self) -> None:
        """The handlers as they were; a signal that came before any worker started (so before the
        command did anything) ends this process, as it would have ended a command run here."""
        for signum, handler in self.previous.items():
            _signal.signal(signum, handler)
        if self.received and not self.started:
            if self.received[-1] == FORWARDED[0]:  # SIGINT
                print("venvfs: interrupted", file=sys.stderr)
                raise SystemExit(130)
            self.die_by_last()

    def die_by_last(self) -> None:
        """End this process by the last signal it got, with the default action, as a shell expects."""
        if self.received:
            _signal.signal(self.received[-1], _signal.SIG_DFL)
            os.kill(os.getpid(), self.received[-1])


def _lines(sock: _socket.socket) -> Iterator[str]:
    pending = b""
    while True:
        chunk = sock.recv(65536)  # retried after a forwarded signal's handler (PEP 475)
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")


def _follow(sock: _socket.socket, forwarder: _Forwarder) -> int | None:
    for line in _lines(sock):
        if line.startswith("started "):
            forwarder.start(int(line[8:]))
        elif line.startswith("exit ") and forwarder.started:
            return int(line[5:])
        elif line.startswith("exec ") and forwarder.started:
            import json  # only here: a wrapped installer's command line

            _become(json.loads(line[5:]))
        elif not forwarder.started:
            return None  # stale, another interpreter, a refusal: nothing ran; run it here
    if not forwarder.started:
        return None
    # The worker died without a status: a forwarded signal did it, or something killed it.
    forwarder.die_by_last()
    # Its status went to the service, which does not keep it; killed (SIGKILL, the OOM killer, a
    # process that dies by os._exit as under it) is what a shell would show for it here: 128 + 9.
    print("venvfs: error: the command's process in the mount service died", file=sys.stderr)
    return 137


def _become(order: dict[str, Any]) -> NoReturn:
    for signum in FORWARDED:
        _signal.signal(signum, _signal.SIG_DFL)
    argv = [str(a) for a in order["argv"]]
    os.execve(argv[0], argv, {str(k): str(v) for k, v in order["env"].items()})


# -- the worker's side (a fork of the service) -----------------------------------------------------

def serve(conn: socket.socket, request: dict[str, object], fds: list[int]) -> NoReturn:  # pragma: no cover
    """Become the command the client sent (runs in the service's forked child, never returns)."""
    code = 70
    try:
        refused = _refusal(request, fds)
        if refused:
            conn.sendall(f"other: {refused}\n".encode())
            code = 0
        else:
            code = _run_command(conn, request, fds)
    finally:
        os._exit(code)


def _refusal(request: dict[str, object], fds: list[int]) -> str:
    """Why this process cannot stand in for the client ('' when it can)."""
    import json

    if request.get("python") != json.loads(json.dumps(_python())):
        return f"the service runs {sys.executable} with another prefix or path"
    if request.get("gid") != os.getgid() or request.get("groups") != sorted(os.getgroups()):
        return "the service runs with other groups (a newer login?)"
    if len(fds) != 5:
        return "five descriptors expected"
    nofile = request.get("nofile")
    try:
        import resource

        assert isinstance(nofile, list)
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile[0]), int(nofile[1])))
    except (AssertionError, ValueError, OSError) as e:
        return f"cannot take the client's open-file limit ({e})"
    return ""


def _run_command(conn: socket.socket, request: dict[str, object], fds: list[int]) -> int:
    import contextlib
    import json
    import logging
    import signal
    import threading

    from venvfs.cli import app
    from venvfs.mount import service

    argv = [str(a) for a in request.get("argv") or ()]  # type: ignore[attr-defined]
    # Before the environment changes: setproctitle finds the room for a title after argv, in the
    # environment's strings, which replacing os.environ moves away (the title is then silently lost).
    service.set_title(" ".join(["venvfs", *argv])[:200])
    # The service ignores SIGCHLD to reap its children; inherited, every waitpid of ours would fail
    # with ECHILD (subprocess then reports exit status 0 for anything).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)  # inheritable: what the command runs gets the client's streams too
    os.fchdir(fds[3])
    signals = fds[4]
    for fd in fds[:4]:
        os.close(fd)
    env = request.get("env")
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in (env.items() if isinstance(env, dict) else ())})
    os.umask(int(str(request.get("umask", 0o022))))
    sys.argv = ["venvfs", *argv]
    _reopen_streams()
    # The service's own log handler (its log file's format, level INFO) would be inherited by the
    # command's logging.basicConfig, which then does nothing.
    logging.root.handlers.clear()
    conn.settimeout(None)
    # A process group of its own, which the client stops and continues as a whole (Ctrl-Z): the
    # command and what it runs (uv, compilers), not the daemons it forks (each in a session of its own).
    os.setpgid(0, 0)
    conn.sendall(f"started {os.getpid()}\n".encode())
    threading.Thread(target=_listen, args=(signals,), name="venvfs-client", daemon=True).start()
    try:
        result: int | app.ExecInstead = app.run(argv)
    except SystemExit as e:  # argparse's usage errors and --help, as the interpreter would exit
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        result = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    if isinstance(result, app.ExecInstead):
        conn.sendall(f"exec {json.dumps({'argv': result.argv, 'env': dict(os.environ)})}\n".encode())
        return 0
    conn.sendall(f"exit {result}\n".encode())
    return result


def _reopen_streams() -> None:
    """New text streams over descriptors 0-2 (now the client's): line-buffered where a terminal, as
    the interpreter makes them at start; the service's were made for its log file."""
    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdin = open(0, encoding=encoding, closefd=False)  # noqa: SIM115 - the process's own stream
    sys.stdout = open(1, "w", encoding=encoding, errors=errors, closefd=False,  # noqa: SIM115
                      buffering=1 if os.isatty(1) else -1)
    sys.stderr = open(2, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115


def _listen(signals: int) -> None:
    """The client's signals, and its going away (a hangup, as when a terminal closes): the write end
    of the pipe closes with the client."""
    import signal

    reader = os.fdopen(signals, "rb")
    try:
        for raw in reader:
            words = raw.split()
            if len(words) == 2 and words[0] == b"signal" and words[1].isdigit():
                os.kill(os.getpid(), int(words[1]))
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGHUP)
