"""venvfs as a normal user (issue 16, point 7): the mount path, the per-user mount service and the
fallback, run as a second local account through the setuid ``fusermount3``, with the store in that
user's own platformdirs directories. Real mounts, a real account (tests/otheruser.py), the kernel's
own permission checks between the two users.

The user's commands run with a login-like environment (``env -i``: HOME, PATH, LANG) and no
$XDG_RUNTIME_DIR, as under ``su``/``runuser``: venvfs then finds its runtime directory itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import missing_tool, uv
from tests.otheruser import OtherUser, other_user
from tests.wheelbuilder import build_wheel, simple_package
from venvfs.mount import serviceclient
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

Run = Callable[..., subprocess.CompletedProcess[str]]
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture
def dev_fuse_open(require_fuse: None) -> Iterator[None]:
    """/dev/fuse as distributions ship it (0666): some machines have it 0600, which closes FUSE to
    every user but root. Restored afterwards."""
    if shutil.which("fusermount3") is None:
        missing_tool("fusermount3 (apt-get install fuse3)")
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    if mode != 0o666:
        os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        if mode != 0o666:
            os.chmod("/dev/fuse", mode)


@pytest.fixture
def user(dev_fuse_open: None) -> Iterator[OtherUser]:
    with other_user() as u:
        try:
            yield u
        finally:
            _stop_everything_of(u)


def _stop_everything_of(u: OtherUser) -> None:
    """The user's mounts below its scratch home, and its mount services for stores there (the account
    is shared: another test run's services are not ours to stop)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in points:
        if point.startswith(f"{u.home}/"):
            subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True, check=False)
    for pid in _processes_of(u.uid):
        if "venvfs.cli.service" in _cmdline(pid) and f"--store {u.home}/" in _cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().rstrip()
    except OSError:
        return ""


def _status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return line.split()[1]
    raise AssertionError(f"no {field} for {pid}")


def _daemon_pid(venv: Path) -> int:
    return int(json.loads((venv / ".venvfs" / "daemon.json").read_text())["pid"])


def _service_of(venv: Path) -> int:
    """The mount service whose fork serves ``venv`` (daemon.json names it)."""
    return int(json.loads((venv / ".venvfs" / "daemon.json").read_text())["service"])


