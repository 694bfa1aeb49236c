"""Adopting real venvs (python -m venv + pip, virtualenv + pip, uv): the venv keeps working exactly as
before, its files become links to the store, the user's own files stay untouched, a second identical
venv costs the store (almost) nothing, and a kill at any moment followed by a rerun loses nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, create_venv, run_cli, stop_mount, uv, venv_files, writes_bytecode
from tests.wheelbuilder import WheelSpec, build_wheel, data_package, simple_package
from venvfs.cli.app import main as cli_main
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

PYPI = ["six", "markupsafe"]


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    house = tmp_path_factory.mktemp("wheelhouse")
    build_wheel(house, simple_package("demo", "1.0"))
    build_wheel(house, data_package())
    return house


@pytest.fixture(scope="module")
def editable_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    proj = tmp_path_factory.mktemp("editme")
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "editme"\nversion = "0.1"\n\n[project.scripts]\neditme = "editme:main"\n\n'
        '[tool.setuptools]\npy-modules = ["editme"]\n'
    )
    (proj / "editme.py").write_text("VALUE = 'editable'\n\ndef main():\n    print('editme', VALUE)\n")
    return proj


def _py(venv: Path, code: str) -> str:
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _install(venv: Path, tool: str, *args: str) -> None:
    if tool == "uv":
        subprocess.run([uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *args], check=True)
    else:
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *args], check=True)


def _uninstall(venv: Path, tool: str, name: str) -> None:
    if tool == "uv":
        subprocess.run([uv(), "pip", "uninstall", "-q", "--python", str(venv / "bin" / "python"), name], check=True)
    else:
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", "-q", name], check=True)


def _installed(venv: Path, tool: str) -> set[str]:
    if tool == "uv":
        cmd = [uv(), "pip", "list", "--format", "json", "--python", str(venv / "bin" / "python")]
    else:
        cmd = [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return {d["name"].lower().replace("_", "-") for d in json.loads(proc.stdout)}


def _site(venv: Path) -> Path:
    return Venv(venv).site_packages


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_dev


@dataclass
class Adopted:
    tool: str
    venv: Path
    store: Path
    before: dict[str, str]
    user_inodes: dict[str, tuple[int, int]]
    report: dict[str, Any]


def _populate(venv: Path, tool: str, wheelhouse: Path, editable: Path | None) -> list[str]:
    """Install the test's distributions and the user's own files; returns the user files' paths."""
    _install(venv, tool, *PYPI, *map(str, sorted(wheelhouse.glob("*.whl"))))
    if editable is not None:
        if tool == "virtualenv":  # has a recent setuptools (python -m venv's 3.11 one lacks bdist_wheel)
            _install(venv, tool, "--no-build-isolation", "-e", str(editable))
        else:
            _install(venv, tool, "-e", str(editable))
    site = _site(venv)
    extra = venv / "extra-path"
    extra.mkdir()
    (extra / "handmod.py").write_text("HAND = 'written by hand'\n")
    (site / "handwritten.pth").write_text(f"{extra}\n")
    # A user's edit to an installed file, saved as editors do (a new file in its place): uv hardlinks
    # six.py from its cache, and appending in place changed the machine's uv cache for every later
    # venv and test (a venvfs ingest then rightly refused six: "differs from its RECORD size").
    six = site / "six.py"
    edited = six.read_text() + "\nEDITED = True\n"
    six.unlink()
    six.write_text(edited)
    user = ["handwritten.pth", "six.py"]
    if editable is not None:
        user += [p.name for p in site.iterdir() if "editme" in p.name.lower() and p.is_file()]
    return user


@pytest.fixture(scope="module", params=["venv", "virtualenv", "uv"])
def adopted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path,
            editable_project: Path) -> Adopted:
    tool: str = request.param
    base = tmp_path_factory.mktemp(f"adopt-{tool}")
    venv = create_venv(base / "venv", tool)
    user = _populate(venv, tool, wheelhouse, editable_project)
    assert any(name.endswith(".pth") and "editme" in name.lower() for name in user), user
    before = venv_files(venv)
    site = _site(venv)
    user_inodes = {name: _inode(site / name) for name in user}
    proc = run_cli(base / "store", "adopt", str(venv), "--no-hooks", "--json", "--compile-now")
    return Adopted(tool, venv, base / "store", before, user_inodes, json.loads(proc.stdout))


