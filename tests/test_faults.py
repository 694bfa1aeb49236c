"""Faults from ordinary life (issue 12, parts 4 and 7): full, read-only and forbidden filesystems, and
arguments that name the wrong thing. Each command answers with one line and a documented exit code,
leaves no traceback, and leaves nothing behind in the store."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, create_venv, missing_tool, run_cli, uv, venv_files
from tests.wheelbuilder import WheelSpec, build_wheel, simple_package
from venvfs.errors import EXIT_CODES, IOFailure, StoreError, UsageError
from venvfs.store.records import DistRecord, StoredFile
from venvfs.store.store import Store


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line a failing command prints; no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("venvfs: error: "), proc.stderr
    return lines[0]


def objects_in(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "objects").glob("*/*"))


def referenced_objects(store: Path) -> set[str]:
    names = set()
    for record in (store / "dists").glob("*.json"):
        for f in json.loads(record.read_text())["files"]:
            if f.get("digest"):
                names.add(f["digest"] + (".x" if f.get("executable") else ""))
    return names


def assert_no_orphans(store: Path) -> None:
    assert set(objects_in(store)) <= referenced_objects(store)
    assert not list((store / "tmp").iterdir())
    verify = run_cli(store, "store", "verify", "--json")
    report = json.loads(verify.stdout)
    assert report["ok"] is True and report["orphans"] == 0, report


def bulky_package(name: str, files: int, size: int, seed: int) -> WheelSpec:
    """A real wheel of incompressible files: what fills a small filesystem partway through."""
    rng = random.Random(seed)
    return WheelSpec(name=name, version="1.0", files={
        f"{name}/__init__.py": b"",
        **{f"{name}/blob{i:03}.bin": rng.randbytes(size) for i in range(files)},
    })


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        missing_tool("needs root (mounts a small tmpfs)")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# -- part 4: I/O errors ------------------------------------------------------------------------------

def test_io_error_exit_code_is_documented() -> None:
    assert EXIT_CODES[IOFailure.exit_code].startswith("I/O error")
    readme = (REPO / "README.md").read_text()
    assert f"| {IOFailure.exit_code} | " in readme and "| 141 | " in readme


def test_enospc_in_store_add_one_line_no_orphans(tmp_path: Path, compiled_wheel: Path) -> None:
    with small_tmpfs(tmp_path / "small", "2m") as fs:
        store = fs / "store"
        run_cli(store, "store", "add", str(compiled_wheel))
        before = objects_in(store)
        # Shares one file with what is stored: that object was not this run's, and must stay.
        shared_content = next(p for p in (store / "objects").glob("*/*") if p.stat().st_size > 100).read_bytes()
        spec = bulky_package("bulky", files=40, size=100_000, seed=1)
        spec = WheelSpec(name=spec.name, version=spec.version, files={**spec.files, "bulky/shared.txt": shared_content})
        wheel = build_wheel(tmp_path / "wheels", spec)
        proc = run_cli(store, "store", "add", str(wheel), check=False)
        line = one_line_error(proc)
        assert proc.returncode == IOFailure.exit_code, proc.stderr
        assert "no space left on device" in line and str(store) in line and wheel.name in line
        assert "needs up to" in line and "free there" in line
        assert objects_in(store) == before
        assert_no_orphans(store)
        assert [k.split("-")[0] for k in Store(store).dist_keys()] == ["markupsafe"]


def test_enospc_in_adopt_leaves_venv_and_store_as_they_were(tmp_path: Path) -> None:
    venv = create_venv(tmp_path / "venv")  # with pip: about 10 MB of real files
    before = venv_files(venv)
    with small_tmpfs(tmp_path / "small", "3m") as fs:
        store = fs / "store"
        proc = run_cli(store, "adopt", str(venv), "--no-hooks", "--link-mode", "copy", check=False)
        line = one_line_error(proc)
        assert proc.returncode == IOFailure.exit_code, proc.stderr
        assert "no space left on device" in line and f"adopting {venv}" in line and "needs up to" in line
        assert objects_in(store) == []
        assert_no_orphans(store)
    assert venv_files(venv) == before
    assert not (venv / ".venvfs" / "state.json").exists()


def test_enospc_in_add_of_a_wheel_one_line_no_orphans(tmp_path: Path) -> None:
    """`venvfs add VENV x.whl` ingests inside its own writing() block (the nested case)."""
    venv = create_venv(tmp_path / "venv", "uv")
    wheel = build_wheel(tmp_path / "wheels", bulky_package("bulky", files=30, size=100_000, seed=2))
    with small_tmpfs(tmp_path / "small", "2m") as fs:
        store = fs / "store"
        run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
        state = (venv / ".venvfs" / "state.json").read_text()
        proc = run_cli(store, "add", str(venv), str(wheel), check=False)
        line = one_line_error(proc)
        assert proc.returncode == IOFailure.exit_code, proc.stderr
        assert "no space left on device" in line and wheel.name in line
        assert_no_orphans(store)
        assert (venv / ".venvfs" / "state.json").read_text() == state
        assert not list(venv.glob("lib/python*/site-packages/bulky"))


def test_rollback_waits_for_a_concurrent_writer_and_keeps_what_it_published(tmp_path: Path) -> None:
    """The race the rollback rule is about, with two processes: writer B (this test) holds the store's
    shared lock while `store add` (A) fills the disk; A must wait for B, and an object A published
    first but B's record then names must survive A's rollback."""
    import fcntl
    import hashlib

    shared = b"both writers store this file\n" * 50
    bulky = bulky_package("bulky", files=30, size=100_000, seed=3)
    wheel = build_wheel(tmp_path / "wheels", WheelSpec(name="bulky", version="1.0",
                                                       files={"bulky/aaa_shared.txt": shared, **bulky.files}))
    with small_tmpfs(tmp_path / "small", "2m") as fs:
        store = Store.open(fs / "store")
        fd = os.open(store.root / "lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_SH)
        a = subprocess.Popen([sys.executable, "-m", "venvfs", "store", "add", "--store", str(store.root), str(wheel)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            # Until A, out of space, waits for the exclusive lock: it says so after a second (a
            # polled wait, so the kernel's lock table lists no waiter).
            assert a.stderr is not None
            waiting = a.stderr.readline()
            if "waiting for the lock on store" not in waiting:
                pytest.fail(f"the failed ingest never asked for the exclusive lock: {waiting}")
            digest = hashlib.sha256(shared).hexdigest()
            assert store.object_path(digest).exists()  # published by A, found "already stored" by B
            store.add_dist(DistRecord(name="other", version="1", dist_info="other-1.dist-info",
                                      tags=("py3-none-any",),
                                      files=(StoredFile("other/shared.txt", "purelib", digest, len(shared)),)))
            assert a.poll() is None  # still waiting for B
        finally:
            os.close(fd)
        _out, err = a.communicate(timeout=60)
        assert a.returncode == IOFailure.exit_code and "no space left" in err, err
        assert objects_in(fs / "store") == [digest]
        assert_no_orphans(fs / "store")


def test_failed_ingest_takes_back_only_what_no_record_names(tmp_path: Path) -> None:
    """The rollback rule: an object this run published stays when a record (another writer's, done
    under the shared lock before the rollback's exclusive lock) refers to it."""
    store = Store.open(tmp_path / "store")
    with pytest.raises(RuntimeError), store.writing():
        kept = store.put_stream(_stream(b"named by a record"))
        gone = store.put_stream(_stream(b"named by nothing"))
        store.add_dist(DistRecord(name="other", version="1", dist_info="other-1.dist-info", tags=("py3-none-any",),
                                  files=(StoredFile("other/a.py", "purelib", kept.digest, kept.size),)))
        raise RuntimeError("the disk filled up")
    assert store.object_path(kept.digest).exists()
    assert not store.object_path(gone.digest).exists()


def _stream(data: bytes):  # type: ignore[no-untyped-def]
    import io

    return io.BytesIO(data)


def test_nested_writing_blocks_roll_back_once_without_deadlock(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    again = Store(store.root)  # another object for the same store, as `venvfs add` has
    with pytest.raises(RuntimeError), store.writing():
        with again.writing():
            put = again.put_stream(_stream(b"inner"))
        raise RuntimeError("later failure")
    assert not store.object_path(put.digest).exists()


def test_verify_reports_orphans_and_gc_removes_them(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.put_stream(_stream(b"left behind by a crash"))
    proc = run_cli(store.root, "store", "verify")
    assert "1 object(s)" in proc.stdout and "store gc" in proc.stdout
    report = json.loads(run_cli(store.root, "store", "verify", "--json").stdout)
    assert report["ok"] is True and report["orphans"] == 1 and report["orphan_bytes"] > 0
    run_cli(store.root, "store", "gc")
    assert json.loads(run_cli(store.root, "store", "verify", "--json").stdout)["orphans"] == 0


def test_read_only_store_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing_tool("needs root (read-only bind mount)")
    store = tmp_path / "store"
    wheel = build_wheel(tmp_path / "wheels", simple_package("ro", "1.0"))
    run_cli(store, "store", "add", str(build_wheel(tmp_path / "wheels", simple_package("first", "1.0"))))
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(store), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        venv = create_venv(tmp_path / "venv")
        for args in (["store", "add", str(wheel)], ["adopt", str(venv), "--no-hooks"], ["store", "gc"]):
            proc = run_cli(ro, *args, check=False)
            line = one_line_error(proc)
            assert proc.returncode == IOFailure.exit_code, proc.stderr
            assert "read-only file system" in line and str(ro) in line, line
        assert run_cli(ro, "store", "list").stdout.startswith("first-1.0-")
        assert json.loads(run_cli(ro, "store", "verify", "--json").stdout)["ok"] is True
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's tmp_path sits below a 0700 directory of root's)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="venvfs-faults-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def nobody_python(tmp_path: Path) -> list[str]:
    """A command line running this venvfs as user nobody (setpriv), with an interpreter nobody can
    run: this one, or the system's of the same version when this one lives under /root."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        missing_tool("needs root and setpriv (runs venvfs as nobody)")
    site = [p for p in sys.path if p.endswith("site-packages")]
    env_path = ":".join([str(REPO), *site])
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for python in (sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}"):
        cmd = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
               "env", f"PYTHONPATH={env_path}", f"HOME={tmp_path}", python]
        probe = subprocess.run([*cmd, "-c", "import venvfs, pyfuse3, trio, packaging"], capture_output=True,
                               cwd="/")
        if probe.returncode == 0:
            return cmd
    missing_tool(f"no Python {version} that user nobody can run with venvfs's dependencies")
    raise AssertionError


def test_unwritable_store_one_line(public_dir: Path) -> None:
    tmp_path = public_dir
    cmd = nobody_python(tmp_path)
    store = tmp_path / "store"
    Store.open(store)
    os.chmod(store, 0o755)  # root's, opened up for reading: nobody may read it, not write it
    wheel = build_wheel(tmp_path / "wheels", simple_package("denied", "1.0"))
    proc = subprocess.run([*cmd, "-m", "venvfs", "store", "add", "--store", str(store), str(wheel)],
                          capture_output=True, text=True, cwd="/")
    line = one_line_error(proc)
    assert proc.returncode == IOFailure.exit_code, proc.stderr
    assert "permission denied" in line and str(store) in line
    proc = subprocess.run([*cmd, "-m", "venvfs", "store", "list", "--store", str(store)],
                          capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr


# -- part 7: arguments -------------------------------------------------------------------------------

def test_store_refuses_a_directory_that_is_not_a_store(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "wheels", simple_package("p", "1.0"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine\n")
    proc = run_cli(project, "store", "add", str(wheel), check=False)
    line = one_line_error(proc)
    assert proc.returncode == StoreError.exit_code and "not a venvfs store" in line
    assert sorted(os.listdir(project)) == ["notes.txt"]
    # An empty directory, or a missing one, is where a creating command may make a store.
    (tmp_path / "empty").mkdir()
    run_cli(tmp_path / "empty", "store", "add", str(wheel))
    run_cli(tmp_path / "new" / "store", "store", "add", str(wheel))


def test_read_only_commands_never_create_a_store(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    venv = create_venv(tmp_path / "venv", "uv")
    run_cli(gone, "adopt", str(venv), "--no-hooks", "--no-compile")
    shutil.rmtree(gone)
    for args in (["store", "list"], ["store", "status"], ["store", "verify"], ["store", "gc"],
                 ["status", str(venv)], ["list"]):
        proc = run_cli(gone, *args, check=False)
        line = one_line_error(proc)
        assert proc.returncode == StoreError.exit_code, (args, proc.stderr)
        assert "no venvfs store" in line, line
        assert not gone.exists(), args
    run_cli(gone, "umount", str(venv))  # needs no store (unless --materialize)
    assert not gone.exists()
    (tmp_path / "empty").mkdir()
    proc = run_cli(tmp_path / "empty", "store", "list", check=False)
    assert proc.returncode == StoreError.exit_code and os.listdir(tmp_path / "empty") == []


def test_help_says_which_commands_create_a_store() -> None:
    proc = subprocess.run([sys.executable, "-m", "venvfs", "store", "list", "--help"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "`store add`, `adopt`, `mount`, `add` and `create`" in " ".join(proc.stdout.split())


@pytest.mark.parametrize("where", ["file", "proc", "below-file"])
def test_store_that_cannot_be_a_store(tmp_path: Path, where: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    store = {"file": a_file, "proc": Path("/proc"), "below-file": a_file / "store"}[where]
    wheel = build_wheel(tmp_path / "wheels", simple_package("p", "1.0"))
    for args in (["store", "add", str(wheel)], ["store", "list"]):
        proc = run_cli(store, *args, check=False)
        one_line_error(proc)
        assert proc.returncode == StoreError.exit_code, proc.stderr
    assert a_file.read_text() == "x"


def python38() -> str:
    """A Python 3.8 that runs: pyenv's, one on PATH, or one uv finds (or installs, where it can)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8.*/bin/python3.8")))
    candidates += [p for p in [shutil.which("python3.8")] if p]
    for attempt in ("find", "install"):
        for python in candidates:
            if subprocess.run([python, "-c", "import sys; assert sys.version_info[:2] == (3, 8)"],
                              capture_output=True).returncode == 0:
                return python
        if attempt == "find":
            subprocess.run([uv(), "python", "install", "3.8"], capture_output=True)
        proc = subprocess.run([uv(), "python", "find", "3.8"], capture_output=True, text=True)
        candidates = [proc.stdout.strip()] if proc.returncode == 0 else []
    missing_tool("no Python 3.8 here, and uv could not get one")
    raise AssertionError


def test_python_too_old_for_the_probe(tmp_path: Path) -> None:
    venv = tmp_path / "old"
    subprocess.run([uv(), "venv", "-q", "--python", python38(), str(venv)], check=True)
    proc = run_cli(tmp_path / "store", "adopt", str(venv), "--no-hooks", check=False)
    line = one_line_error(proc)
    assert proc.returncode == 4
    assert line.startswith("venvfs: error: venvfs needs Python >= 3.") and "(found 3.8." in line
    assert len(line) < 200


def test_probe_says_which_python_it_needs(make_venv: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same path with the interpreter at hand: a minimum above it stands for packaging's."""
    from venvfs.errors import VenvError
    from venvfs.venv import venv as venv_module

    venv = venv_module.Venv.open(make_venv("v", tool="uv"))
    monkeypatch.setattr(venv_module, "_min_probe_python", lambda: "3.99")
    with pytest.raises(VenvError, match=r"^venvfs needs Python >= 3\.99 in the venv \(found 3\.\d+\.\d+ in "):
        venv.probe_interpreter()
    monkeypatch.undo()
    from importlib import metadata

    # The real minimum is packaging's own Requires-Python (">=3.10" for packaging 26).
    requires = (metadata.metadata("packaging")["Requires-Python"] or "").replace(" ", "")
    assert f">={venv_module._min_probe_python()}" in requires


def test_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    store = tmp_path / "store"
    wheel = build_wheel(tmp_path / "wheels", simple_package("piped", "1.0"))
    venv = create_venv(tmp_path / "venv", "uv")
    run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
    for args in (["add", str(venv), str(wheel)], ["store", "list"], ["--help"]):
        r, w = os.pipe()
        os.close(r)  # what `| head` leaves once head has exited
        try:
            words = args[:2] if args[0] == "store" else args[:1]
            rest = args[len(words):] + ([] if args == ["--help"] else ["--store", str(store)])
            proc = subprocess.run([sys.executable, "-m", "venvfs", *words, *rest], stdout=w,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        finally:
            os.close(w)
        # argparse itself drops what it cannot print (--help), and exits 0.
        assert proc.returncode == (0 if args == ["--help"] else 141), (args, proc.stderr)
        assert proc.stderr == "", (args, proc.stderr)


def test_fuse_fallback_names_dev_fuse_permissions(public_dir: Path) -> None:
    home = public_dir / "home"
    home.mkdir()
    os.chown(home, 65534, -1)
    cmd = nobody_python(home)
    venv = home / "venv"
    subprocess.run([*cmd, "-m", "venv", "--without-pip", str(venv)], check=True, cwd="/")
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o600)  # root, the owner, keeps using it: only nobody loses it
    try:
        proc = subprocess.run([*cmd, "-m", "venvfs", "mount", str(venv), "--store", str(home / "store")],
                              capture_output=True, text=True, cwd="/")
    finally:
        os.chmod("/dev/fuse", mode)
    assert proc.returncode == 0, proc.stderr
    assert "permission on /dev/fuse" in proc.stderr and "fuse_session_mount" not in proc.stderr, proc.stderr
    assert "keeps real files" in proc.stderr


def test_add_missing_wheel_file_touches_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    venv = create_venv(tmp_path / "venv", "uv")
    before = venv_files(venv)
    proc = run_cli(store, "add", str(venv), str(tmp_path / "typo-1.0-py3-none-any.whl"), check=False)
    line = one_line_error(proc)
    assert proc.returncode == UsageError.exit_code and "no such file" in line
    assert venv_files(venv) == before and not (venv / ".venvfs" / "state.json").exists()


def test_store_add_missing_file_fifo_and_empty_folder(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = run_cli(store, "store", "add", str(tmp_path / "missing.whl"), check=False)
    line = one_line_error(proc)
    assert proc.returncode == UsageError.exit_code and "no such file" in line and "missing.whl" in line
    assert not store.exists()
    (tmp_path / "empty").mkdir()
    proc = run_cli(store, "store", "add", str(tmp_path / "empty"), check=False)
    line = one_line_error(proc)
    assert proc.returncode == UsageError.exit_code and f"no wheels (*.whl files) in {tmp_path / 'empty'}" in line
    fifo = tmp_path / "x-1.0-py3-none-any.whl"
    os.mkfifo(fifo)
    try:
        proc = subprocess.run([sys.executable, "-m", "venvfs", "store", "add", "--store", str(store), str(fifo)],
                              capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        pytest.fail("store add hangs on a FIFO")
    line = one_line_error(proc)
    assert proc.returncode == UsageError.exit_code and "not a regular file" in line


def test_fuse_fallback_names_a_missing_module(tmp_path: Path) -> None:
    venv = create_venv(tmp_path / "venv", "uv")
    code = ("import sys; sys.modules['pyfuse3'] = None; from venvfs.cli.app import main; "
            f"sys.exit(main(['mount', {str(venv)!r}, '--store', {str(tmp_path / 'store')!r}, '--no-hooks']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "no module named 'pyfuse3'" in proc.stderr and "keeps real files" in proc.stderr, proc.stderr


def test_failed_mount_quotes_libfuse_from_the_log(tmp_path: Path) -> None:
    """libfuse gives pyfuse3 only "fuse_session_mount failed"; its reason is on the daemon's stderr."""
    from venvfs.mount.daemon import _libfuse_cause

    log = tmp_path / "daemon.log"
    log.write_text("venvfs: starting\nfusermount3: mount failed: Operation not permitted\nvenvfs: bye\n")
    assert _libfuse_cause(log) == ": fusermount3: mount failed: Operation not permitted"
    log.write_text("venvfs: nothing from libfuse\n")
    assert _libfuse_cause(log) == ""
    assert _libfuse_cause(tmp_path / "absent.log") == ""


def test_every_command_on_someone_elses_venv_and_store(public_dir: Path) -> None:
    """EACCES everywhere: user nobody runs each command on root's venv and store. Reading works;
    whatever needs a write ends in one line naming the path, with exit 74."""
    cmd = nobody_python(public_dir)
    store, venv = public_dir / "store", public_dir / "venv"
    subprocess.run([uv(), "venv", "-q", "--python", cmd[-1], str(venv)], check=True)
    wheel = build_wheel(public_dir / "wheels", simple_package("theirs", "1.0"))
    run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
    run_cli(store, "add", str(venv), str(wheel))
    subprocess.run(["chmod", "-R", "a+rX", str(public_dir)], check=True)
    reading = [["status", str(venv)], ["store", "list"], ["store", "status"], ["store", "verify"], ["list"]]
    writing = [["store", "gc"], ["store", "add", str(wheel)], ["adopt", str(venv)], ["add", str(venv), "theirs"],
               ["remove", str(venv), "theirs"], ["materialize", str(venv)], ["mount", str(venv)],
               ["umount", str(venv)], ["eject", str(venv)], ["hook", "install", str(venv)]]
    for args in reading + writing:
        words = args[:2] if args[0] in ("store", "hook") else args[:1]
        proc = subprocess.run([*cmd, "-m", "venvfs", *words, "--store", str(store), *args[len(words):]],
                              capture_output=True, text=True, cwd="/")
        if args in reading:
            assert proc.returncode == 0, (args, proc.stderr)
            continue
        line = one_line_error(proc)
        assert proc.returncode == IOFailure.exit_code, (args, proc.stderr)
        assert "permission denied" in line and str(public_dir) in line, (args, line)
