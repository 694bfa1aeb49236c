"""``venvfs create`` (issue 16, point 2): a venv made, selected from the store, mounted and hooked in
one command; what the store lacks installed by real uv or pip and stored before it returns; bad
input refused with one line and nothing left behind. Real venvs, real wheels, real mounts."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import missing_tool
from tests.wheelbuilder import WheelSpec, build_wheel, simple_package
from venvfs.store.store import Store
from venvfs.venv.mountinfo import mount_state, venvfs_mounts_below
from venvfs.venv.venv import Venv

Run = Callable[..., subprocess.CompletedProcess[str]]
PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture
def stored(tmp_path: Path, run_venvfs: Run) -> Path:
    """The store holds demo 1.0 (which requires helper) and helper 1.0; ``extra`` 2.0 is only in a
    wheelhouse (the returned directory), for what the store lacks."""
    build_wheel(tmp_path / "in-store", simple_package("demo", "1.0", requires=("helper>=1",)))
    build_wheel(tmp_path / "in-store", simple_package("helper", "1.0"))
    wheels = tmp_path / "wheelhouse"
    build_wheel(wheels, simple_package("extra", "2.0"))
    run_venvfs("store", "add", str(tmp_path / "in-store"))
    return wheels


@pytest.fixture(autouse=True)
def unmount_created(tmp_path: Path) -> Iterator[None]:
    yield
    for point in venvfs_mounts_below(tmp_path):
        subprocess.run(["fusermount3", "-u", "-z", str(point)], capture_output=True, check=False)


def _imports(venv: Path, *modules: str) -> str:
    code = "; ".join(f"import {m}" for m in modules) + f"; print({modules[0]}.__file__)"
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _selection(venv: Path) -> list[str]:
    return list(json.loads((venv / ".venvfs" / "state.json").read_text())["selection"])


def _store_keys(run_venvfs: Run) -> dict[str, int]:
    return {r["key"]: r["venvs"] for r in json.loads(run_venvfs("store", "list", "--json").stdout)}


def _registered(store: Store) -> list[Path]:
    return store.registered_venvs()


def test_create_selects_from_the_store_mounts_and_hooks(require_fuse: None, service_env: Path, store: Store,
                                                        stored: Path, tmp_path: Path, run_venvfs: Run) -> None:
    venv = tmp_path / "proj" / ".venv"
    out = json.loads(run_venvfs("create", str(venv), "demo", "--json").stdout)
    assert out["mount"] == "fuse" and out["made_with"] == "uv" and out["installed"] == []
    assert sorted(k.split("-")[0] for k in out["selected"]) == ["demo", "helper"], "helper came as a dependency"
    assert mount_state(Venv(venv)) == "mounted"
    assert _imports(venv, "demo", "helper").startswith(str(venv / "lib" / PY / "site-packages" / "demo"))
    # Mounted by a daemon the user's service forked, with the automount hooks of `venvfs mount`.
    service = json.loads((venv / ".venvfs" / "daemon.json").read_text())["service"]
    assert b"venvfs.cli.service" in Path(f"/proc/{service}/cmdline").read_bytes()
    assert "venvfs" in (venv / "bin" / "activate").read_text()
    hooks = json.loads(run_venvfs("hook", "status", str(venv), "--json").stdout)
    assert hooks["ok"] and hooks["pth"] == "hidden", hooks
    assert {s["shell"]: s["state"] for s in hooks["scripts"]}["sh"] == "installed"
    assert venv in _registered(store)
    # Nothing was stored for it: the store's files are shared, the upper layer holds no package files.
    assert not list((venv / ".venvfs" / "upper").rglob("*.py"))


def test_create_from_a_requirements_file_installs_and_stores_what_the_store_lacks(
        require_fuse: None, service_env: Path, store: Store, stored: Path, tmp_path: Path, run_venvfs: Run) -> None:
    (tmp_path / "base.txt").write_text("helper>=1  # from the store\n")
    req = tmp_path / "requirements.txt"
    req.write_text(f"-r base.txt\n\n# a comment\ndemo==1.0 \\\n  ; python_version >= '3'\n"
                   f"--find-links {stored.name}\n--no-index\nextra\n")
    venv = tmp_path / "venv"
    out = json.loads(run_venvfs("create", str(venv), "-r", str(req), "--json").stdout)
    assert out["installer"] == "uv"
    assert [k.split("-")[0] for k in out["installed"]] == ["extra"]
    assert sorted(k.split("-")[0] for k in _selection(venv)) == ["demo", "extra", "helper"]
    _imports(venv, "extra", "demo", "helper")
    # Stored before create returned: selected, served from the store, and not left in the upper layer.
    keys = _store_keys(run_venvfs)
    assert any(k.startswith("extra-2.0-") for k in keys)
    assert not (venv / ".venvfs" / "upper" / "extra").exists()
    assert json.loads(run_venvfs("status", str(venv), "--json").stdout)["pending_ingest"] == {}
    # ... so the next venv takes it from the store, with nothing to install.
    again = json.loads(run_venvfs("create", str(tmp_path / "again"), "extra", "--no-install", "--json").stdout)
    assert again["installed"] == [] and [k.split("-")[0] for k in again["selected"]] == ["extra"]
    run_venvfs("store", "verify")


def test_create_like_selects_the_same_builds(require_fuse: None, service_env: Path, store: Store, stored: Path,
                                             tmp_path: Path, run_venvfs: Run) -> None:
    first = tmp_path / "first"
    run_venvfs("create", str(first), "demo", "extra", "-f", str(stored), "--no-index")
    second = tmp_path / "second"
    out = json.loads(run_venvfs("create", str(second), "--like", str(first), "--json").stdout)
    assert sorted(_selection(second)) == sorted(_selection(first)) and len(_selection(first)) == 3
    assert out["installed"] == [] and out["not_copied"] == {}
    _imports(second, "demo", "helper", "extra")
    assert _store_keys(run_venvfs) == {k: 2 for k in _selection(first)}


def test_packages_after_and_between_options(require_fuse: None, service_env: Path, store: Store, stored: Path,
                                           tmp_path: Path, run_venvfs: Run) -> None:
    """As pip and uv take them: ``create DIR --python X numpy`` once left numpy unrecognized (exit 2),
    argparse having filled PKG, empty, from the words before the first option."""
    venv = tmp_path / "venv"
    proc = run_venvfs("create", str(venv), "--python", PY, "demo", "-f", str(stored), "--no-index", "extra", "--json",
                      check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["python"].startswith(PY.removeprefix("python"))
    assert [k.split("-")[0] for k in out["installed"]] == ["extra"]
    assert sorted(k.split("-")[0] for k in _selection(venv)) == ["demo", "extra", "helper"]
    _imports(venv, "demo", "helper", "extra")
    # Packages first, options last, as before.
    again = tmp_path / "again"
    run_venvfs("create", str(again), "demo", "extra", "--no-install", "--python", PY)
    assert sorted(_selection(again)) == sorted(_selection(venv))
    # DIR is still the first word, wherever the options are; a missing DIR names only DIR.
    proc = run_venvfs("create", "--no-install", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith("required: DIR"), proc.stderr


def test_create_without_uv_uses_venv_and_pip(require_fuse: None, service_env: Path, store: Store, stored: Path,
                                            tmp_path: Path) -> None:
    no_uv = ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "uv").exists())
    env = {**os.environ, "PATH": no_uv, "VENVFS_STORE": str(store.root)}
    venv = tmp_path / "venv"
    proc = subprocess.run([sys.executable, "-m", "venvfs", "create", str(venv), "demo", "extra", "-f", str(stored),
                           "--no-index", "--json"], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["made_with"] == "venv" and out["installer"] == "pip"
    assert [k.split("-")[0] for k in out["installed"]] == ["extra"]
    _imports(venv, "demo", "extra")
    assert mount_state(Venv(venv)) == "mounted"


def test_create_without_fuse_places_real_files(service_env: Path, store: Store, stored: Path, tmp_path: Path,
                                              run_venvfs: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENVFS_DISABLE_FUSE", "1")
    venv = tmp_path / "venv"
    proc = run_venvfs("create", str(venv), "demo", "extra", "-f", str(stored), "--no-index", "--json")
    out = json.loads(proc.stdout)
    assert out["mount"] == "materialized" and "VENVFS_DISABLE_FUSE" in proc.stderr
    assert [k.split("-")[0] for k in out["installed"]] == ["extra"]
    _imports(venv, "demo", "extra")
    assert mount_state(Venv(venv)) == "unmounted"


def test_eight_creates_at_once_on_one_store(require_fuse: None, service_env: Path, store: Store, stored: Path,
                                            tmp_path: Path, run_venvfs: Run) -> None:
    venvs = [tmp_path / f"v{i}" for i in range(8)]
    env = {**os.environ, "VENVFS_STORE": str(store.root)}
    # extra is in no store yet: all eight install it and ingest it at the same time.
    procs = [subprocess.Popen([sys.executable, "-m", "venvfs", "create", str(v), "demo", "extra", "-f", str(stored),
                               "--no-index", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for v in venvs]
    results = [(p.wait(timeout=600), p.communicate()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    for v in venvs:
        assert mount_state(Venv(v)) == "mounted"
        _imports(v, "demo", "helper", "extra")
    keys = _store_keys(run_venvfs)
    assert sorted(k.split("-")[0] for k in keys) == ["demo", "extra", "helper"], "one build each, not eight"
    assert set(keys.values()) == {8}
    assert {tuple(sorted(_selection(v))) for v in venvs} == {tuple(sorted(keys))}
    assert "ok" in run_venvfs("store", "verify").stdout
    assert len(json.loads(run_venvfs("list", "--json").stdout)) == 8


# -- bad input: one line, a non-zero exit code, nothing left ------------------------------------------------

def _other_python() -> str:
    """An interpreter of another minor version than this one (pyenv's, where uv looks too)."""
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3.*"))):
        name = Path(candidate).name
        if (name.count(".") == 1 and not name.endswith(mine) and not name.endswith("-config")
                and subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False).returncode == 0):
            return candidate
    for minor in (12, 13, 10):
        found = subprocess.run(["uv", "python", "find", f"3.{minor}"], capture_output=True, text=True, check=False)
        if found.returncode == 0 and not found.stdout.strip().endswith(mine):
            return found.stdout.strip()
    missing_tool(f"no Python other than {mine} on this machine")
    raise AssertionError