def test_adopted_venv_files_unchanged(adopted: Adopted) -> None:
    assert venv_files(adopted.venv) == adopted.before


def test_adopted_venv_works(adopted: Adopted) -> None:
    out = _py(adopted.venv, "import demo, datapkg, datapkg_extra, six, markupsafe, handmod, editme\n"
                            "print(demo.VERSION, datapkg_extra.EXTRA, six.EDITED, markupsafe.escape('<'),"
                            " handmod.HAND, editme.VALUE)")
    assert out.split() == ["1.0", "42", "True", "&lt;", "written", "by", "hand", "editable"]
    bin_dir = adopted.venv / "bin"
    assert subprocess.run([bin_dir / "demo-hello"], capture_output=True, text=True, check=True).stdout == "demo 1.0\n"
    assert subprocess.run([bin_dir / "datapkg-tool"], capture_output=True, text=True,
                          check=True).stdout == "tool datapkg\n"
    assert subprocess.run([bin_dir / "editme"], capture_output=True, text=True, check=True).stdout == \
        "editme editable\n"
    assert {"demo", "datapkg", "six", "markupsafe", "editme"} <= _installed(adopted.venv, adopted.tool)


def test_adopted_files_are_store_objects(adopted: Adopted) -> None:
    store = Store.open(adopted.store, create=False)
    state = Venv(adopted.venv).read_state()
    site = _site(adopted.venv)
    names = {store.get_dist(k).name for k in state.selection}
    assert {"demo", "datapkg", "six", "markupsafe"} <= names
    assert "editme" not in names, "an editable install must stay the venv's own"
    linked = 0
    for key in state.selection:
        record = store.get_dist(key)
        for f in record.site_files():
            if f.digest is None or f.path.endswith(("/INSTALLER", "/REQUESTED", "/direct_url.json")):
                continue
            assert _inode(site / f.path) == _inode(store.object_path(f.digest, f.executable)), f.path
            linked += 1
    assert linked > 20
    assert state.link_mode == "hardlink"
    # The venv's RECORDs are its own copies, never store objects.
    for key in state.selection:
        assert (site / store.get_dist(key).dist_info / "RECORD").stat().st_nlink == 1


def test_link_summary_counts_every_file_placed_by_hardlink(adopted: Adopted) -> None:
    # The files the store took as adopt read them are placed too: the summary counted only those
    # materialize linked afterwards (a venv's duplicates and bytecode), a fraction of the hardlinks.
    report = adopted.report
    warned = re.match(r"warning: (\d+) file\(s\) are hardlinks", report["hardlink_warning"] or "")
    assert warned, report
    assert report["link_summary"].startswith(f"{warned.group(1)} by hardlink"), report


def test_user_files_untouched(adopted: Adopted) -> None:
    site = _site(adopted.venv)
    for name, inode in adopted.user_inodes.items():
        assert _inode(site / name) == inode, f"{name} was replaced"
    assert "six.py" in adopted.report["kept_in_venv"]["six"]


def test_adopt_rerun_is_idempotent(adopted: Adopted) -> None:
    store_before = _store_usage(adopted.store)
    proc = run_cli(adopted.store, "adopt", str(adopted.venv), "--no-hooks", "--json", "--compile-now")
    report = json.loads(proc.stdout)
    assert report["new_dists"] == [] and report["new_objects"] == 0
    assert report["selection"] == adopted.report["selection"]
    assert venv_files(adopted.venv) == adopted.before
    assert _store_usage(adopted.store) == store_before


def test_status_json_for_a_lone_venv(adopted: Adopted) -> None:
    status = json.loads(run_cli(adopted.store, "status", str(adopted.venv), "--json").stdout)
    assert status["layout"] == "materialized" and status["link_mode"] == "hardlink"
    assert status["shared_bytes"] == 0
    assert status["owned_alone_bytes"] == status["store_bytes"] > 0
    assert not any(d["shared_with_other_venvs"] for d in status["distributions"])
    assert status["logical_bytes"] >= sum(d["logical_bytes"] for d in status["distributions"])


