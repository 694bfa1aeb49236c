"""The store's registry of venvs (issue 12, parts 2 and 3): gc never deletes what a moved venv still
selects, a moved venv re-registers itself, and a state a wheel overwrote is detected and restored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import stop_mount
from tests.wheelbuilder import WheelSpec, build_wheel, simple_package
from venvfs.mount import daemon
from venvfs.store import gc
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

Run = Callable[..., subprocess.CompletedProcess[str]]


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, capture_output=True, text=True)


def _imports(venv: Path, module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}; print({module}.VERSION)"],
                          capture_output=True, text=True, env={"VENVFS_NO_AUTOMOUNT": "1", "PATH": "/usr/bin:/bin"})


@pytest.mark.fuse
def test_gc_keeps_a_renamed_venvs_dists_and_the_renamed_venv_mounts(
        require_fuse: None, store: Store, make_venv: Callable[..., Path], run_venvfs: Run, tmp_path: Path) -> None:
    """`mv v/proj v/proj-renamed; venvfs store gc` used to delete the renamed venv's distributions,
    whose only copies (adopted, then mounted) were in the store."""
    wheel = build_wheel(tmp_path / "w", simple_package("movable", "1.0"))
    proj = make_venv("proj")
    _pip(proj, "install", "--no-index", str(wheel))
    run_venvfs("mount", str(proj))
    (key,) = [k for k in Venv(proj).read_state().selection if k.startswith("movable-")]
    run_venvfs("umount", str(proj))
    renamed = proj.with_name("proj-renamed")
    proj.rename(renamed)

    dry = run_venvfs("store", "gc", "--dry-run").stdout
    run_venvfs("store", "gc")
    assert store.has_dist(key), "gc deleted the distributions of a moved venv"
    assert all(store.object_path(f.digest, f.executable).exists()
               for f in store.get_dist(key).files if f.digest)
    assert "keeping its" in dry and str(proj) in dry and "--forget-missing" in dry, dry

    run_venvfs("mount", str(renamed))
    try:
        proc = _imports(renamed, "movable")
        assert proc.returncode == 0 and proc.stdout.strip() == "1.0", proc.stderr
    finally:
        stop_mount(renamed)
    # The venv re-registered itself under its new path: one entry, not two.
    assert store.registered_venvs() == [renamed.absolute()]
    (entry,) = store.registry()
    assert entry.id == Venv(renamed).read_state().id and entry.state is not None
    assert key in entry.state["selection"]


def test_copied_venv_gets_its_own_registry_entry(store: Store, make_venv: Callable[..., Path],
                                                 run_venvfs: Run, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "w", simple_package("copied", "1.0"))
    original = make_venv("original", "uv")
    run_venvfs("add", str(original), str(wheel), "--link-mode", "copy")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, symlinks=True)
    run_venvfs("status", str(copy))
    ids = {Venv(original).read_state().id, Venv(copy).read_state().id}
    assert len(ids) == 2 and None not in ids
    assert sorted(store.registered_venvs()) == sorted([original.absolute(), copy.absolute()])
    assert {e.id for e in store.registry()} == ids


@pytest.mark.fuse
def test_a_wheel_overwriting_the_state_is_detected_and_repaired(
        require_fuse: None, store: Store, make_venv: Callable[..., Path], run_venvfs: Run, tmp_path: Path) -> None:
    """A wheel's `.data/data/` file lands under the venv root: pip let one write `.venvfs/state.json`
    = `{}`, after which every command (umount too) failed with exit 4 and the selection was lost."""
    good = build_wheel(tmp_path / "w", simple_package("goodpkg", "1.0"))
    evil = build_wheel(tmp_path / "w", WheelSpec(name="clobber", version="1.0", files={
        "clobber.py": b"VERSION = '1.0'\n",
        "clobber-1.0.data/data/.venvfs/state.json": b"{}\n",
    }))
    venv = make_venv("venv")
    _pip(venv, "install", "--no-index", str(good))
    run_venvfs("mount", str(venv))
    try:
        assert daemon.mount_state(Venv(venv)) == "mounted"
        _pip(venv, "install", "--no-index", str(evil))
        assert json.loads((venv / ".venvfs" / "state.json").read_text()) == {}

        status = run_venvfs("status", str(venv))
        assert "DAMAGED" in status.stdout and "venvfs mount" in status.stdout, status.stdout
        assert "goodpkg" in status.stdout  # the registry's copy of the selection
        as_json = json.loads(run_venvfs("status", str(venv), "--json").stdout)
        assert as_json["state_problem"] and "damaged" in as_json["state_problem"]
        # Other commands refuse it with one line, and say how to repair it.
        refused = run_venvfs("remove", str(venv), "goodpkg", check=False)
        assert refused.returncode == 4 and "venvfs mount" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

        umount = run_venvfs("umount", str(venv), check=False)
        assert umount.returncode == 0, umount.stderr
        assert daemon.mounted_fstype(Venv(venv).site_packages) is None
        assert "damaged" in umount.stderr

        mount = run_venvfs("mount", str(venv))
        assert "restored from the store's registry" in mount.stderr, mount.stderr
        assert len([line for line in mount.stderr.splitlines() if "restored" in line]) == 1
        assert daemon.mount_state(Venv(venv)) == "mounted"
        for module in ("goodpkg", "clobber"):
            proc = _imports(venv, module)
            assert proc.returncode == 0 and proc.stdout.strip() == "1.0", proc.stderr
        assert "DAMAGED" not in run_venvfs("status", str(venv)).stdout

        # Uninstalling that wheel deletes the state file it "owns": detected and repaired the same way.
        _pip(venv, "uninstall", "-y", "clobber")
        assert not (venv / ".venvfs" / "state.json").exists()
        assert "DAMAGED" in run_venvfs("status", str(venv)).stdout
        assert "restored" in run_venvfs("mount", str(venv)).stderr
        assert _imports(venv, "goodpkg").returncode == 0
    finally:
        stop_mount(venv)


def test_umount_works_with_a_garbage_state_and_no_daemon(store: Store, make_venv: Callable[..., Path],
                                                         run_venvfs: Run, tmp_path: Path) -> None:
    venv = make_venv("venv", "uv")
    run_venvfs("adopt", str(venv), "--no-hooks")
    (venv / ".venvfs" / "state.json").write_text("not json at all")
    proc = run_venvfs("umount", str(venv), check=False)
    assert proc.returncode == 0 and "was not mounted" in proc.stdout, proc.stderr
    assert "invalid JSON" in proc.stderr


def test_damaged_venv_is_never_forgotten_and_keeps_its_dists(store: Store, make_venv: Callable[..., Path],
                                                             run_venvfs: Run, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "w", simple_package("precious", "1.0"))
    venv = make_venv("venv", "uv")
    run_venvfs("add", str(venv), str(wheel), "--link-mode", "copy")
    (key,) = Venv(venv).read_state().selection
    state = json.loads((venv / ".venvfs" / "state.json").read_text())
    state["selection"] = []  # valid JSON, valid format: only the checksum tells
    (venv / ".venvfs" / "state.json").write_text(json.dumps(state))
    out = run_venvfs("store", "gc", "--forget-missing").stdout
    assert store.has_dist(key) and f"venvfs mount {venv}" in out, out
    assert store.registered_venvs() == [venv.absolute()]


def test_a_venv_registered_before_ids_is_upgraded_not_called_damaged(store: Store, make_venv: Callable[..., Path],
                                                                    run_venvfs: Run, tmp_path: Path) -> None:
    """A state and a registry entry written by the venvfs before this one (no id, no checksum, an entry
    of only the path named by its hash) are taken as they are and upgraded by the next command."""
    wheel = build_wheel(tmp_path / "w", simple_package("older", "1.0"))
    venv = make_venv("venv", "uv")
    run_venvfs("add", str(venv), str(wheel), "--link-mode", "copy")
    state_file = venv / ".venvfs" / "state.json"
    old = {k: v for k, v in json.loads(state_file.read_text()).items() if k not in ("id", "checksum")}
    state_file.write_text(json.dumps(old))
    for entry in store.registry():
        store.forget_venv(entry)
    (store.root / "venvs" / f"{Store._venv_id(venv.absolute())}.json").write_text(json.dumps({"path": str(venv)}))
    assert "DAMAGED" not in run_venvfs("status", str(venv)).stdout
    (entry,) = store.registry()
    assert entry.id == Venv(venv).read_state().id and entry.state is not None
    assert entry.state["selection"] == old["selection"]


def test_gc_clears_a_day_old_registry_staging_file_only(store: Store) -> None:
    old, fresh = store.root / "venvs" / ".x.json.a.tmp", store.root / "venvs" / ".y.json.b.tmp"
    for f in (old, fresh):
        f.write_text("{")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    with store.collecting():
        gc.collect(store, {}, dry_run=False)
    assert not old.exists() and fresh.exists()


def test_a_state_read_again_is_the_files_and_the_callers_own(store: Store, make_venv: Callable[..., Path],
                                                             run_venvfs: Run, tmp_path: Path) -> None:
    """A process keeps the states it read (``Venv.read_state``), by the file's identity: what it
    returns must be a copy the caller may change, and any write to the file, venvfs's own (a new
    inode) or another program's in place, must be read again."""
    from venvfs.errors import StateDamaged

    wheel = build_wheel(tmp_path / "w", simple_package("kept", "1.0"))
    venv = make_venv("venv", "uv")
    run_venvfs("add", str(venv), str(wheel), "--link-mode", "copy")
    v = Venv(venv)
    first = v.read_state()
    (key,) = first.selection
    first.selection.clear()
    first.layout = "mounted"
    assert v.read_state().selection == [key] and v.read_state().layout == "materialized"
    second = v.read_state()
    second.hooks = not second.hooks
    v.write_state(second)  # venvfs's own write: a new file
    assert v.read_state().hooks == second.hooks
    path = venv / ".venvfs" / "state.json"
    data = json.loads(path.read_text())
    data["selection"] = [key.replace(key[-1], "0" if key[-1] != "0" else "1")]  # the same length
    time.sleep(0.02)  # past the kernel's timestamp granularity, which a coarse clock may make a jiffy
    with open(path, "r+") as f:  # in place, as another program would write it: the same inode
        f.write(json.dumps(data))
        f.truncate()
    with pytest.raises(StateDamaged, match="checksum"):
        v.read_state()
