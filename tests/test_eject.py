"""`venvfs eject`: a managed venv becomes a plain one with real files, keeps working, loses nothing.

The mounted-layout cases (upper layer brought back, a live mount unmounted first) need FUSE and are
at the end of the file.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from venvfs.hooks.target import BEGIN, PTH_NAME
from venvfs.store.store import Store
from venvfs.venv import automount as hooks
from venvfs.venv.eject import eject
from venvfs.venv.venv import Venv

from conftest import uv_pip
from wheelbuilder import build_wheel, data_package, simple_package

RunVenvfs = Callable[..., subprocess.CompletedProcess[str]]

# Every top-level module of site-packages imports, and every file every RECORD lists is there
# (except the files named as arguments).
FULL_CHECK = r"""
import importlib, importlib.metadata as md, pkgutil, sys, sysconfig
sp = sysconfig.get_paths()["purelib"]
names = sorted(m.name for m in pkgutil.iter_modules([sp]) if not m.name.startswith("_venvfs"))
for name in names:
    importlib.import_module(name)
missing = [str(f) for d in md.distributions(path=[sp]) for f in (d.files or []) if not f.locate().exists()
           and "__pycache__" not in str(f) and str(f) not in sys.argv[1:]]  # argv: deleted on purpose
assert not missing, missing
print("ok", len(names), "modules")
"""


def store_inodes(store: Store) -> set[tuple[int, int]]:
    found = set()
    for top in ("objects", "bytecode"):
        for p in (store.root / top).rglob("*"):
            if p.is_file():
                st = p.stat()
                found.add((st.st_dev, st.st_ino))
    return found


def venv_inodes(venv: Path) -> dict[tuple[int, int], Path]:
    found = {}
    for p in venv.rglob("*"):
        if p.is_file() and not p.is_symlink() and ".venvfs" not in p.parts:
            st = p.stat()
            found[(st.st_dev, st.st_ino)] = p
    return found


@pytest.fixture
def adopted(tmp_path: Path, make_venv: Callable[..., Path], store: Store, run_venvfs: RunVenvfs) -> Venv:
    """A uv venv with two small distributions, adopted with hardlinks into the store."""
    wheels = tmp_path / "wheels"
    path = make_venv(tool="uv")
    uv_pip(path, str(build_wheel(wheels, simple_package("demo"))), str(build_wheel(wheels, data_package())))
    run_venvfs("adopt", str(path), "--link-mode", "hardlink")
    venv = Venv.open(path)
    assert venv.read_state().link_mode == "hardlink"
    assert set(venv_inodes(path)) & store_inodes(store), "adopt did not hardlink anything"
    return venv


def test_eject_materialized_hardlinked_venv(adopted: Venv, store: Store, run_venvfs: RunVenvfs) -> None:
    venv = adopted
    assert hooks.status(venv).ok
    # The user edited a file after adopting: eject must keep the edit.
    edited = venv.site_packages / "demo" / "sub" / "helpers.py"
    edited.unlink()  # (it was a read-only hardlink into the store)
    edited.write_text("def double(x):\n    return x + x  # edited\n")
    proc = run_venvfs("eject", str(venv.root), "--json")
    report = json.loads(proc.stdout)
    assert report["unlinked"] > 0 and not report["unmounted"]

    assert not venv.state_dir.exists()
    assert store.registered_venvs() == []
    assert not set(venv_inodes(venv.root)) & store_inodes(store), "a file still shares an inode with the store"
    for script in venv.bin_dir.glob("activate*"):
        assert BEGIN not in script.read_text()
    assert not (venv.site_packages / PTH_NAME).exists()
    assert "# edited" in edited.read_text()
    # Real files a user can edit, as in any plain venv.
    init = venv.site_packages / "demo" / "__init__.py"
    assert init.stat().st_mode & 0o200 and init.stat().st_nlink == 1

    proc = subprocess.run([str(venv.python), "-c", FULL_CHECK], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr
    proc = subprocess.run([str(venv.bin_dir / "demo-hello")], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "demo 1.0\n", proc.stderr
    proc = subprocess.run([str(venv.bin_dir / "datapkg-tool")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    # A plain venv: the tools treat it as theirs, venvfs as not managed.
    proc = run_venvfs("hook", "status", str(venv.root), check=False)
    assert proc.returncode == 4
    proc = run_venvfs("eject", str(venv.root), check=False)
    assert proc.returncode == 4 and "not managed" in proc.stderr


def test_eject_with_copy_and_gc_afterwards(adopted: Venv, store: Store, run_venvfs: RunVenvfs) -> None:
    """Once ejected, gc may delete everything the venv used: the venv does not care."""
    venv = adopted
    selected = [f for key in venv.read_state().selection for f in store.get_dist(key).site_files()]
    proc = run_venvfs("eject", str(venv.root), "--link-mode", "copy")
    # Every file the store gave the venv is counted, in files and bytes (issue 17: "1 store file(s)").
    line = proc.stdout.strip()
    assert f"{len(selected):,} file(s), {sum(f.size for f in selected) / 1e6:,.1f} MB, from the store" in line, line
    assert store.registered_venvs() == []
    run_venvfs("store", "gc")
    assert not any(p.is_file() for p in (store.root / "objects").rglob("*"))
    proc = subprocess.run([str(venv.python), "-c", FULL_CHECK], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_eject_refuses_hardlink_mode(adopted: Venv, run_venvfs: RunVenvfs) -> None:
    proc = run_venvfs("eject", str(adopted.root), "--link-mode", "hardlink", check=False)
    assert proc.returncode == 2  # argparse: not a choice
    assert adopted.is_managed


def test_eject_refuses_while_upper_layer_content_would_be_lost(adopted: Venv, store: Store) -> None:
    venv = adopted
    (venv.upper_dir / "mine").mkdir(parents=True)
    (venv.upper_dir / "mine" / "notes.txt").write_text("user data")
    with pytest.raises(Exception, match="still in the upper layer"):
        eject(venv, store.root)
    assert venv.is_managed and (venv.upper_dir / "mine" / "notes.txt").read_text() == "user data"
    assert (venv.state_dir / "state.json").exists()
