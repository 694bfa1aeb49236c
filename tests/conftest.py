"""Shared fixtures. Tiers: pure (no venv, no mount), venv (real venvs, real pip/uv), fuse (real mounts)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from venvfs.store.store import Store

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent

# Every test's store gets its own mount service (one per user and store); they go away after 10 s
# without a request instead of the default half hour, so a suite run leaves none behind.
os.environ.setdefault("VENVFS_SERVICE_IDLE", "10")


def writes_bytecode() -> dict[str, str]:
    """The environment with Python's bytecode writing on (a shell may have turned it off), for tests
    that check which .pyc files an import writes."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def missing_tool(reason: str) -> None:
    """A test's tool (FUSE, root, a shell) is missing: skip locally, but fail in CI, where a skipped
    core test would hide a broken install."""
    if IN_CI:
        pytest.fail(f"required in CI but missing: {reason}")
    pytest.skip(reason)


def fuse_problem() -> str | None:
    if not Path("/dev/fuse").exists():
        return "/dev/fuse does not exist"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    try:
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
    except ImportError as e:
        return f"pyfuse3/trio not importable ({e}); pip install 'venvfs[fuse]'"
    return None


@pytest.fixture
def require_fuse() -> None:
    problem = fuse_problem()
    if problem:
        missing_tool(problem)


@pytest.fixture(params=["no-open", "open"])
def fuse_mode(request: pytest.FixtureRequest, require_fuse: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a mount test in both of the daemon's configurations: the fast one (the kernel's "no open"
    mode; needs venvfs's pyfuse3 patch, which scripts/test installs) and the conservative one (an
    OPEN per file). Store bytecode is served as regular files in both (the default); the opt-in
    bytecode links have tests of their own (test_mount.py, ``linked``)."""
    mode: str = request.param
    if mode == "no-open":
        import pyfuse3

        if not (getattr(pyfuse3, "ZERO_FH_IS_INODE", False) and getattr(pyfuse3, "CACHE_SYMLINKS_OPTION", False)):
            missing_tool("pyfuse3 without venvfs's patch (scripts/build-pyfuse3 --install python3)")
    monkeypatch.setenv("VENVFS_NO_OPEN", "1" if mode == "no-open" else "0")
    monkeypatch.delenv("VENVFS_PYC_LINKS", raising=False)
    return mode


@pytest.fixture
def require_root() -> None:
    if os.geteuid() != 0:
        missing_tool("needs root (loop mounts)")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    root = tmp_path / "store"
    monkeypatch.setenv("VENVFS_STORE", str(root))
    return Store.open(root)


@pytest.fixture
def run_venvfs(store: Store) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real CLI in a subprocess (``python -m venvfs``) against the test's store."""

    def run(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VENVFS_STORE": str(store.root)}
        proc = subprocess.run(
            [sys.executable, "-m", "venvfs", *args], capture_output=True, text=True, env=env,
            timeout=600, **kwargs,  # type: ignore[call-overload]
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"venvfs {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc  # type: ignore[no-any-return]

    return run


def uv() -> str:
    path = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(path).exists():
        missing_tool("uv is not installed (pip install uv)")
    return path


@pytest.fixture
def make_venv(tmp_path: Path) -> Callable[..., Path]:
    """Create a real venv with ``venv`` (python -m venv), ``uv`` or ``virtualenv``."""

    def make(name: str = "venv", tool: str = "venv", parent: Path | None = None) -> Path:
        path = (parent or tmp_path) / name
        if tool == "venv":
            subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        elif tool == "uv":
            subprocess.run([uv(), "venv", "-q", "--python", sys.executable, str(path)], check=True)
        elif tool == "virtualenv":
            subprocess.run([sys.executable, "-m", "virtualenv", "-q", "--python", sys.executable, str(path)],
                           check=True)
        else:
            raise ValueError(tool)
        return path

    return make


def uv_pip(venv: Path, *args: str) -> None:
    subprocess.run([uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *args], check=True)


class _FailOnWarning(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def fail_on_logged_warning(request: pytest.FixtureRequest) -> Iterator[None]:
    """Like s3ql's plugin: a venvfs warning nobody expected is a test failure.

    Tests that provoke one on purpose say so with ``@pytest.mark.allow_warnings``.
    """
    handler = _FailOnWarning()
    logger = logging.getLogger("venvfs")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.records and request.node.get_closest_marker("allow_warnings") is None:
        messages = "\n".join(f"{r.levelname}: {r.getMessage()}" for r in handler.records)
        pytest.fail(f"unexpected venvfs warnings:\n{messages}")


def tree_snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under ``root`` (files, dirs, symlinks) with its type, mode and content digest: two
    equal snapshots mean the tree is byte-for-byte the same."""
    import hashlib
    import stat as stat_

    snap: dict[str, tuple[str, int, str]] = {}
    if not root.exists():
        return snap
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat_.S_ISLNK(st.st_mode):
                snap[rel] = ("link", 0, os.readlink(path))
            elif stat_.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", stat_.S_IMODE(st.st_mode), "")
            else:
                snap[rel] = ("file", stat_.S_IMODE(st.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return snap


@pytest.fixture(scope="session")
def compiled_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real wheel with a compiled extension, downloaded from PyPI once per session."""
    dest = tmp_path_factory.mktemp("pypi-wheels")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "--no-deps",
         "--dest", str(dest), "markupsafe"], capture_output=True, text=True,
    )
    if proc.returncode != 0:
        missing_tool(f"cannot download markupsafe from PyPI: {proc.stderr.strip()[-300:]}")
    (wheel,) = dest.glob("*.whl")
    return wheel


@pytest.fixture(scope="session")
def xfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A loop-mounted XFS filesystem with reflink support (root only), unmounted at the end."""
    if os.geteuid() != 0:
        missing_tool("needs root (loop-mounted XFS image)")
    if shutil.which("mkfs.xfs") is None:
        missing_tool("mkfs.xfs is not installed (apt-get install xfsprogs)")
    base = tmp_path_factory.mktemp("xfs")
    image, mnt = base / "xfs.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(320 << 20)  # sparse; XFS wants at least 300 MiB
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    proc = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        missing_tool(f"cannot loop-mount an XFS image: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        image.unlink(missing_ok=True)


def create_venv(path: Path, tool: str = "venv") -> Path:
    """What the ``make_venv`` fixture does, for module- and session-scoped fixtures."""
    if tool == "venv":
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    elif tool == "uv":
        subprocess.run([uv(), "venv", "-q", "--python", sys.executable, str(path)], check=True)
    elif tool == "virtualenv":
        subprocess.run([sys.executable, "-m", "virtualenv", "-q", "--python", sys.executable, str(path)], check=True)
    else:
        raise ValueError(tool)
    return path


def venv_files(venv: Path) -> dict[str, str]:
    """The venv's files (relative path -> sha256, or "-> target" for a symlink), without bytecode caches
    and venvfs's own state: what a user would call the venv's content."""
    import hashlib

    files: dict[str, str] = {}
    for dirpath, dirs, names in os.walk(venv):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", ".venvfs")]
        for name in names:
            path = Path(dirpath) / name
            rel = str(path.relative_to(venv))
            if path.is_symlink():
                files[rel] = "-> " + os.readlink(path)
            else:
                files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def run_cli(store: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """``python -m venvfs --store STORE ARGS`` (the store option goes after the subcommand words)."""
    words = [a for a in args if not a.startswith("-")][:2] if args and args[0] == "store" else list(args[:1])
    rest = list(args[len(words):])
    proc = subprocess.run([sys.executable, "-m", "venvfs", *words, "--store", str(store), *rest],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"venvfs {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(autouse=True)
def unmount_leftovers(tmp_path: Path) -> Iterator[None]:
    """Unmount whatever a test left mounted below its tmp_path (an automount hook can mount a venv
    from any interpreter start, ensurepip's included), so pytest can delete it and no daemon lingers."""
    yield
    prefix = str(tmp_path) + "/"
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4].replace("\\040", " ") for line in f]
    except OSError:
        return
    for point in points:
        if point.startswith(prefix) and shutil.which("fusermount3"):
            subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True, check=False)