def test_uninstall_after_adopt(adopted: Adopted) -> None:
    """Runs last for each venv: it changes the venv."""
    site = _site(adopted.venv)
    store = Store.open(adopted.store, create=False)
    record = next(store.get_dist(k) for k in Venv(adopted.venv).read_state().selection
                  if store.get_dist(k).name == "markupsafe")
    objects = [store.object_path(f.digest, f.executable) for f in record.files if f.digest]
    _uninstall(adopted.venv, adopted.tool, "markupsafe")
    assert not (site / "markupsafe").exists()
    assert not (site / record.dist_info).exists()
    assert "markupsafe" not in _installed(adopted.venv, adopted.tool)
    assert all(o.exists() for o in objects), "uninstalling from the venv must not touch the store"
    report = json.loads(run_cli(adopted.store, "adopt", str(adopted.venv), "--no-hooks", "--json",
                                "--compile-now").stdout)
    assert not any(k.startswith("markupsafe-") for k in report["selection"])
    assert run_cli(adopted.store, "store", "verify").returncode == 0
    # pip can still reinstall into the adopted venv.
    _install(adopted.venv, adopted.tool, "markupsafe")
    assert _py(adopted.venv, "import markupsafe; print(markupsafe.escape('&'))").strip() == "&amp;"


def _store_usage(store: Path) -> int:
    total = 0
    for dirpath, dirs, files in os.walk(store):
        for name in dirs + files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _tree_usage(root: Path) -> int:
    """What ``du`` says the tree takes on its own (each inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_ino, st.st_dev) not in seen:
                seen.add((st.st_ino, st.st_dev))
                total += st.st_blocks * 512
    return total


def test_second_identical_venv_costs_under_one_percent(tmp_path: Path, wheelhouse: Path) -> None:
    store = tmp_path / "store"
    first = create_venv(tmp_path / "one", "uv")
    _populate(first, "uv", wheelhouse, None)
    run_cli(store, "adopt", str(first), "--no-hooks", "--compile-now")
    second = create_venv(tmp_path / "two", "uv")
    _populate(second, "uv", wheelhouse, None)
    size = _tree_usage(second)
    before = _store_usage(store)
    report = json.loads(run_cli(store, "adopt", str(second), "--no-hooks", "--json", "--compile-now").stdout)
    growth = _store_usage(store) - before
    assert growth < size / 100, f"second venv of {size} bytes grew the store by {growth}"
    # six.py was edited in both, identically: both venvs keep their own copy, everything else is shared.
    assert report["new_objects"] == 0 and report["new_dists"] == []
    st = Store.open(store, create=False)
    s1, s2 = Venv(first).read_state(), Venv(second).read_state()
    assert s1.selection == s2.selection
    for key in s2.selection:
        for f in st.get_dist(key).site_files():
            if f.digest and not f.path.endswith(("/INSTALLER", "/REQUESTED", "/direct_url.json")):
                assert _inode(_site(first) / f.path) == _inode(_site(second) / f.path), f.path
    for venv in (first, second):
        status = json.loads(run_cli(store, "status", str(venv), "--json").stdout)
        assert status["shared_bytes"] == status["store_bytes"] > 0
        assert status["owned_alone_bytes"] == 0
        assert all(d["shared_with_other_venvs"] for d in status["distributions"])
        # Hardlinked files are the store's, not the venv's: what the venv owns is far below its du size.
        assert status["venv_own_bytes"] < _tree_usage(_site(venv)) - status["store_bytes"] // 2
    store_status = json.loads(run_cli(store, "store", "status", "--json").stdout)
    assert len(store_status["venvs"]) == 2


def test_store_dedupe_ratio_of_two_identical_venvs(tmp_path: Path, wheelhouse: Path) -> None:
    store = tmp_path / "store"
    for name in ("one", "two"):
        venv = create_venv(tmp_path / name, "uv")
        _install(venv, "uv", *map(str, sorted(wheelhouse.glob("*.whl"))))
        run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
    store_status = json.loads(run_cli(store, "store", "status", "--json").stdout)
    assert 1.9 <= store_status["dedupe_ratio"] <= 2.1
    # A removed venv's distributions stay until gc forgets it; it is no venv any more, and counted as
    # one it made the ratio claim sharing that no longer happens.
    shutil.rmtree(tmp_path / "two")
    store_status = json.loads(run_cli(store, "store", "status", "--json").stdout)
    assert 0.9 <= store_status["dedupe_ratio"] <= 1.1, store_status
    assert [v["path"] for v in store_status["venvs"]] == [str(tmp_path / "one")]
    assert store_status["gone_venvs"] == 1
    assert "gone:           1 registered venv(s)" in run_cli(store, "store", "status").stdout
    run_cli(store, "store", "gc", "--forget-missing")
    assert json.loads(run_cli(store, "store", "status", "--json").stdout)["gone_venvs"] == 0


def test_adopt_refuses_a_venv_of_another_store(tmp_path: Path) -> None:
    venv = create_venv(tmp_path / "v", "uv")
    run_cli(tmp_path / "store1", "adopt", str(venv), "--no-hooks")
    proc = run_cli(tmp_path / "store2", "adopt", str(venv), "--no-hooks", check=False)
    assert proc.returncode == 4
    assert len(proc.stderr.strip().splitlines()) == 1 and "store1" in proc.stderr


def test_adopt_not_a_venv(tmp_path: Path) -> None:
    proc = run_cli(tmp_path / "store", "adopt", str(tmp_path), check=False)
    assert proc.returncode == 4 and "not a virtual environment" in proc.stderr


# -- kill during adopt ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_files_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    house = tmp_path_factory.mktemp("many")
    files = {f"bulky/m{i:03}/__init__.py": (f"N = {i}\n" + "# padding\n" * (50 + i)).encode() for i in range(150)}
    files.update({f"bulky/data/d{i:03}.txt": os.urandom(2000 + 37 * i) for i in range(150)})
    files["bulky/__init__.py"] = b"from bulky.m007 import N\n"
    return build_wheel(house, WheelSpec(name="bulky", version="1.0", files=files,
                                        entry_points="[console_scripts]\nbulky = bulky:N\n"))


def _kill_venv(base: Path, many: Path, wheelhouse: Path) -> Path:
    venv = create_venv(base, "uv")
    subprocess.run([uv(), "pip", "install", "-q", "--link-mode", "copy", "--python", str(venv / "bin" / "python"),
                    str(many), *map(str, sorted(wheelhouse.glob("*.whl")))], check=True)
    return venv


def _adopt_cmd(store: Path, venv: Path) -> list[str]:
    return [sys.executable, "-m", "venvfs", "adopt", "--store", str(store), "--no-hooks", str(venv)]


def _count(root: Path, pattern: str) -> int:
    return sum(1 for _ in root.glob(pattern)) if root.exists() else 0


def _linked(venv: Path) -> int:
    site = _site(venv)
    return sum((site / f"bulky/m{i:03}/__init__.py").stat().st_nlink > 1 for i in range(150))


# Kill points, by what adopt has visibly done so far (polled from outside: real timing, no hooks in
# venvfs): interpreter start, mid-ingest, records written, state written, bytecode, mid-link, late link.
KILL_POINTS: dict[str, Any] = {
    "startup": lambda venv, store, t: t > 0.05,
    "ingesting": lambda venv, store, t: _count(store / "objects", "*/*") >= 60,
    "state": lambda venv, store, t: (venv / ".venvfs" / "state.json").exists(),
    "bytecode": lambda venv, store, t: _count(store / "bytecode", "*/*/*.pyc") >= 20,
    "linking": lambda venv, store, t: _linked(venv) >= 1,
    "late-linking": lambda venv, store, t: _linked(venv) >= 100,
}


def test_kill_during_adopt_then_rerun(tmp_path: Path, many_files_wheel: Path, wheelhouse: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed_running: list[str] = []
    for name, reached in KILL_POINTS.items():
        venv = _kill_venv(tmp_path / name, many_files_wheel, wheelhouse)
        store = tmp_path / f"store-{name}"
        before = venv_files(venv)
        proc = subprocess.Popen(_adopt_cmd(store, venv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        while proc.poll() is None and not reached(venv, store, time.monotonic() - t0):
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            killed_running.append(name)
        # Whatever the kill left, the venv has lost nothing and gained no stray files...
        assert venv_files(venv) == before, f"killed at {name}: the venv's files changed"
        # ... and a rerun completes the adoption.
        rerun = subprocess.run(_adopt_cmd(store, venv), env=env, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        assert venv_files(venv) == before
        assert _py(venv, "import bulky, demo; print(bulky.N)").strip() == "7"
        st = Store.open(store, create=False)
        bulky = next(st.get_dist(k) for k in Venv(venv).read_state().selection if k.startswith("bulky-"))
        assert bulky.is_complete
        assert _linked(venv) == 150
        # A killed writer may leave a staging file in tmp/ (never visible as an object); gc clears it.
        assert cli_main(["store", "gc", "--store", str(store)]) == 0
        assert list((store / "tmp").iterdir()) == []
        assert cli_main(["store", "verify", "--store", str(store)]) == 0
        assert _linked(venv) == 150
        shutil.rmtree(venv)
    # Polling is real timing: on a loaded machine a point can be passed before we see it, but most must hit.
    assert len(killed_running) >= len(KILL_POINTS) - 2, f"adopt ended before the kill at most points: {killed_running}"


@pytest.fixture
def hooked(tmp_path: Path, wheelhouse: Path) -> Iterator[Path]:
    venv = create_venv(tmp_path / "hooked", "uv")
    _install(venv, "uv", *map(str, sorted(wheelhouse.glob("*.whl"))))
    yield venv


def test_adopt_with_default_hooks_keeps_venv_working(hooked: Path, tmp_path: Path) -> None:
    run_cli(tmp_path / "store", "adopt", str(hooked))
    assert _py(hooked, "import demo, datapkg; print(demo.VERSION)").strip() == "1.0"
    assert subprocess.run([hooked / "bin" / "demo-hello"], capture_output=True, text=True,
                          check=True).stdout == "demo 1.0\n"


@pytest.mark.slow
def test_done_when_numpy_pandas_scipy(tmp_path: Path) -> None:
    """The issue's acceptance scenario: two uv venvs with numpy, pandas and scipy; the second adds < 1%."""
    store = tmp_path / "store"
    venvs = []
    for name in ("one", "two"):
        venv = create_venv(tmp_path / name, "uv")
        _install(venv, "uv", "numpy", "pandas", "scipy")
        venvs.append(venv)
    before = [venv_files(v) for v in venvs]
    run_cli(store, "adopt", str(venvs[0]), "--no-hooks", "--compile-now")
    size = _tree_usage(venvs[1])
    usage = _store_usage(store)
    report = json.loads(run_cli(store, "adopt", str(venvs[1]), "--no-hooks", "--json", "--compile-now").stdout)
    growth = _store_usage(store) - usage
    assert growth < size / 100, f"second venv of {size} bytes grew the store by {growth}"
    assert report["new_objects"] == 0
    for venv, files in zip(venvs, before, strict=True):
        assert venv_files(venv) == files
        out = _py(venv, "import numpy, pandas, scipy.linalg as la\n"
                        "print(int(la.det(numpy.eye(3) * 2)), pandas.Series([1, 2, 3]).sum())")
        assert out.split() == ["8", "6"]
        status = json.loads(run_cli(store, "status", str(venv), "--json").stdout)
        assert status["shared_bytes"] == status["store_bytes"] and status["owned_alone_bytes"] == 0
    f2py = subprocess.run([venvs[1] / "bin" / "f2py", "-v"], capture_output=True, text=True)
    assert f2py.returncode == 0 and f2py.stdout.strip()
    _uninstall(venvs[1], "uv", "pandas")
    assert _py(venvs[1], "import importlib.util as u; print(u.find_spec('pandas'))").strip() == "None"
    assert run_cli(store, "store", "verify").returncode == 0