def _refused(run_venvfs: Run, store: Store, tmp_path: Path, args: list[str], code: int) -> str:
    before = sorted(p.name for p in tmp_path.iterdir())
    registered, mounted = _registered(store), venvfs_mounts_below(tmp_path)
    proc = run_venvfs("create", *args, check=False)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("venvfs: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing left behind"
    assert _registered(store) == registered, "no registry entry left"
    assert venvfs_mounts_below(tmp_path) == mounted
    return lines[0]


def test_bad_input_leaves_nothing(require_fuse: None, service_env: Path, store: Store, stored: Path,
                                  tmp_path: Path, run_venvfs: Run) -> None:
    # DIR holds something and is no venv: refused, its contents as they were.
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "not a venv" in _refused(run_venvfs, store, tmp_path, [str(busy), "demo"], 2)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    # DIR is a venv already: `venvfs add` is for that.
    plain = tmp_path / "plain"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(plain)], check=True)
    assert "already a venv" in _refused(run_venvfs, store, tmp_path, [str(plain), "demo"], 2)
    # An unknown package (not stored, not installable): the venv made and mounted for it goes again,
    # parents it made included.
    line = _refused(run_venvfs, store, tmp_path, [str(tmp_path / "new" / "deep" / "venv"), "demo", "nosuchpkg",
                                                  "--no-index"], 8)
    assert "nosuchpkg" in line and "uv" in line
    # An empty DIR is used (as uv venv and python -m venv use one), and left empty on failure.
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(run_venvfs, store, tmp_path, [str(empty), "nosuchpkg", "--no-index"], 8)
    assert list(empty.iterdir()) == []
    # --like of a venv venvfs does not manage, and of a directory that is no venv.
    assert "not a venvfs venv" in _refused(run_venvfs, store, tmp_path, [str(tmp_path / "x"), "--like", str(plain)], 4)
    assert "not a venvfs venv" in _refused(run_venvfs, store, tmp_path, [str(tmp_path / "x"), "--like", str(busy)], 4)
    # A Python uv cannot find, a requirements file that is not there, a requirement that is none.
    assert "--python" in _refused(run_venvfs, store, tmp_path, [str(tmp_path / "x"), "demo", "--python", "3.99"], 2)
    _refused(run_venvfs, store, tmp_path, [str(tmp_path / "x"), "-r", str(tmp_path / "nope.txt")], 2)
    _refused(run_venvfs, store, tmp_path, [str(tmp_path / "x"), "demo=>1"], 2)
    # A requirements line selecting from the store cannot honour (an editable install), named.
    (tmp_path / "editable.txt").write_text("demo\n-e ./src\n")
    assert "editable.txt:2" in _refused(run_venvfs, store, tmp_path,
                                        [str(tmp_path / "x"), "-r", str(tmp_path / "editable.txt")], 2)
    _refused(run_venvfs, store, tmp_path, [str(tmp_path / "x"), "demo", "--like", str(busy)], 2)
    assert run_venvfs("store", "verify").returncode == 0