def kill_daemon(venv: Path, *, watcher: bool) -> None:
    """SIGKILL the venv's mount daemon (and its keeper) and wait until it is gone. ``watcher``: kill the watcher that
    unmounts after a killed daemon first (venvfs/mount/watch.py), so that a dead mount stays, as when
    a whole cgroup is killed."""
    from venvfs.fsutil import read_json
    from venvfs.mount import daemon
    from venvfs.venv.venv import Venv

    v = Venv(venv)
    info = read_json(v.state_dir / "daemon.json")
    if watcher and info.get("watcher"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(info["watcher"]), signal.SIGKILL)
    # The keeper first (it would start another daemon), then the daemon it forked (venvfs/mount/keeper.py).
    os.kill(int(info["pid"]), signal.SIGKILL)
    if info.get("server") and info["server"] != info["pid"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(info["server"]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while daemon.daemon_pid(v) is not None:
        assert time.monotonic() < deadline, "the daemon outlived SIGKILL"
        time.sleep(0.02)
    if watcher:
        while daemon.mount_state(v) != "dead":
            assert time.monotonic() < deadline, "the mount did not die with its daemon"
            time.sleep(0.02)


def stop_mount(venv: Path) -> None:
    """pyfuse3 test/util.py style: stop the daemon (SIGTERM, then SIGKILL), then unmount lazily."""
    from venvfs.mount import daemon
    from venvfs.venv.venv import Venv

    v = Venv(venv)
    pid = daemon.daemon_pid(v)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        for _ in range(250):
            if daemon.daemon_pid(v) is None:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
    for sp in v.root.glob("lib/python*/site-packages"):
        if daemon.mounted_fstype(sp) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(sp)], check=False)


@pytest.fixture
def service_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A runtime directory of the test's own, where the mount service's socket goes, and the service
    allowed (the suite's default is without it)."""
    from venvfs.mount import serviceclient

    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv(serviceclient.DISABLE_ENV, raising=False)
    return runtime