def test_adopt_on_xfs_uses_reflinks(xfs_mount: Path, wheelhouse: Path) -> None:
    base = xfs_mount / f"adopt-{os.urandom(4).hex()}"
    base.mkdir()
    try:
        venv = create_venv(base / "venv", "uv")
        _install(venv, "uv", "--link-mode", "copy", *map(str, sorted(wheelhouse.glob("*.whl"))))
        before = venv_files(venv)
        report = json.loads(run_cli(base / "store", "adopt", str(venv), "--no-hooks", "--json").stdout)
        assert report["link_mode"] == "reflink", report["link_summary"]
        assert venv_files(venv) == before
        st = Store.open(base / "store", create=False)
        for key in report["selection"]:
            for f in st.get_dist(key).site_files():
                # INSTALLER: the record's says venvfs, the venv keeps what uv wrote (records.INSTALLER_NAME).
                if f.digest and not f.path.endswith(".dist-info/INSTALLER"):
                    dst, obj = _site(venv) / f.path, st.object_path(f.digest, f.executable)
                    assert dst.read_bytes() == obj.read_bytes() and _inode(dst) != _inode(obj), f.path
        # A reflinked file is the venv's to edit: the store object is untouched.
        helper = _site(venv) / "demo" / "sub" / "helpers.py"
        with open(helper, "a") as f:
            f.write("# edited\n")
        assert run_cli(base / "store", "store", "verify").returncode == 0
        assert _py(venv, "import demo.sub.helpers as h; print(h.double(21))").strip() == "42"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _cache_files(cache: Path) -> dict[str, tuple[int, int, int]]:
    """Every regular file of a uv cache: (inode, mode, mtime in ns)."""
    out = {}
    for dirpath, _dirs, names in os.walk(cache):
        for name in names:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                out[str(path)] = (st.st_ino, st.st_mode, st.st_mtime_ns)
    return out


