"""Commands run in a warm fork of the user's mount service (``venvfs/cli/thin.py``, issue 16 point 4):
the client hands over its command line, environment, working directory and standard streams, and
the command behaves as if it ran where it was typed: output, exit status, signals, relative paths,
``venvfs uv`` becoming uv in the user's own process. Where the service cannot stand in for the
client, the command runs in the client, as before.

Whether a command ran in the service is read from ``python -X importtime``: a client that handed
its command over never imported the command line's own modules (``venvfs.cli.app``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, stop_mount, uv
from venvfs.mount import serviceclient
from venvfs.store.store import Store
from venvfs.venv.mountinfo import mount_state
from venvfs.venv.venv import Venv

pytestmark = pytest.mark.fuse


def _venvfs(store: Store, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "venvfs", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO), "VENVFS_STORE": str(store.root),
                               **(env or {})}, **kwargs)  # type: ignore[call-overload]


def _in_service(proc: subprocess.CompletedProcess[str]) -> bool:
    modules = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "venvfs.cli" in modules, "no -X importtime output to judge"
    return "venvfs.cli.app" not in modules


def _stderr(proc: subprocess.CompletedProcess[str]) -> str:
    return "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import time:"))


@pytest.fixture
def mounted(require_fuse: None, service_env: Path, store: Store, make_venv: Callable[..., Path]) -> Path:
    """A mounted venv, and with it the store's mount service running."""
    path = make_venv("v", tool="uv")
    proc = _venvfs(store, "mount", str(path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert serviceclient.connect(serviceclient.socket_path(store.root) or Path("/nonexistent")) is not None
    return path


def test_a_command_runs_in_the_service_as_it_would_here(mounted: Path, store: Store, tmp_path: Path) -> None:
    proc = _venvfs(store, "list")
    assert proc.returncode == 0 and _in_service(proc), _stderr(proc)
    assert f"{mounted}\tmounted" in proc.stdout
    # The working directory and the environment are the client's: a relative path, --json output.
    proc = _venvfs(store, "status", "--json", mounted.name, cwd=mounted.parent)
    assert proc.returncode == 0 and _in_service(proc), _stderr(proc)
    assert '"layout": "mounted"' in proc.stdout or '"layout":"mounted"' in proc.stdout.replace(" ", "")
    # A usage error: argparse's message on the client's stderr and its exit status 2.
    proc = _venvfs(store, "mount", str(mounted), "--no-such-option")
    assert proc.returncode == 2 and _in_service(proc)
    assert "unrecognized arguments: --no-such-option" in _stderr(proc)
    # A venvfs error: the message and the exit status scripts rely on.
    proc = _venvfs(store, "status", str(tmp_path / "nothing-here"))
    assert proc.returncode not in (0, 70) and _in_service(proc)
    assert "venvfs: error:" in _stderr(proc) and "Traceback" not in proc.stderr
    # Logging goes to the client's stderr in venvfs's own format, not to the service's log.
    proc = _venvfs(store, "-v", "mount", str(mounted))
    assert proc.returncode == 0 and _in_service(proc)
    assert "already mounted" in proc.stdout


def _worker(title_part: str) -> int | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"venvfs ") and title_part.encode() in cmdline:
            return int(pid)
    return None


def _wait_for_worker(title_part: str, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _worker(title_part)
        if pid is not None:
            return pid
        time.sleep(0.02)
    raise AssertionError(f"no worker running {title_part!r}")


def _limits(pid: int) -> tuple[str, str]:
    limits = Path(f"/proc/{pid}/limits").read_text()
    nofile = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    umask = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Umask"))
    return nofile.split()[3], umask.split()[1]


@pytest.fixture
def held_lock(mounted: Path) -> Callable[[], subprocess.Popen[bytes]]:
    """Hold the venv's lock in another process, so a command that needs it waits (and can be inspected)."""
    holders: list[subprocess.Popen[bytes]] = []

    def hold() -> subprocess.Popen[bytes]:
        holder = subprocess.Popen(["flock", str(mounted / ".venvfs" / "lock"), "sleep", "60"])
        holders.append(holder)
        time.sleep(0.2)
        return holder

    yield hold  # type: ignore[misc]
    for holder in holders:
        holder.kill()
        holder.wait()


def _client(store: Store, shell: str, *args: str, job: bool = False) -> subprocess.Popen[str]:
    """``venvfs ARGS`` for a command that waits for the held venv lock; returns once the command, in
    its worker, says it waits (so it has started there: a worker stopped before it started is a
    refusal, and the client runs the command itself). ``job``: run as a shell's job (``_JOB``), the
    client then the returned process's child."""
    command = [sys.executable, "-X", "importtime", "-m", "venvfs", *args]
    argv = [sys.executable, "-c", _JOB, *command] if job else ["sh", "-c", shell + ' exec "$0" "$@"', *command]
    client = subprocess.Popen(argv, start_new_session=job, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO), "VENVFS_STORE": str(store.root)})
    assert client.stderr is not None
    seen = []
    for line in client.stderr:
        seen.append(line)
        if "waiting for the lock" in line:
            return client
    raise AssertionError(f"the command never waited for the lock: {''.join(seen)[-2000:]}")