def test_a_python_the_store_has_no_builds_for(require_fuse: None, service_env: Path, store: Store,
                                              tmp_path: Path, run_venvfs: Run) -> None:
    mine = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    build_wheel(tmp_path / "w", WheelSpec("native", "1.0", tag=f"{mine}-{mine}-linux_x86_64",
                                          files={"native/__init__.py": b""}))
    run_venvfs("store", "add", str(tmp_path / "w"))
    other = _other_python()
    line = _refused(run_venvfs, store, tmp_path, [str(tmp_path / "v"), "native", "--python", other, "--no-index"], 8)
    assert "no stored build of native fits Python 3." in line and mine in line
    # --like a venv of this Python, for another one: the same builds cannot serve it.
    run_venvfs("create", str(tmp_path / "mine"), "native")
    line = _refused(run_venvfs, store, tmp_path, [str(tmp_path / "v"), "--like", str(tmp_path / "mine"),
                                                  "--python", other], 8)
    assert "--like" in line


def _installing(session: int) -> bool:
    """Whether an installer (``uv pip install``) runs in the session ``session``."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat_file.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[3]) == session and b"pip" in cmdline and b"install" in cmdline:
            return True
    return False


def test_ctrl_c_during_create_leaves_nothing(require_fuse: None, service_env: Path, store: Store, tmp_path: Path,
                                             run_venvfs: Run) -> None:
    # A wheel of many files, installed through the mount, keeps create busy long enough to interrupt.
    files = {f"big/m{i}.py": b"x = %d\n" % i for i in range(3000)}
    build_wheel(tmp_path / "wheels", WheelSpec("big", "1.0", files={"big/__init__.py": b"", **files}))
    venv = tmp_path / "venv"
    registered = _registered(store)
    proc = subprocess.Popen([sys.executable, "-m", "venvfs", "create", str(venv), "big", "-f",
                             str(tmp_path / "wheels"), "--no-index"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "VENVFS_STORE": str(store.root)}, start_new_session=True)
    deadline = time.monotonic() + 120
    # Interrupted once the venv is mounted and uv is installing into it (as Ctrl-C reaches the
    # terminal's whole foreground group: venvfs and uv).
    while not (venvfs_mounts_below(tmp_path) and _installing(proc.pid)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "venvfs: interrupted", err
    assert not venv.exists() and venvfs_mounts_below(tmp_path) == []
    assert _registered(store) == registered
    assert run_venvfs("store", "verify").returncode == 0


# -- add/remove on a mounted venv return once the new view is visible --------------------------------------

def test_add_and_remove_return_when_the_view_shows_it(require_fuse: None, service_env: Path, store: Store,
                                                      stored: Path, tmp_path: Path, run_venvfs: Run) -> None:
    from venvfs.venv.select import change_selection

    venv = tmp_path / "venv"
    run_venvfs("create", str(venv), "helper")
    sp = venv / "lib" / PY / "site-packages"
    stop = threading.Event()

    def reader() -> None:
        # Keeps the kernel's caches of site-packages warm, as a running program would: the reload
        # must have them invalidated before add or remove returns.
        while not stop.is_set():
            os.listdir(sp)
            (sp / "demo" / "__init__.py").exists()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        # In this process, so the very next call is the check (a CLI's exit would give the daemon time).
        for _ in range(5):
            change_selection(Venv(venv), store, add=["demo"])
            assert "demo" in os.listdir(sp) and (sp / "demo" / "__init__.py").is_file()
            change_selection(Venv(venv), store, remove=["demo"])
            assert "demo" not in os.listdir(sp) and not (sp / "demo").exists()
        run_venvfs("add", str(venv), "demo")
        assert (sp / "demo" / "__init__.py").is_file()
    finally:
        stop.set()
        thread.join()


def test_the_library_call_reports_its_steps(require_fuse: None, service_env: Path, store: Store, stored: Path,
                                            tmp_path: Path) -> None:
    """What the CLI prints is ``create``'s report and its ``say`` lines; tests and tools call it."""
    from venvfs.mount.create import create

    steps: list[str] = []
    report = create(tmp_path / "venv", store, specs=["demo", "extra"], installer_options=["-f", str(stored),
                                                                                          "--no-index"],
                    say=steps.append)
    assert report.mount == "fuse" and report.installer == "uv"
    assert [s.split()[0] for s in steps] == ["making", "selecting", "mounting", "installing", "storing"], steps
    assert sorted(k.split("-")[0] for k in report.selected) == ["demo", "helper"]
    assert [k.split("-")[0] for k in report.installed] == ["extra"]
    _imports(tmp_path / "venv", "demo", "extra")
