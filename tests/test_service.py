"""The per-user mount service (issue 16): mounts forked from one warm process, which is an
accelerator only: killing it unmounts nothing, and without it ``venvfs mount`` works as before.
Real mounts, real processes, a real second user."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.otheruser import other_user
from venvfs.hooks import systemd
from venvfs.mount import service as service_mod
from venvfs.mount import serviceclient
from venvfs.store.store import Store

Run = Callable[..., subprocess.CompletedProcess[str]]


def _daemon_pid(venv: Path) -> int:
    return int(json.loads((venv / ".venvfs" / "daemon.json").read_text())["pid"])


def _service_of(venv: Path) -> int | None:
    """The mount service whose fork serves ``venv`` (daemon.json), None for a daemon spawned afresh."""
    service = json.loads((venv / ".venvfs" / "daemon.json").read_text())["service"]
    return None if service is None else int(service)


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _answers(venv: Path) -> bool:
    sp = next(venv.glob("lib/python*/site-packages"))
    try:
        os.listdir(sp)
        return True
    except OSError:
        return False


def test_mounts_are_forked_by_one_service_that_can_die(require_fuse: None, service_env: Path, store: Store,
                                                      make_venv: Callable[..., Path], run_venvfs: Run) -> None:
    one, two = make_venv("one", "uv"), make_venv("two", "uv")
    run_venvfs("mount", "--mode", "fuse", str(one))
    run_venvfs("mount", "--mode", "fuse", str(two))
    sock = serviceclient.socket_path(store.root)
    assert sock is not None and sock.parent.parent == service_env
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    pids = [_daemon_pid(v) for v in (one, two)]
    assert pids[0] != pids[1], "each mount is its own process"
    # The first mount found no service: it started one, which forked the daemon.
    service_pid = _ppid(pids[0])
    assert "venvfs.cli.service" in _cmdline(service_pid) and _service_of(one) == service_pid
    # The second ran in a fork of that service (cli/thin.py), which forked the daemon itself
    # (service.mount_in_fork) rather than asking the service again; it has exited since.
    assert _service_of(two) == service_pid and _ppid(pids[1]) != service_pid
    # Its log is a daemon's (INFO, timed), not the command's own logging (warnings only).
    for venv in (one, two):
        logfile = Path(json.loads((venv / ".venvfs" / "daemon.json").read_text())["log"])
        assert " venvfs.mount.daemon INFO: mounted " in logfile.read_text(), logfile.read_text()[-2000:]
    # A forked daemon would show the service's command line (and die by `pkill -f venvfs.cli.service`).
    for venv, pid in zip((one, two), pids, strict=True):
        sp = next(venv.glob("lib/python*/site-packages"))
        assert _cmdline(pid).rstrip() == f"venvfs-mount {sp}", _cmdline(pid)
    try:
        # The service is an accelerator: kill -9 leaves every mount serving.
        os.kill(service_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{service_pid}").exists() and _ppid(pids[0]) == service_pid:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert all(_answers(v) for v in (one, two))
        assert "already mounted" in run_venvfs("mount", str(one)).stdout
        # The next mount starts a new service on the dead one's socket.
        run_venvfs("umount", str(two))
        run_venvfs("mount", "--mode", "fuse", str(two))
        assert _service_of(two) not in (service_pid, None)
        assert _answers(two)
    finally:
        run_venvfs("umount", str(one), check=False)
        run_venvfs("umount", str(two), check=False)


def test_without_the_service_mounts_spawn_their_daemon(require_fuse: None, service_env: Path, store: Store,
                                                       make_venv: Callable[..., Path], run_venvfs: Run,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(serviceclient.DISABLE_ENV, "0")
    venv = make_venv("plain", "uv")
    run_venvfs("mount", "--mode", "fuse", str(venv))
    try:
        assert "venvfs.mount.daemon" in _cmdline(_daemon_pid(venv))
        assert not list(service_env.rglob("*.sock"))
    finally:
        run_venvfs("umount", str(venv))


def test_a_stale_socket_file_is_replaced(require_fuse: None, service_env: Path, store: Store,
                                         make_venv: Callable[..., Path], run_venvfs: Run) -> None:
    # What a service killed with SIGKILL (or a reboot of a runtime directory that is not a tmpfs) leaves:
    # a socket file nobody listens on. The next mount starts a service that binds it anew.
    sock = serviceclient.socket_path(store.root)
    assert sock is not None
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(sock))
    assert serviceclient.connect(sock) is None
    venv = make_venv("after", "uv")
    run_venvfs("mount", "--mode", "fuse", str(venv))
    try:
        service_pid = _service_of(venv)
        assert service_pid is not None and "venvfs.cli.service" in _cmdline(service_pid)
        live = serviceclient.connect(sock)
        assert live is not None, "the stale socket file was not replaced"
        live.close()
        assert _answers(venv)
    finally:
        run_venvfs("umount", str(venv))


def test_an_unsafe_runtime_directory_is_not_used(require_fuse: None, service_env: Path, store: Store,
                                                 make_venv: Callable[..., Path], run_venvfs: Run) -> None:
    # A runtime directory others can write (or another user's /tmp/runtime-UID) could hold their
    # socket in place of ours: venvfs then mounts without the service.
    service_env.chmod(0o777)
    venv = make_venv("open", "uv")
    run_venvfs("mount", "--mode", "fuse", str(venv))
    try:
        assert "venvfs.mount.daemon" in _cmdline(_daemon_pid(venv))
        assert serviceclient.socket_path(store.root) is None
    finally:
        run_venvfs("umount", str(venv))


def test_a_stale_service_steps_aside(require_fuse: None, service_env: Path, store: Store,
                                     make_venv: Callable[..., Path], run_venvfs: Run) -> None:
    # An upgraded venvfs must not be served by the old one's code: the old service exits.
    venv = make_venv("first", "uv")
    run_venvfs("mount", "--mode", "fuse", str(venv))
    try:
        service_pid = _service_of(venv)
        sock = serviceclient.socket_path(store.root)
        assert sock is not None
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(json.dumps({"op": "mount", "identity": "0.0.0:/elsewhere"}).encode() + b"\n")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b"stale\n"
        deadline = time.monotonic() + 10
        while Path(f"/proc/{service_pid}").exists() and "service" in _cmdline(service_pid):
            assert time.monotonic() < deadline, "the stale service did not exit"
            time.sleep(0.02)
        assert _answers(venv)
    finally:
        run_venvfs("umount", str(venv))


def test_another_user_cannot_use_my_service(require_fuse: None, tmp_path: Path) -> None:
    # The socket's directory is 0700 (the kernel's check) and the service serves only its own uid
    # (SO_PEERCRED): root, which passes any mode check, is refused by a user's service.
    with other_user() as user:
        runtime = user.home / "runtime"
        store = user.home / "store"
        env = {"XDG_RUNTIME_DIR": str(runtime), "VENVFS_STORE": str(store), "VENVFS_SERVICE_IDLE": "30",
               **user._pythonpath()}
        sock_name = user.run(user.python, "-c", "import sys; from pathlib import Path; from venvfs.mount import "
                             "serviceclient; p = serviceclient.socket_path(Path(sys.argv[1])); print(p)", str(store),
                             env=env)
        assert sock_name.returncode == 0, sock_name.stderr
        sock = Path(sock_name.stdout.strip())
        started = subprocess.Popen([*user.prefix(), "env", f"HOME={user.home}",
                                    *[f"{k}={v}" for k, v in env.items()], user.python, "-m",
                                    "venvfs.cli.service", "--store", str(store)], cwd="/")
        try:
            deadline = time.monotonic() + 20
            while not sock.exists():
                assert time.monotonic() < deadline and started.poll() is None, "the service did not start"
                time.sleep(0.02)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                # The service answers from the peer's credentials alone and closes: the request may
                # meet a closed socket (EPIPE) before the answer is read.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    s.sendall(json.dumps({"op": "mount", "identity": serviceclient.identity(), "venv": "/",
                                          "store": str(store)}).encode() + b"\n")
                    s.shutdown(socket.SHUT_WR)
                assert s.recv(100) == b"refused\n"
            assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and sock.stat().st_uid == user.uid
        finally:
            started.kill()
            started.wait()


# -- under systemd ---------------------------------------------------------------------------------

def _unit_command(store: Path) -> tuple[list[str], dict[str, str]]:
    """The service unit's ExecStart and Environment, as systemd reads them (quotes, $$ and %%)."""
    text = systemd.render_unit(store, systemd.SERVICE_UNIT_NAME)

    def words(value: str) -> list[str]:
        return [w.replace("$$", "$").replace("%%", "%") for w in shlex.split(value)]

    lines = dict(line.split("=", 1) for line in text.splitlines() if line.startswith(("ExecStart=", "Environment=")))
    env = dict(w.split("=", 1) for w in words(lines.get("Environment", "")))
    return words(lines["ExecStart"]), env