def test_adopt_leaves_a_uv_cache_inode_alone(tmp_path: Path, wheelhouse: Path) -> None:
    """Issue 13, point 3: a venv that uv hardlinked from its cache shares its files' inodes with the
    cache and with every plain venv made from it. Adopt stores copies of those, leaves the inodes'
    mode and mtime alone, and says what that cost; a plain venv edited in place afterwards damages
    nothing the store serves."""
    cache = tmp_path / "uv-cache"
    env = {**os.environ, "UV_CACHE_DIR": str(cache)}
    wheels = [str(w) for w in sorted(wheelhouse.glob("*.whl"))]

    def plain_uv_venv(name: str) -> Path:
        venv = create_venv(tmp_path / name, "uv")
        subprocess.run([uv(), "pip", "install", "-q", "--link-mode", "hardlink", "--python",
                        str(venv / "bin" / "python"), *wheels], check=True, env=env)
        return venv

    adopted = plain_uv_venv("adopted")
    module = _site(adopted) / "demo" / "sub" / "helpers.py"
    good = module.read_bytes()
    cache_inode = _inode(module)
    assert module.stat().st_nlink >= 2, "uv did not hardlink from its cache: the test proves nothing"
    cache_before = _cache_files(cache)
    assert cache_inode[0] in {ino for ino, _, _ in cache_before.values()}

    store_root = tmp_path / "store"
    proc = run_cli(store_root, "adopt", str(adopted), "--no-hooks")
    assert "shared with files outside this venv" in proc.stdout, proc.stdout
    report = json.loads(run_cli(store_root, "adopt", str(adopted), "--no-hooks", "--json").stdout)
    assert report["shared_inode_files"] == 0, "a rerun finds everything stored already"

    # uv's cache: every file keeps its inode, mode and mtime (nothing became 0444 or 1980).
    assert _cache_files(cache) == cache_before
    store = Store.open(store_root, create=False)
    digest = hashlib.sha256(good).hexdigest()
    obj = store.object_path(digest)
    assert _inode(obj) != cache_inode, "the store object is uv's cache inode"
    assert obj.stat().st_nlink <= 2  # the store's name and at most the adopted venv's hardlink
    assert module.read_bytes() == good

    # A later plain venv hardlinks uv's cache, not the store; editing it in place changes no object.
    plain = plain_uv_venv("plain")
    plain_module = _site(plain) / "demo" / "sub" / "helpers.py"
    assert _inode(plain_module) == cache_inode
    assert _inode(plain_module) != _inode(obj)
    with open(plain_module, "a") as f:
        f.write("EDITED_IN_PLACE = True\n")
    assert obj.read_bytes() == good
    assert module.read_bytes() == good
    run_cli(store_root, "store", "verify")
    assert "EDITED" not in _py(adopted, "import demo.sub.helpers as h; print(dir(h))")


