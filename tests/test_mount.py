"""Tier 3: real mounts of real venvs, each overlay semantic checked through the kernel with errnos."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import mmap
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, create_venv, kill_daemon, missing_tool, stop_mount, uv_pip, writes_bytecode
from tests.wheelbuilder import build_wheel, simple_package
from venvfs.hooks.target import PTH_NAME
from venvfs.mount import daemon
from venvfs.store.store import SOURCE_EPOCH, Store
from venvfs.venv.mountinfo import log_path
from venvfs.venv.venv import Venv

pytestmark = pytest.mark.fuse

Run = Callable[..., subprocess.CompletedProcess[str]]


@contextlib.contextmanager
def _mounted_demo(make_venv: Callable[..., Path], run_venvfs: Run, tmp_path: Path) -> Iterator[Venv]:
    """A uv venv of the demo wheel, adopted and mounted for the block."""
    wheel = build_wheel(tmp_path / "wheels", simple_package())
    path = make_venv("v", tool="uv")
    uv_pip(path, str(wheel))
    try:
        run_venvfs("mount", str(path))
        yield Venv.open(path)
    finally:
        stop_mount(path)


@pytest.fixture
def mounted(fuse_mode: str, store: Store, make_venv: Callable[..., Path], run_venvfs: Run,
            tmp_path: Path) -> Iterator[Venv]:
    with _mounted_demo(make_venv, run_venvfs, tmp_path) as venv:
        yield venv


def venvfs_env(store: Store, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "venvfs", *args], capture_output=True, text=True, timeout=300,
                          env={**env, "VENVFS_STORE": str(store.root), "PYTHONPATH": str(REPO)}, check=True)


def _expect(err: int, fn: Callable[[], object]) -> None:
    with pytest.raises(OSError) as e:
        fn()
    assert e.value.errno == err, e.value


def test_mount_serves_the_store_and_is_idempotent(mounted: Venv, run_venvfs: Run, fuse_mode: str) -> None:
    sp = mounted.site_packages
    assert daemon.mounted_fstype(sp) == "fuse.venvfs"
    info = json.loads((mounted.state_dir / "daemon.json").read_text())
    assert info["no_open"] is (fuse_mode == "no-open")
    assert info["pyc_links"] is False
    assert json.loads(mounted.state_dir.joinpath("state.json").read_text())["layout"] == "mounted"
    st = (sp / "demo/__init__.py").stat()
    assert st.st_mtime == SOURCE_EPOCH and st.st_mode & 0o777 == 0o644
    out = subprocess.run([str(mounted.python), "-c", "import demo.sub.helpers as h; print(h.double(21))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "42"
    pid = daemon.daemon_pid(mounted)
    assert "already mounted" in run_venvfs("mount", str(mounted.root)).stdout
    assert daemon.daemon_pid(mounted) == pid
    listed = json.loads(run_venvfs("list", "--json").stdout)
    assert [m["venv"] for m in listed] == [str(mounted.root)]
    assert listed[0]["no_open"] is (fuse_mode == "no-open")


def test_edit_through_the_mount_reads_back(mounted: Venv) -> None:
    f = mounted.site_packages / "demo/__init__.py"
    before = f.read_bytes()
    with open(f, "ab") as out:
        out.write(b"EXTRA = 1\n")
    assert f.read_bytes() == before + b"EXTRA = 1\n"
    assert f.stat().st_size == len(before) + 10
    assert (mounted.upper_dir / "demo/__init__.py").read_bytes() == before + b"EXTRA = 1\n"
    # An edited .py takes effect at the next import (its new mtime makes the store's .pyc stale).
    out = subprocess.run([str(mounted.python), "-c", "import demo; print(demo.EXTRA)"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "1"


def test_create_after_a_failed_lookup(mounted: Venv) -> None:
    f = mounted.site_packages / "demo/late.py"
    assert not f.exists()  # the kernel now caches "no such name"
    f.write_text("LATE = 1\n")
    assert f.read_text() == "LATE = 1\n"
    assert "late.py" in os.listdir(f.parent)


def test_copy_up_on_metadata_changes(mounted: Venv) -> None:
    sp = mounted.site_packages
    os.chmod(sp / "demo/sub/helpers.py", 0o600)
    assert (sp / "demo/sub/helpers.py").stat().st_mode & 0o777 == 0o600
    os.utime(sp / "demo/sub/__init__.py", (1_000_000_000, 1_000_000_000))
    assert (sp / "demo/sub/__init__.py").stat().st_mtime == 1_000_000_000
    os.truncate(sp / "demo/data/table.txt", 5)
    assert (sp / "demo/data/table.txt").read_bytes() == b"share"
    os.chown(sp / "demo/__init__.py", os.getuid(), os.getgid())
    for rel in ("demo/sub/helpers.py", "demo/sub/__init__.py", "demo/data/table.txt", "demo/__init__.py"):
        assert (mounted.upper_dir / rel).is_file(), rel
    assert os.listdir(mounted.state_dir / "work") == []


def test_whiteouts_and_opaque_directories(mounted: Venv) -> None:
    sp = mounted.site_packages
    os.unlink(sp / "demo/data/table.txt")
    _expect(errno.ENOENT, lambda: (sp / "demo/data/table.txt").stat())
    assert (mounted.upper_dir / "demo/data/.wh.table.txt").exists()
    _expect(errno.ENOTEMPTY, lambda: os.rmdir(sp / "demo/sub"))
    os.rmdir(sp / "demo/data")
    _expect(errno.ENOENT, lambda: os.listdir(sp / "demo/data"))
    os.mkdir(sp / "demo/data")
    assert os.listdir(sp / "demo/data") == []
    assert (mounted.upper_dir / "demo/data/.wh..wh..opq").exists()
    names = os.listdir(sp / "demo")
    assert len(names) == len(set(names))
    _expect(errno.EINVAL, lambda: (sp / "demo/.wh.sub").write_text(""))
    _expect(errno.ENOENT, lambda: (sp / "demo/.wh.data").stat())


def test_rename_of_store_directory_and_files(mounted: Venv) -> None:
    sp = mounted.site_packages
    os.rename(sp / "demo/sub", sp / "demo/moved")  # overlayfs says EXDEV here
    assert (sp / "demo/moved/helpers.py").read_text().startswith("def double")
    _expect(errno.ENOENT, lambda: (sp / "demo/sub").stat())
    os.rename(sp / "demo/data/table.txt", sp / "demo/table.txt")
    assert (sp / "demo/table.txt").read_bytes() == b"shared bytes " * 100
    os.mkdir(sp / "demo/sub")
    assert os.listdir(sp / "demo/sub") == []
    _expect(errno.ENOTEMPTY, lambda: os.rename(sp / "demo/sub", sp / "demo/moved"))


def _rename_exchange(a: Path, b: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_rename_exchange_swaps_names_atomically(mounted: Venv) -> None:
    sp = mounted.site_packages
    (sp / "demo/mine.txt").write_bytes(b"mine")
    _rename_exchange(sp / "demo/mine.txt", sp / "demo/data/table.txt")  # overlayfs: a whiteout dance
    assert (sp / "demo/data/table.txt").read_bytes() == b"mine"
    assert (sp / "demo/mine.txt").read_bytes() == b"shared bytes " * 100
    sub = sorted(os.listdir(sp / "demo/sub"))
    _rename_exchange(sp / "demo/sub", sp / "demo/data")  # two store directories
    assert sorted(os.listdir(sp / "demo/data")) == sub and "helpers.py" in sub
    assert (sp / "demo/sub/table.txt").read_bytes() == b"mine"
    _expect(errno.ENOENT, lambda: _rename_exchange(sp / "demo/nothing", sp / "demo/sub"))
    stop_mount(mounted.root)
    # The upper layer alone holds the result, readable with nothing mounted.
    assert (mounted.upper_dir / "demo/sub/table.txt").read_bytes() == b"mine"
    assert (mounted.upper_dir / "demo/data/helpers.py").read_text().startswith("def double")


def test_links_xattrs_statfs_and_long_names(mounted: Venv) -> None:
    sp = mounted.site_packages
    os.symlink("sub/helpers.py", sp / "demo/alias.py")
    assert os.readlink(sp / "demo/alias.py") == "sub/helpers.py"
    assert (sp / "demo/alias.py").read_text().startswith("def double")
    os.link(sp / "demo/__init__.py", sp / "demo/hard.py")
    a, b = (sp / "demo/__init__.py").stat(), (sp / "demo/hard.py").stat()
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    with open(sp / "demo/hard.py", "a") as f:
        f.write("# via the second name\n")
    assert (sp / "demo/__init__.py").read_text().endswith("# via the second name\n")
    os.setxattr(sp / "demo/hard.py", "user.venvfs-test", b"yes")
    assert os.getxattr(sp / "demo/__init__.py", "user.venvfs-test") == b"yes"
    _expect(errno.ENODATA, lambda: os.getxattr(sp / "demo/sub/helpers.py", "user.none"))
    assert os.statvfs(sp).f_namemax == 255 and os.statvfs(sp).f_blocks > 0
    _expect(errno.ENAMETOOLONG, lambda: (sp / ("n" * 256)).write_text(""))
    (sp / ("n" * 255)).write_text("ok")
    deep = sp / "d"
    parts = 0
    while len(str(deep)) < 3900:
        deep = deep / ("x" * 200)
        parts += 1
    deep.mkdir(parents=True)
    (deep / "f").write_text("deep")
    assert (deep / "f").read_text() == "deep"


def test_unlinked_open_file_mmap_and_fsync(mounted: Venv) -> None:
    sp = mounted.site_packages
    with open(sp / "demo/sub/helpers.py", "r+b") as f:
        os.unlink(sp / "demo/sub/helpers.py")
        f.write(b"# still here\n")
        f.flush()
        os.fsync(f.fileno())
        f.seek(0)
        assert f.read().startswith(b"# still here\n")
        assert os.fstat(f.fileno()).st_nlink == 0
    p = sp / "demo/map.bin"
    p.write_bytes(b"\0" * 8192)
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 8192, mmap.MAP_SHARED)
        m[:5] = b"mmap!"
        m.flush()
        m.close()
        os.fsync(f.fileno())
    assert (mounted.upper_dir / "demo/map.bin").read_bytes()[:5] == b"mmap!"


def test_open_with_o_trunc_empties_store_and_upper_files(mounted: Venv) -> None:
    # In no-open mode O_TRUNC never travels with an OPEN: it must arrive as a size change.
    sp = mounted.site_packages
    with open(sp / "demo/data/table.txt", "wb") as f:
        f.write(b"new")
    assert (sp / "demo/data/table.txt").read_bytes() == b"new"
    assert (mounted.upper_dir / "demo/data/table.txt").read_bytes() == b"new"
    with open(sp / "demo/data/table.txt", "wb") as f:
        f.write(b"z")
    assert (sp / "demo/data/table.txt").read_bytes() == b"z"
    os.close(os.open(sp / "demo/__init__.py", os.O_WRONLY | os.O_TRUNC))
    assert (sp / "demo/__init__.py").stat().st_size == 0
    assert (mounted.upper_dir / "demo/__init__.py").read_bytes() == b""


def test_listing_while_deleting_skips_nothing(mounted: Venv) -> None:
    d = mounted.site_packages / "demo/many"
    d.mkdir()
    for i in range(300):
        (d / f"f{i:03}.txt").write_text(str(i))
    with os.scandir(d) as it:
        for entry in it:
            os.unlink(entry.path)  # every unlink makes the kernel drop its cached listing
    assert os.listdir(d) == []
    assert os.listdir(mounted.upper_dir / "demo/many") == []


def test_more_open_files_than_the_daemon_keeps_fds_for(mounted: Venv) -> None:
    d = mounted.site_packages / "demo/lots"
    d.mkdir()
    paths = [d / f"{i:03}.bin" for i in range(300)]
    for p in paths:
        p.write_bytes(b"")
    files = [open(p, "r+b") for p in paths]  # noqa: SIM115 - all open at once, on purpose
    try:
        for mark in (b"A", b"B"):
            for f in files:
                f.write(mark)
                f.flush()
    finally:
        for f in files:
            f.close()
    assert {p.read_bytes() for p in paths} == {b"AB"}
    assert (mounted.site_packages / "demo/data/table.txt").read_bytes() == b"shared bytes " * 100


def _daemon_fds(pid: int) -> tuple[int, list[str]]:
    """How many fds the daemon holds, and which of them are files deleted since."""
    fds = os.listdir(f"/proc/{pid}/fd")
    deleted = []
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.endswith(" (deleted)"):
                deleted.append(target)
    return len(fds), deleted


def test_creating_and_deleting_many_files_leaks_no_fd(mounted: Venv, run_venvfs: Run, fuse_mode: str) -> None:
    """pip and uv create and delete thousands of files: under the usual limit of 1,024 open files
    the daemon must neither run out of fds nor keep deleted files' space allocated. (The per-open
    mode closes its fds on RELEASE; a few thousand files show a leak there too, in a fifth of the time.)"""
    import resource

    stop_mount(mounted.root)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    run_venvfs("mount", str(mounted.root), preexec_fn=limit)
    pid = daemon.daemon_pid(mounted)
    assert pid is not None
    # The kernel learns that the daemon takes no OPEN from its first OPEN (answered ENOSYS), and only
    # from then on sends no RELEASE: read a file first, as any Python start does.
    (mounted.site_packages / "demo/__init__.py").read_bytes()
    d = mounted.site_packages / "demo/churn"
    d.mkdir()
    (d / "warm").write_bytes(b"")
    start, _ = _daemon_fds(pid)
    block = b"y" * 4096
    count = 20_000 if fuse_mode == "no-open" else 3_000
    for i in range(count):
        p = d / f"f{i}"
        with open(p, "wb") as f:
            f.write(block)
        if i % 2:
            p.unlink()  # some deleted at once, the rest below, after their names were looked up again
    for i in range(0, count, 2):
        (d / f"f{i}").unlink()
    # The kernel queues a FORGET once an unlinked inode is evicted, and the daemon drops its fd then.
    for _ in range(100):
        end, deleted = _daemon_fds(pid)
        if not deleted:
            break
        time.sleep(0.05)
    # The daemon keeps a bounded cache of fds for files it serves by inode (INODE_FDS_MAX = 256).
    assert end - start <= 300, (start, end)
    assert deleted == []
    assert os.listdir(d) == ["warm"]
    assert not list((mounted.upper_dir / "demo/churn").glob("f*"))


def test_add_and_remove_change_a_listed_mount(mounted: Venv, run_venvfs: Run, tmp_path: Path) -> None:
    sp = mounted.site_packages
    before = set(os.listdir(sp))  # Python's startup lists it too: the kernel may now cache the listing
    wheel = build_wheel(tmp_path / "more", simple_package("extra", "1.0"))
    run_venvfs("add", str(mounted.root), str(wheel))
    assert {"extra", "extra-1.0.dist-info"} <= set(os.listdir(sp)) - before
    out = subprocess.run([str(mounted.python), "-c", "import extra.sub.helpers as h; print(h.double(3))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "6"
    run_venvfs("remove", str(mounted.root), "extra")
    assert set(os.listdir(sp)) == before
    gone = subprocess.run([str(mounted.python), "-c", "import extra"], capture_output=True, text=True)
    assert gone.returncode != 0 and "No module named 'extra'" in gone.stderr


def test_add_builds_the_index_the_daemon_reloads_to(mounted: Venv, run_venvfs: Run, tmp_path: Path) -> None:
    # The index of the new selection is built by `add`, before the daemon is told: a daemon that
    # builds the tree itself keeps the memory that took (~11 MB for the scientific set) for good.
    log = log_path(mounted)
    before = log.stat().st_size
    run_venvfs("add", str(mounted.root), str(build_wheel(tmp_path / "more", simple_package("extra", "1.0"))))
    assert "extra" in os.listdir(mounted.site_packages)
    with log.open() as f:
        f.seek(before)
        added = f.read()
    assert "reloaded the view" in added
    assert "built the view" not in added, added


def test_a_mount_finds_its_index_built(fuse_mode: str, store: Store, make_venv: Callable[..., Path],
                                      run_venvfs: Run, tmp_path: Path) -> None:
    # No index for the selection (a new one, or bytecode compiled since it was written): `mount`
    # builds it before the daemon starts, and the daemon maps it.
    path = make_venv("v", tool="uv")
    uv_pip(path, str(build_wheel(tmp_path / "wheels", simple_package())))
    try:
        run_venvfs("mount", str(path))
        venv = Venv.open(path)
        stop_mount(path)
        for index in (store.root / "views").glob("*.index"):
            index.unlink()
        before = log_path(venv).stat().st_size
        run_venvfs("mount", str(path))
        subprocess.run([str(venv.python), "-c", "import demo.sub.helpers"], check=True)
        with log_path(venv).open() as f:
            f.seek(before)
            log = f.read()
        assert "mounted " in log
        assert "built the view" not in log, log
    finally:
        stop_mount(path)


def test_add_to_an_empty_mounted_venv_shows_at_once(fuse_mode: str, store: Store, make_venv: Callable[..., Path],
                                                    run_venvfs: Run, tmp_path: Path) -> None:
    # An empty listing the kernel caches has no pages to drop: only a new mtime retires it.
    path = make_venv("empty", tool="uv")
    try:
        run_venvfs("mount", str(path))
        sp = Venv.open(path).site_packages
        assert os.listdir(sp) == []
        run_venvfs("add", str(path), str(build_wheel(tmp_path / "wheels", simple_package("extra", "1.0"))))
        assert sorted(os.listdir(sp)) == ["extra", "extra-1.0.dist-info"]
        subprocess.run([str(path / "bin/python"), "-c", "import extra.sub.helpers"], check=True)
    finally:
        stop_mount(path)


def test_first_import_writes_no_bytecode_for_store_files(mounted: Venv) -> None:
    subprocess.run([str(mounted.python), "-c", "import demo.sub.helpers"], check=True, env=writes_bytecode())
    written = [p for p in mounted.upper_dir.rglob("*.pyc")]
    assert written == []


def test_store_bytecode_is_served_by_the_mount(mounted: Venv, fuse_mode: str) -> None:
    pyc = mounted.site_packages / "demo/sub/__pycache__/helpers.cpython-311.pyc"
    assert json.loads((mounted.state_dir / "daemon.json").read_text())["pyc_links"] is False
    assert pyc.is_file() and not pyc.is_symlink()
    with open(pyc, "rb") as f:
        assert os.fstat(f.fileno()).st_dev == os.stat(mounted.site_packages).st_dev
    out = subprocess.run([str(mounted.python), "-X", "importtime", "-c", "import demo.sub.helpers"],
                         capture_output=True, text=True, check=True, env=writes_bytecode())
    assert "demo.sub.helpers" in out.stderr
    assert list(mounted.upper_dir.rglob("*.pyc")) == []


def _store_state(store: Store) -> dict[str, tuple[str, int, int, int]]:
    """Every store file's content, mode, mtime and inode: what no venv may change."""
    import hashlib

    state = {}
    for p in sorted(store.root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.parent.name not in ("tmp", "views") and p.name != "lock":
            st = p.stat()
            state[str(p.relative_to(store.root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode,
                                                      st.st_mtime_ns, st.st_ino)
    return state


@pytest.mark.allow_warnings
def test_no_write_through_the_mount_changes_the_store(mounted: Venv, store: Store, tmp_path: Path) -> None:
    """Every way to change a file, aimed at store files (bytecode included) through the mount, as
    root: the venv sees its change, the store keeps every byte, mode and mtime."""
    sp = mounted.site_packages
    before = _store_state(store)
    assert any(k.startswith("bytecode/") for k in before)
    init_pyc = sp / "demo/__pycache__/__init__.cpython-311.pyc"
    helpers_pyc = sp / "demo/sub/__pycache__/helpers.cpython-311.pyc"
    sub_pyc = sp / "demo/sub/__pycache__/__init__.cpython-311.pyc"
    table = sp / "demo/data/table.txt"
    with open(init_pyc, "r+b") as f:  # open for write, in place
        f.write(b"\0\0\0\0")
    with open(helpers_pyc, "ab") as f:
        f.write(b"appended")
    os.truncate(sp / "demo/sub/helpers.py", 0)
    os.chmod(table, 0o600)
    with open(table, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[0:1] = b"!"
    os.chown(sp / "demo/__init__.py", 1234, 1234)
    os.utime(sp / "demo/sub/__init__.py", (0, 0))
    os.setxattr(sub_pyc, "user.venvfs", b"x")
    os.link(sub_pyc, sp / "linked.pyc")
    with open(sp / "linked.pyc", "ab") as f:
        f.write(b"through a new link")
    (sp / "new.py").write_text("NEW = 1\n")
    os.rename(sp / "new.py", sp / "demo/sub/__init__.py")  # rename over a store file
    assert init_pyc.read_bytes()[:4] == b"\0\0\0\0" and helpers_pyc.read_bytes().endswith(b"appended")
    assert (sp / "demo/sub/helpers.py").read_bytes() == b""
    assert stat.S_IMODE(table.stat().st_mode) == 0o600 and table.read_bytes()[:1] == b"!"
    assert (sp / "demo/__init__.py").stat().st_uid == 1234
    assert os.getxattr(sub_pyc, "user.venvfs") == b"x" and sub_pyc.read_bytes().endswith(b"through a new link")
    assert (sp / "demo/sub/__init__.py").read_text() == "NEW = 1\n"
    assert _store_state(store) == before
    # What installers do: compileall -f rewrites every .pyc, pip reinstalls every file.
    subprocess.run([str(mounted.python), "-m", "compileall", "-q", "-f", str(sp / "demo")], check=True)
    wheel = next((tmp_path / "wheels").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(mounted.python), "install", "-q",
                    "--force-reinstall", "--no-deps", "--disable-pip-version-check", str(wheel)], check=True)
    subprocess.run([str(mounted.python), "-c", "import demo.sub.helpers as h; assert h.double(2) == 4"], check=True)
    assert _store_state(store) == before


@pytest.fixture
def linked(require_fuse: None, require_root: None, store: Store, make_venv: Callable[..., Path], run_venvfs: Run,
           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Venv]:
    """A mount with the opt-in bytecode links (``VENVFS_PYC_LINKS=1``, root only)."""
    from venvfs.fsflags import set_immutable

    monkeypatch.setenv("VENVFS_PYC_LINKS", "1")
    try:
        with _mounted_demo(make_venv, run_venvfs, tmp_path) as venv:
            yield venv
    finally:
        for pyc in (store.root / "bytecode").rglob("*.pyc"):  # or pytest could not remove the store
            set_immutable(pyc, False)


def test_bytecode_links_open_on_the_store_and_nothing_changes_it(linked: Venv, store: Store) -> None:
    from venvfs.fsflags import is_immutable

    sp = linked.site_packages
    pyc = sp / "demo/sub/__pycache__/helpers.cpython-311.pyc"
    stored = store.root / "bytecode" / "cpython-311"
    assert json.loads((linked.state_dir / "daemon.json").read_text())["pyc_links"] is True
    target = Path(os.readlink(pyc))
    assert target.is_relative_to(stored) and is_immutable(target)
    with open(pyc, "rb") as f:
        # The open (and the isatty() ioctl CPython's open() makes) lands on the store's own
        # filesystem, not on the FUSE mount.
        assert target.read_bytes() == f.read()
        assert os.fstat(f.fileno()).st_dev == os.stat(stored).st_dev != os.stat(sp).st_dev
    before = _store_state(store)
    # Calls that follow the link meet an immutable file: refused, for root too.
    for change in (lambda: os.open(pyc, os.O_WRONLY | os.O_APPEND), lambda: os.truncate(pyc, 0),
                   lambda: os.chmod(pyc, 0o666), lambda: os.utime(pyc, (0, 0)),
                   lambda: os.setxattr(pyc, "user.x", b"1"), lambda: os.chown(pyc, 1234, 1234)):
        _expect(errno.EPERM, change)
    assert _store_state(store) == before


def test_bytecode_links_give_way_to_recompiles(linked: Venv, store: Store, run_venvfs: Run) -> None:
    mounted = linked
    sp = mounted.site_packages
    pyc = sp / "demo/sub/__pycache__/helpers.cpython-311.pyc"
    store_pycs = {p: p.read_bytes() for p in (store.root / "bytecode").rglob("*.pyc")}
    # compileall (what pip and uv run after an install) finds the store's bytecode up to date.
    subprocess.run([str(mounted.python), "-m", "compileall", "-q", str(sp)], check=True)
    assert list(mounted.upper_dir.rglob("*.pyc")) == []
    # An edited source: Python writes fresh bytecode (temp file + rename), replacing the link only.
    with open(sp / "demo/sub/helpers.py", "a") as f:
        f.write("TRIPLE = 3\n")
    subprocess.run([str(mounted.python), "-c", "import demo.sub.helpers as h; assert h.TRIPLE == 3"], check=True,
                   env=writes_bytecode())
    assert pyc.is_file() and not pyc.is_symlink()
    assert (mounted.upper_dir / "demo/sub/__pycache__/helpers.cpython-311.pyc").is_file()
    # A renamed link is copied up as a link; a venv turned back into real files gets a copy of its own.
    init_pyc = sp / "demo/__pycache__/__init__.cpython-311.pyc"
    expected = init_pyc.read_bytes()
    os.rename(init_pyc, sp / "demo/__pycache__/moved.pyc")
    run_venvfs("umount", "--materialize", str(mounted.root))
    moved = sp / "demo/__pycache__/moved.pyc"
    assert moved.is_file() and not moved.is_symlink() and moved.read_bytes() == expected
    assert {p: p.read_bytes() for p in (store.root / "bytecode").rglob("*.pyc")} == store_pycs


@pytest.mark.allow_warnings
def test_missing_store_object_is_eio_and_the_daemon_lives(mounted: Venv, store: Store) -> None:
    sp = mounted.site_packages
    key = next(k for k in store.dist_keys() if k.startswith("demo-"))
    f = next(f for f in store.get_dist(key).files if f.path == "demo/sub/helpers.py")
    assert f.digest is not None
    store.object_path(f.digest).unlink()
    _expect(errno.EIO, lambda: (sp / "demo/sub/helpers.py").read_bytes())
    assert (sp / "demo/data/table.txt").read_bytes() == b"shared bytes " * 100
    assert daemon.daemon_pid(mounted) is not None


def test_kill_9_loses_no_returned_write_and_mount_recovers(mounted: Venv, run_venvfs: Run) -> None:
    sp = mounted.site_packages
    (sp / "demo/written.txt").write_text("before the kill")
    with open(sp / "demo/__init__.py", "a") as f:
        f.write("AFTER = 1\n")
    kill_daemon(mounted.root, watcher=True)  # a dead mount left behind, as when a cgroup is killed
    _expect(errno.ENOTCONN, lambda: os.listdir(sp))
    assert daemon.mount_state(mounted) == "dead"
    run_venvfs("mount", str(mounted.root))
    assert daemon.mount_state(mounted) == "mounted"
    assert (sp / "demo/written.txt").read_text() == "before the kill"
    assert (sp / "demo/__init__.py").read_text().endswith("AFTER = 1\n")


def test_concurrent_mounts_give_one_daemon(mounted: Venv, run_venvfs: Run) -> None:
    run_venvfs("umount", str(mounted.root))
    assert daemon.mount_state(mounted) == "unmounted"
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda: results.append(run_venvfs("mount", str(mounted.root))))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(r.returncode == 0 for r in results)
    # One daemon means one FUSE mount at the mount point (daemons forked by the mount service carry
    # the service's command line, so the process table cannot tell).
    points = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split(" - ")[0].split()[4] == str(mounted.site_packages)]
    assert len(points) == 1, points
    assert sum("already mounted" in r.stdout for r in results) == 2


def test_umount_with_open_files_and_sigterm(mounted: Venv, run_venvfs: Run) -> None:
    sp = mounted.site_packages
    f = open(sp / "demo/__init__.py", "rb")  # noqa: SIM115 - held open across the unmount on purpose
    try:
        assert "unmounted" in run_venvfs("umount", str(mounted.root)).stdout
        assert daemon.mounted_fstype(sp) is None
    finally:
        with contextlib.suppress(OSError):
            f.close()  # ENOTCONN: the lazily detached mount has no daemon to flush to
    # The mounted layout: underneath, site-packages holds only the automount hook, for the next start.
    assert os.listdir(sp) == [PTH_NAME]
    run_venvfs("mount", str(mounted.root))
    pid = daemon.daemon_pid(mounted)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    for _ in range(250):
        if daemon.mounted_fstype(sp) is None and daemon.daemon_pid(mounted) is None:
            break
        time.sleep(0.02)
    assert daemon.mounted_fstype(sp) is None


def test_umount_materialize_round_trip_keeps_every_change(mounted: Venv, run_venvfs: Run) -> None:
    sp = mounted.site_packages
    (sp / "demo/own.txt").write_text("mine")
    os.unlink(sp / "demo/data/table.txt")
    os.rename(sp / "demo/sub", sp / "demo/sub2")
    with open(sp / "demo/__init__.py", "a") as f:
        f.write("EDIT = 1\n")
    run_venvfs("umount", "--materialize", str(mounted.root))
    assert (sp / "demo/own.txt").read_text() == "mine"
    assert not (sp / "demo/data/table.txt").exists() and not (sp / "demo/sub").exists()
    assert (sp / "demo/sub2/helpers.py").is_file()
    assert (sp / "demo/__init__.py").read_text().endswith("EDIT = 1\n")
    assert json.loads((mounted.state_dir / "state.json").read_text())["layout"] == "materialized"
    run_venvfs("mount", str(mounted.root))
    assert (sp / "demo/own.txt").read_text() == "mine"
    assert not (sp / "demo/data/table.txt").exists() and not (sp / "demo/sub").exists()
    assert (sp / "demo/__init__.py").read_text().endswith("EDIT = 1\n")


def test_the_mount_is_the_owners_alone_unless_allow_other(require_fuse: None, require_root: None, store: Store,
                                                          run_venvfs: Run, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        missing_tool("setpriv (util-linux)")
    # Under /tmp itself: pytest's own temporary directories are closed to other users.
    base = Path(tempfile.mkdtemp(prefix="venvfs-allow-other-"))
    base.chmod(0o755)
    venv = create_venv(base / "v", "uv")
    try:
        uv_pip(venv, str(build_wheel(tmp_path / "wheels", simple_package())))
        sp = Venv.open(venv).site_packages
        init = sp / "demo/__init__.py"

        def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
                                  capture_output=True, text=True, timeout=60)

        run_venvfs("mount", str(venv))
        denied = as_nobody("cat", str(init))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        stop_mount(venv)

        run_venvfs("mount", "--allow-other", str(venv))
        # Other users may not enter the owner's store: bytecode is served as files, not store links.
        assert not (sp / "demo/sub/__pycache__/helpers.cpython-311.pyc").is_symlink()
        assert as_nobody(str(Venv.open(venv).python), "-c", "import demo.sub.helpers").returncode == 0
        before = init.read_bytes()
        shared = as_nobody("cat", str(init))
        assert shared.returncode == 0 and shared.stdout.encode() == before
        # Other users get what the mode bits give them (default_permissions): no writes, no new files.
        for cmd in (["sh", "-c", f"echo x >> '{init}'"], ["touch", str(sp / "demo/intruder.py")],
                    ["rm", "-f", str(init)]):
            r = as_nobody(*cmd)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (cmd, r.stderr)
        assert init.read_bytes() == before
        assert not (sp / "demo/intruder.py").exists()
        assert not (Venv.open(venv).upper_dir / "demo").exists()
    finally:
        stop_mount(venv)
        shutil.rmtree(base)


def test_fallback_when_fuse_is_disabled(require_fuse: None, store: Store, make_venv: Callable[..., Path],
                                        run_venvfs: Run, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "wheels", simple_package())
    path = make_venv("v", tool="uv")
    uv_pip(path, str(wheel))
    proc = venvfs_env(store, "mount", str(path), env={**os.environ, daemon.DISABLE_ENV: "1"})
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and daemon.DISABLE_ENV in lines[0], proc.stderr
    venv = Venv.open(path)
    assert daemon.mounted_fstype(venv.site_packages) is None
    # A real case: no fusermount3 on PATH.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(sys.executable, bindir / "python3")
    proc = venvfs_env(store, "mount", str(path), env={"PATH": str(bindir), "HOME": os.environ.get("HOME", "/")})
    assert "fusermount3" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    out = subprocess.run([str(venv.python), "-c", "import demo.sub.helpers"], check=True)
    assert out.returncode == 0


def test_umount_after_the_venv_was_deleted_under_its_mount(mounted: Venv, run_venvfs: Run) -> None:
    """`rm -rf` of a mounted venv removes pyvenv.cfg and the upper layer but cannot remove the busy
    mount point: `venvfs umount` must still take the mount away, so the rest can be deleted."""
    sp = mounted.site_packages
    # A live daemon detaches itself once its venv is being removed (test_unmounted.py); a dead mount,
    # whose daemon and watcher were killed together, stays for `venvfs umount` to take away.
    kill_daemon(mounted.root, watcher=True)
    shutil.rmtree(mounted.state_dir / "upper", ignore_errors=True)
    (mounted.root / "pyvenv.cfg").unlink()
    assert daemon.mounted_fstype(sp) == "fuse.venvfs"
    proc = run_venvfs("umount", str(mounted.root))
    assert proc.returncode == 0
    assert daemon.mounted_fstype(sp) is None
    shutil.rmtree(mounted.root)