@contextlib.contextmanager
def _as_systemd(store: Path, runtime: Path, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start the service as the user's systemd would run its unit: the unit's command line and
    environment, a clean environment (no PYTHONPATH), $XDG_RUNTIME_DIR and $NOTIFY_SOCKET; each start
    returns once the service has sent READY=1 (Type=notify)."""
    argv, unit_env = _unit_command(store)
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        env = {"HOME": os.environ.get("HOME", "/root"), "PATH": os.environ["PATH"], "XDG_RUNTIME_DIR": str(runtime),
               "NOTIFY_SOCKET": str(notify_path), "VENVFS_SERVICE_IDLE": "1", **unit_env}
        proc = subprocess.Popen(argv, env=env, cwd="/", start_new_session=True)
        started.append(proc)
        assert notify.recv(100) == b"READY=1", "the service did not notify systemd"
        return proc

    try:
        yield start
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        notify.close()


def test_the_service_under_systemd_is_the_one_commands_use(require_fuse: None, service_env: Path, store: Store,
                                                           make_venv: Callable[..., Path], run_venvfs: Run,
                                                           tmp_path: Path) -> None:
    one, two = make_venv("one", "uv"), make_venv("two", "uv")
    with _as_systemd(store.root, service_env, tmp_path) as start:
        service = start()
        sock = serviceclient.socket_path(store.root)
        assert sock is not None and stat.S_ISSOCK(sock.stat().st_mode)
        try:
            run_venvfs("mount", "--mode", "fuse", str(one))
            assert _service_of(one) == service.pid, "the command did not use the service systemd runs"
            # No idle exit under systemd (VENVFS_SERVICE_IDLE=1 would end a service a command started).
            time.sleep(3)
            assert service.poll() is None, "the service under systemd exited for idleness"
            # kill -9: the mount stays; systemd's restart replaces the socket file the dead one left.
            service.kill()
            service.wait()
            assert _answers(one) and sock.exists()
            again = start()
            run_venvfs("mount", "--mode", "fuse", str(two))
            assert _service_of(two) == again.pid and _answers(one) and _answers(two)
        finally:
            run_venvfs("umount", str(one), check=False)
            run_venvfs("umount", str(two), check=False)


def _ask(sock: Path, request: dict[str, object]) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(json.dumps(request).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        return s.recv(100)


def test_the_service_under_systemd_takes_over_and_restarts_for_upgrades(
        require_fuse: None, service_env: Path, store: Store, make_venv: Callable[..., Path], run_venvfs: Run,
        tmp_path: Path) -> None:
    one, two = make_venv("one", "uv"), make_venv("two", "uv")
    try:
        # A command started a service before systemd started the unit's (kill -9 and a mount within
        # RestartSec, or the unit enabled later): the unit's service takes the socket over.
        run_venvfs("mount", "--mode", "fuse", str(one))
        theirs = _service_of(one)
        assert theirs is not None and "--systemd" not in _cmdline(theirs)
        with _as_systemd(store.root, service_env, tmp_path) as start:
            service = start()
            deadline = time.monotonic() + 10
            while Path(f"/proc/{theirs}").exists() and "venvfs.cli.service" in _cmdline(theirs):
                assert time.monotonic() < deadline, "the service a command started did not hand over"
                time.sleep(0.02)
            assert _answers(one)
            run_venvfs("mount", "--mode", "fuse", str(two))
            assert _service_of(two) == service.pid
            sock = serviceclient.socket_path(store.root)
            assert sock is not None
            # A second service under systemd does not take the socket from the first.
            assert _ask(sock, {"op": "handover", "identity": serviceclient.identity()}) == b"refused\n"
            # A client of another installation mounts without the service, which stays for its own.
            version, _, here = serviceclient.identity().partition(":")
            assert _ask(sock, {"op": "mount", "identity": f"{version}:/elsewhere/venvfs"}) == b"stale\n"
            time.sleep(0.2)
            assert service.poll() is None
            # An upgrade in place: exit 75, on which the unit has systemd restart it into the new code.
            assert _ask(sock, {"op": "mount", "identity": f"0.0.0.dev0:{here}"}) == b"stale\n"
            assert service.wait(10) == service_mod.RESTART_EXIT
            assert _answers(one) and _answers(two)
    finally:
        run_venvfs("umount", str(one), check=False)
        run_venvfs("umount", str(two), check=False)