def test_hardlinks_into_the_store_are_said_once_and_leave_bin_when_mounted(
        tmp_path: Path, wheelhouse: Path, require_fuse: None) -> None:
    """Issue 13, point 4: where hardlinks to store objects remain, the command and `venvfs status` say
    so in one line; a mounted venv's scripts and data files are never the store's inodes."""
    store_root = tmp_path / "store"
    venv = create_venv(tmp_path / "venv", "uv")
    run_cli(store_root, "adopt", str(venv), "--no-hooks", "--no-compile")
    (datapkg,) = wheelhouse.glob("datapkg-*.whl")
    out = run_cli(store_root, "add", str(venv), str(datapkg), "--link-mode", "hardlink").stdout
    assert out.count("hardlinks of store objects") == 1, out
    status = run_cli(store_root, "status", str(venv)).stdout
    assert status.count("hardlinks of store objects") == 1, status
    store = Store.open(store_root, create=False)
    shell_script = venv / "bin" / "datapkg-sh"
    notes = venv / "share" / "datapkg" / "notes.txt"
    objects = {p: store.object_path(hashlib.sha256(p.read_bytes()).hexdigest(), bool(p.stat().st_mode & 0o100))
               for p in (shell_script, notes)}
    assert all(_inode(p) == _inode(obj) for p, obj in objects.items()), "the test needs hardlinked files"
    try:
        run_cli(store_root, "mount", str(venv))
        for path, obj in objects.items():
            assert _inode(path) != _inode(obj), f"{path} is still the store's inode in a mounted venv"
            assert path.read_bytes() == obj.read_bytes()
        status = run_cli(store_root, "status", str(venv)).stdout
        assert "hardlinks of store objects" not in status, status
        with open(notes, "a") as f:
            f.write("edited in place\n")
        run_cli(store_root, "store", "verify")
    finally:
        stop_mount(venv)