def test_the_worker_takes_the_clients_limits_and_ctrl_c(
        mounted: Path, store: Store, held_lock: Callable[[], object]) -> None:
    held_lock()
    client = _client(store, "ulimit -n 1000; umask 027;", "umount", "--wait", "30", str(mounted))
    worker = _wait_for_worker(f"umount --wait 30 {mounted}")
    assert _limits(worker) == ("1000", "0027")
    # Ctrl-C at the client: the command is interrupted as it would be in the client's own process.
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=30)
    assert client.returncode == 130, err[-2000:]
    assert "venvfs: interrupted" in err
    assert _worker(f"umount --wait 30 {mounted}") is None


def _state(pid: int) -> str:
    return next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("State:"))


def _wait_state(pid: int, states: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _state(pid) not in states:
        assert time.monotonic() < deadline, f"process {pid} is {_state(pid)}, not one of {states}"
        time.sleep(0.02)


# A shell's job: the command in a process group of its own, whose parent (the "shell") is in another
# group of the same session. Anywhere else (a group whose parents are all outside its session: a
# test runner started in the background, or by setsid) the kernel discards SIGTSTP's stop, by POSIX.
_JOB = """
import os, sys
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.execv(sys.argv[1], sys.argv[1:])
os.setpgid(pid, pid)
_, status = os.waitpid(pid, 0)
os._exit(os.waitstatus_to_exitcode(status))
"""


def test_ctrl_z_stops_the_command_and_fg_continues_it(mounted: Path, store: Store) -> None:
    # The venv's lock held by flock(1)'s child, in a group of its own: killed as a whole, it frees the lock.
    holder = subprocess.Popen(["flock", str(mounted / ".venvfs" / "lock"), "sleep", "60"], start_new_session=True)
    time.sleep(0.2)
    job = _client(store, "", "umount", "--wait", "30", str(mounted), job=True)
    client = int(Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()[0])
    worker = _wait_for_worker(f"umount --wait 30 {mounted}")
    # Ctrl-Z: the client stops (what the shell waits for) and so does the command in the service,
    # which would otherwise go on running, unmounting while its job shows "Stopped".
    os.kill(client, signal.SIGTSTP)
    _wait_state(client, "T")
    _wait_state(worker, "T")
    os.killpg(holder.pid, signal.SIGKILL)  # the lock is free, but a stopped command does not take it
    holder.wait()
    time.sleep(0.5)
    assert _state(worker) == "T" and mount_state(Venv(mounted)) == "mounted"
    # fg (SIGCONT): both go on, and the command finishes as if never stopped.
    os.kill(client, signal.SIGCONT)
    _, err = job.communicate(timeout=30)
    assert job.returncode == 0, err[-2000:]
    assert mount_state(Venv(mounted)) == "unmounted"


def test_a_client_that_vanishes_hangs_its_worker_up(
        mounted: Path, store: Store, held_lock: Callable[[], object]) -> None:
    held_lock()
    client = _client(store, "", "umount", "--wait", "30", str(mounted))
    worker = _wait_for_worker(f"umount --wait 30 {mounted}")
    client.kill()
    client.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and b"umount" in Path(f"/proc/{worker}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the worker outlived its client"
        time.sleep(0.02)


def test_a_worker_killed_is_an_error_not_a_second_run(
        mounted: Path, store: Store, held_lock: Callable[[], object]) -> None:
    held_lock()
    client = _client(store, "", "umount", "--wait", "30", str(mounted))
    worker = _wait_for_worker(f"umount --wait 30 {mounted}")
    os.kill(worker, signal.SIGKILL)
    _, err = client.communicate(timeout=30)
    assert client.returncode == 137  # as a shell shows a command killed where it was typed
    assert "the command's process in the mount service died" in err


def test_venvfs_uv_becomes_uv_in_the_clients_own_process(mounted: Path, store: Store) -> None:
    env = {"PATH": f"{Path(uv()).parent}:{os.environ['PATH']}"}
    proc = _venvfs(store, "uv", "--version", env=env)
    assert proc.returncode == 0 and _in_service(proc), _stderr(proc)
    assert proc.stdout.startswith("uv ")
    # uv's own exit status, as uv gives it.
    proc = _venvfs(store, "uv", "pip", "install", "--no-such-flag", env=env)
    assert proc.returncode == 2 and _in_service(proc)
    assert "--no-such-flag" in _stderr(proc)


def test_where_the_service_cannot_stand_in_the_command_runs_here(mounted: Path, store: Store, tmp_path: Path) -> None:
    # Another module path than the service's (an extra PYTHONPATH entry): other modules may be imported.
    extra = tmp_path / "extra"
    extra.mkdir()
    proc = _venvfs(store, "list", env={"PYTHONPATH": f"{REPO}:{extra}"})
    assert proc.returncode == 0 and not _in_service(proc), _stderr(proc)
    assert f"{mounted}\tmounted" in proc.stdout
    # A closed standard input cannot be handed over.
    proc = _venvfs(store, "list", stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and _in_service(proc)
    proc = subprocess.run(["sh", "-c", 'exec "$0" -X importtime -m venvfs list <&-', sys.executable],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), "VENVFS_STORE": str(store.root)})
    assert proc.returncode == 0 and not _in_service(proc), proc.stderr[-2000:]
    # VENVFS_SERVICE=0: never.
    proc = _venvfs(store, "list", env={serviceclient.DISABLE_ENV: "0"})
    assert proc.returncode == 0 and not _in_service(proc)
    stop_mount(mounted)


def test_a_service_from_before_commands_ran_in_it_answers_stale_at_once(
        require_fuse: None, service_env: Path, store: Store, tmp_path: Path) -> None:
    # A service of an older venvfs reads a request to its end (the client's shut write side) and
    # answers "stale": the command then runs here, with no wait for a timeout.
    sock_path = serviceclient.socket_path(store.root)
    assert sock_path is not None
    server = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); print('up', flush=True)\n"
        "c, _ = s.accept(); data = b''\n"
        "while (chunk := c.recv(65536)): data += chunk\n"
        "c.sendall(b'stale\\n'); c.close()\n"), str(sock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "up\n"
        started = time.monotonic()
        proc = _venvfs(store, "list")
        took = time.monotonic() - started
        assert proc.returncode == 0 and not _in_service(proc), _stderr(proc)
        assert server.wait(10) == 0  # it had the whole request, and answered
        assert took < 4.0, f"the client waited {took:.1f} s for an old service"
    finally:
        server.kill()


def test_a_venvfs_linked_into_a_site_packages_is_served_by_its_service(
        require_fuse: None, service_env: Path, store: Store, make_venv: Callable[..., Path], tmp_path: Path) -> None:
    # As the benchmark's environment reaches this venvfs: a link to the package in a venv's
    # site-packages. The service it starts has that site-packages first on its path (importable_env
    # adds the package's parent as reached), the client has it where site put it; compared resolved
    # (the source tree), neither was left out, and every command was refused.
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    (site / "venvfs").symlink_to(REPO / "venvfs", target_is_directory=True)
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")  # pyfuse3, trio: this interpreter's
    python = str(env_dir / "bin" / "python")
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    venv = make_venv("v", tool="uv")

    def venvfs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, "-X", "importtime", "-m", "venvfs", *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, env={**environ, "VENVFS_STORE": str(store.root)})

    proc = venvfs("mount", str(venv))
    assert proc.returncode == 0, _stderr(proc)
    try:
        proc = venvfs("list")
        assert proc.returncode == 0 and _in_service(proc), _stderr(proc)
        assert f"{venv}\tmounted" in proc.stdout
    finally:
        stop_mount(venv)