def as_user(u: OtherUser, *cmd: str, check: bool = True, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """``cmd`` as the user, in a login-like environment (nothing of root's but what is named here)."""
    base = {"HOME": str(u.home), "PATH": USER_PATH, "LANG": "C.UTF-8", "USER": u.name, "LOGNAME": u.name,
            "VENVFS_SERVICE_IDLE": "60", "UV_CACHE_DIR": str(u.home / ".cache" / "uv"), **u._pythonpath()}
    assignments = [f"{k}={v}" for k, v in {**base, **(env or {})}.items()]
    proc = subprocess.run([*u.prefix(), "env", "-i", *assignments, *cmd], capture_output=True, text=True,
                          timeout=300, cwd="/")
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} as {u.name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def venvfs_as(u: OtherUser, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return as_user(u, u.python, "-m", "venvfs", *args, check=check)


def user_venv(u: OtherUser, name: str, wheel: Path) -> Path:
    """A uv venv of the user's, with ``wheel`` installed by the user."""
    venv = u.home / name
    as_user(u, u.uv, "venv", "-q", "--python", u.python, str(venv))
    as_user(u, u.uv, "pip", "install", "-q", "--offline", "--python", str(venv / "bin" / "python"), str(wheel))
    return venv


def demo_wheel(u: OtherUser) -> Path:
    wheels = u.home / "wheels"
    wheel = build_wheel(wheels, simple_package())
    wheels.chmod(0o755)
    wheel.chmod(0o644)
    return wheel


def mount_options(mountpoint: Path) -> tuple[str, str, str]:
    """The file system type, mount options and super options of the topmost mount at ``mountpoint``."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mountpoint):
                sep = fields.index("-")
                found = (fields[sep + 1], fields[5], fields[sep + 3])
    assert found is not None, f"{mountpoint} is not mounted"
    return found


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def user_runtime(u: OtherUser) -> Path:
    """The runtime directory venvfs uses for a user without $XDG_RUNTIME_DIR and /run/user/UID."""
    return Path(f"/tmp/runtime-{u.uid}") / "venvfs"  # noqa: S108 - serviceclient's fallback, checked there


def errno_as(u: OtherUser, code: str) -> str:
    """What a few lines of Python, run as the user, print: an errno name or "ok"."""
    probe = (f"import errno, os, socket, sys\ntry:\n{code}\n    print('ok')\n"
             "except OSError as e:\n    print(errno.errorcode[e.errno])")
    return as_user(u, u.python, "-c", probe).stdout.strip()


def test_a_normal_user_mounts_imports_writes_and_unmounts(user: OtherUser) -> None:
    wheel = demo_wheel(user)
    one, two = user_venv(user, "one", wheel), user_venv(user, "two", wheel)
    proc = venvfs_as(user, "mount", "--mode", "fuse", str(one))
    assert "mounted" in proc.stdout, proc.stdout + proc.stderr
    # The store is the user's own, in its platformdirs data directory.
    store = user.home / ".local" / "share" / "venvfs" / "store"
    assert (store / "format.json").exists() and store.stat().st_uid == user.uid
    sp = Venv(one).site_packages
    fstype, options, super_options = mount_options(sp)
    assert fstype.startswith("fuse") and f"user_id={user.uid}" in super_options
    assert "allow_other" not in options + super_options, "a mount is its owner's alone unless asked"
    # Its daemon runs as the user, forked by the user's own service.
    daemon = _daemon_pid(one)
    service = _service_of(one)
    assert _status(daemon, "Uid") == str(user.uid) and _status(service, "Uid") == str(user.uid)
    assert "venvfs.cli.service" in _cmdline(service)
    runtime = user_runtime(user)
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700 and runtime.stat().st_uid == user.uid

    imported = as_user(user, str(one / "bin" / "python"), "-c", "import demo; print(demo.VERSION, demo.__file__)")
    assert imported.stdout.split() == ["1.0", str(sp / "demo" / "__init__.py")]
    helpers = sp / "demo" / "sub" / "helpers.py"
    as_user(user, "sh", "-c", f"echo 'TRIPLE = 3' >> {helpers}")
    assert (Venv(one).upper_dir / "demo" / "sub" / "helpers.py").read_text().endswith("TRIPLE = 3\n")
    status = venvfs_as(user, "status", str(one))
    assert "mounted" in status.stdout, status.stdout

    # A second call reuses the service; the copy-up stayed in the first venv.
    venvfs_as(user, "mount", "--mode", "fuse", str(two))
    assert _service_of(two) == service
    check = as_user(user, str(two / "bin" / "python"), "-c",
                    "import demo.sub.helpers as h; print(hasattr(h, 'TRIPLE'))")
    assert check.stdout.strip() == "False"

    for venv in (one, two):
        venvfs_as(user, "umount", str(venv))
        assert not is_mounted(Venv(venv).site_packages)
    # Unmounted, the write is kept (the upper layer), and the next mount shows it again.
    assert (Venv(one).upper_dir / "demo" / "sub" / "helpers.py").read_text().endswith("TRIPLE = 3\n")


def _venvfs_holders(u: OtherUser, venv: Path) -> list[int]:
    """The user's processes that hold the venv's daemon lock open: its keeper and daemon."""
    lock = str(venv / ".venvfs" / "daemon.lock")
    holders = []
    for pid in _processes_of(u.uid):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == lock for fd in Path(f"/proc/{pid}/fd").iterdir()):
                holders.append(pid)
    return holders


def test_a_normal_users_mount_outlives_its_killed_daemon(user: OtherUser) -> None:
    """Issue 18 as a normal user: the keeper (setuid fusermount3 handed it the /dev/fuse descriptor)
    starts a new daemon, as the user, on the same connection when the user kills the daemon."""
    venv = user_venv(user, "kept", demo_wheel(user))
    venvfs_as(user, "mount", "--mode", "fuse", str(venv))
    sp = Venv(venv).site_packages
    info = json.loads((venv / ".venvfs" / "daemon.json").read_text())
    keeper, server = int(info["pid"]), int(info["server"])
    assert server != keeper, f"the user's mount has no keeper: see {info['log']}"
    assert _status(keeper, "Uid") == _status(server, "Uid") == str(user.uid)
    imported = as_user(user, str(venv / "bin" / "python"), "-c", "import demo.sub.helpers as h; print(h.double(5))")
    assert imported.stdout.strip() == "10"

    as_user(user, user.python, "-c", f"import os, signal; os.kill({server}, signal.SIGKILL)")
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError, ValueError):
            now = json.loads((venv / ".venvfs" / "daemon.json").read_text())
            if now["restarts"] > info["restarts"] and now["server"] != server:
                break
        assert time.monotonic() < deadline, "no new daemon after the kill"
        time.sleep(0.02)
    assert now["pid"] == keeper and _status(int(now["server"]), "Uid") == str(user.uid)
    assert int(_status(int(now["server"]), "PPid")) == keeper
    # The same mount, served again: a fresh interpreter imports through it.
    assert mount_options(sp)[0].startswith("fuse")
    imported = as_user(user, str(venv / "bin" / "python"), "-c", "import demo.sub.helpers as h; print(h.double(6))")
    assert imported.stdout.strip() == "12", imported.stderr

    venvfs_as(user, "umount", str(venv))
    assert not is_mounted(sp)
    deadline = time.monotonic() + 10
    while _venvfs_holders(user, venv):  # the keeper lets go of the connection, and ends
        assert time.monotonic() < deadline, _venvfs_holders(user, venv)
        time.sleep(0.05)


def test_two_users_have_separate_services_closed_to_each_other(user: OtherUser, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Root's side: its own runtime directory and a store and venv where the user can reach them (a
    # 0755 directory), so that the kernel's checks on the store and the mount are what stop the user.
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv(serviceclient.DISABLE_ENV, raising=False)
    public = user.home / "root-owned"
    public.mkdir(mode=0o755)
    os.chown(public, 0, 0)
    wheel = demo_wheel(user)
    root_store = public / "store"
    root_venv = public / "venv"
    subprocess.run([uv(), "venv", "-q", "--python", sys.executable, str(root_venv)], check=True)
    subprocess.run([uv(), "pip", "install", "-q", "--offline", "--python", str(root_venv / "bin" / "python"),
                    str(wheel)], check=True)
    env = {**os.environ, "VENVFS_STORE": str(root_store)}
    subprocess.run([sys.executable, "-m", "venvfs", "mount", "--mode", "fuse", str(root_venv)], check=True,
                   env=env, capture_output=True)
    root_service = _service_of(root_venv)
    try:
        user_venv_path = user_venv(user, "mine", wheel)
        venvfs_as(user, "mount", "--mode", "fuse", str(user_venv_path))
        user_service = _service_of(user_venv_path)
        assert user_service != root_service
        assert _status(root_service, "Uid") == "0" and _status(user_service, "Uid") == str(user.uid)
        root_sock = serviceclient.socket_path(Store.open(root_store, create=False).root)
        assert root_sock is not None and root_sock.exists()
        user_sock = Path(as_user(user, user.python, "-c", "from venvfs.mount.serviceclient import socket_path; "
                                 "from venvfs.store.store import default_store_path as d; print(socket_path(d()))"
                                 ).stdout.strip())
        assert user_sock.parent == user_runtime(user) and user_sock.stat().st_uid == user.uid

        # The user cannot reach root's socket (its directory is 0700), nor read root's store or mount.
        assert errno_as(user, f"    socket.socket(socket.AF_UNIX).connect({str(root_sock)!r})") == "EACCES"
        assert errno_as(user, f"    os.listdir({str(root_store / 'objects')!r})") == "EACCES"
        root_sp = Venv(root_venv).site_packages
        assert errno_as(user, f"    os.listdir({str(root_sp)!r})") == "EACCES"
        assert "allow_other" not in "".join(mount_options(root_sp))
        # Root passes every mode check, so the user's service refuses it by its peer credentials; and
        # the kernel keeps root out of the user's mount (no allow_other).
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(user_sock))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(json.dumps({"op": "mount", "identity": serviceclient.identity(), "venv": "/",
                                      "store": "/"}).encode() + b"\n")
                s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b"refused\n"
        with pytest.raises(PermissionError):
            os.listdir(Venv(user_venv_path).site_packages)
        venvfs_as(user, "umount", str(user_venv_path))
    finally:
        subprocess.run([sys.executable, "-m", "venvfs", "umount", str(root_venv)], env=env, capture_output=True,
                       check=False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(root_service, signal.SIGTERM)


def test_closed_dev_fuse_falls_back_to_real_files_in_one_line(user: OtherUser) -> None:
    wheel = demo_wheel(user)
    venv = user_venv(user, "closed", wheel)
    os.chmod("/dev/fuse", 0o600)  # root, its owner, keeps it; the user loses it
    try:
        proc = venvfs_as(user, "mount", str(venv))
    finally:
        os.chmod("/dev/fuse", 0o666)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "no read/write permission on /dev/fuse" in lines[0] and "keeps real files" in lines[0], lines[0]
    sp = Venv(venv).site_packages
    assert not is_mounted(sp)
    imported = as_user(user, str(venv / "bin" / "python"), "-c", "import demo; print(demo.VERSION)")
    assert imported.stdout.strip() == "1.0"
    assert json.loads((venv / ".venvfs" / "state.json").read_text())["layout"] == "materialized"
    deadline = time.monotonic() + 5
    while any("venvfs.cli.service" in _cmdline(p) and f"--store {user.home}/" in _cmdline(p)
              for p in _processes_of(user.uid)):
        # Nothing to fork: a service started for nothing would linger for its idle time.
        assert time.monotonic() < deadline, "a mount service was started although FUSE is closed"
        time.sleep(0.1)


def test_without_xdg_runtime_dir_the_logind_directory_is_used(user: OtherUser) -> None:
    # A `su`/`runuser` shell has no $XDG_RUNTIME_DIR, yet the service systemd runs for the user
    # listens in /run/user/UID: commands must look there before the /tmp fallback.
    base = Path("/run/user")
    made_base = not base.exists()
    runtime = base / str(user.uid)
    if runtime.exists():
        missing_tool(f"{runtime} exists already (a session of {user.name}): not touching it")
    base.mkdir(mode=0o755, exist_ok=True)
    script = ("from venvfs.mount.serviceclient import socket_path; from venvfs.store.store import "
              "default_store_path as d; print(socket_path(d()))")
    try:
        runtime.mkdir(mode=0o700)
        os.chown(runtime, user.uid, user.gid)
        sock = Path(as_user(user, user.python, "-c", script).stdout.strip())
        assert sock.parent == runtime / "venvfs", sock
        runtime.chmod(0o755)  # not private: not used
        sock = Path(as_user(user, user.python, "-c", script).stdout.strip())
        assert sock.parent == user_runtime(user), sock
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
        if made_base:
            base.rmdir()