def _pyc_headers(site: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes()[:16] for p in site.rglob("__pycache__/*.pyc")}


def test_adopt_keeps_the_venvs_own_bytecode_valid(tmp_path: Path, wheelhouse: Path) -> None:
    # pip compiled a .pyc beside every module; adopt makes each module a store file with the store's
    # mtime. The venv's valid .pyc files stay valid (their mtime field follows), stay its own, and
    # Python imports from them without compiling again (issue 17: no file compiled twice).
    venv = create_venv(tmp_path / "venv", "venv")
    _install(venv, "venv", *map(str, sorted(wheelhouse.glob("*.whl"))))
    site = _site(venv)
    before = _pyc_headers(site)
    assert before, "pip compiled nothing"
    stale = site / "demo" / "__pycache__" / f"__init__.{sys.implementation.cache_tag}.pyc"
    bad = bytearray(stale.read_bytes())
    bad[8:12] = (12345).to_bytes(4, "little")  # a header no source matches: Python would recompile it
    stale.write_bytes(bytes(bad))
    report = json.loads(run_cli(tmp_path / "store", "adopt", str(venv), "--no-hooks", "--no-compile", "--json").stdout)
    assert report["restamped"] == len(before) - 1, report
    assert stale.read_bytes() == bytes(bad), "a .pyc that was not valid must be left as it was"
    after = {p: (p.read_bytes()[:16], p.stat()) for p in site.rglob("__pycache__/*.pyc")}
    for pyc, (head, st) in after.items():
        assert st.st_nlink == 1, f"{pyc} must stay the venv's own file"
        if pyc != stale:
            assert int.from_bytes(head[8:12], "little") == 315532800, pyc
    subprocess.run([str(venv / "bin" / "python"), "-c", "import demo, datapkg, datapkg_extra"], check=True,
                   env=writes_bytecode())
    for pyc, (_head, st) in after.items():
        if pyc != stale and pyc.exists():
            assert pyc.stat().st_mtime_ns == st.st_mtime_ns, f"{pyc} was compiled again"
    assert stale.read_bytes() != bytes(bad), "Python recompiles the invalid one, as it always did"


def test_adopt_compiles_the_store_bytecode_in_the_background(tmp_path: Path, wheelhouse: Path) -> None:
    venv = create_venv(tmp_path / "venv", "uv")
    _install(venv, "uv", *map(str, sorted(wheelhouse.glob("*.whl"))))
    report = json.loads(run_cli(tmp_path / "store", "adopt", str(venv), "--no-hooks", "--json").stdout)
    pid = report["compiling_pid"]
    assert isinstance(pid, int) and report["compiled"] == 0
    deadline = time.monotonic() + 120
    while Path(f"/proc/{pid}").exists() and b"venvfs.store.bytecode" in Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the background compile did not finish"
        time.sleep(0.05)
    store = Store.open(tmp_path / "store", create=False)
    tag = Venv(venv).read_state().interpreter.cache_tag  # type: ignore[union-attr]
    modules = [f for k in report["selection"] for f in store.get_dist(k).site_files()
               if f.path.endswith(".py") and f.digest]
    assert modules
    for f in modules:
        assert f.digest is not None
        assert store.bytecode_path(tag, f.digest).is_file(), f.path
    # The store's bytecode serves the next venv of the same selection at once.
    proc = subprocess.run([sys.executable, "-m", "venvfs", "store", "verify", "--store", str(tmp_path / "store")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
