"""Automount end to end, over real FUSE mounts: after `venvfs umount` (or a killed daemon), activating
in bash/zsh/fish/tcsh, running VENV/bin/python, or running a console script mounts the venv with no
other command typed; eject of a mounted venv keeps what the user wrote."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_eject import FULL_CHECK, store_inodes, venv_inodes
from test_hooks import require_shell, run_activation

from venvfs.hooks.target import PTH_NAME
from venvfs.store.store import Store
from venvfs.venv import automount as hooks
from venvfs.venv.venv import Venv

from conftest import kill_daemon, uv_pip
from wheelbuilder import WheelSpec, build_wheel, simple_package

pytestmark = pytest.mark.fuse

RunVenvfs = Callable[..., subprocess.CompletedProcess[str]]

# Imports the package and proves the .pth of a mounted distribution ran in the same process.
CHECK = "import os, demo; print(demo.VERSION, os.environ.get('DEMO_PTH_RAN'))"


def pth_package() -> WheelSpec:
    return WheelSpec(name="demo-pth", version="1.0", files={
        "demo_pth.pth": b"import os; os.environ['DEMO_PTH_RAN'] = 'yes'\n",
    })


@pytest.fixture
def mounted_venv(require_fuse: None, tmp_path: Path, make_venv: Callable[..., Path], store: Store,
                 run_venvfs: RunVenvfs) -> Iterator[Venv]:
    """A uv venv with a package, a console script and a .pth-carrying distribution, adopted and
    mounted, with its hooks in place."""
    wheels = tmp_path / "wheels"
    path = make_venv(tool="uv")
    uv_pip(path, str(build_wheel(wheels, simple_package("demo"))), str(build_wheel(wheels, pth_package())))
    run_venvfs("mount", str(path))
    venv = Venv.open(path)
    # The .pth must be written while nothing is mounted (the mount hides the directory it goes to).
    run_venvfs("umount", str(path))
    run_venvfs("hook", "install", str(path))
    run_venvfs("mount", str(path))
    try:
        yield venv
    finally:
        run_venvfs("umount", str(path), check=False)


def is_mounted(venv: Venv) -> bool:
    try:
        return os.path.ismount(venv.site_packages) and venv.site_packages.is_dir()
    except OSError:
        return False


def daemon_pid(venv: Venv, run_venvfs: RunVenvfs) -> int:
    mounts = json.loads(run_venvfs("list", "--json").stdout)
    (pid,) = [m["pid"] for m in mounts if m["venv"] == str(venv.root)]
    return int(pid)


def test_mounted_venv_hides_the_hook(mounted_venv: Venv) -> None:
    venv = mounted_venv
    assert is_mounted(venv)
    assert PTH_NAME not in os.listdir(venv.site_packages)
    proc = subprocess.run([str(venv.python), "-c", "import sys; print(hasattr(sys, '_venvfs_automount_ran'))"],
                          capture_output=True, text=True)
    assert proc.stdout == "False\n", proc.stderr  # the hook does not even run in a mounted venv
    assert hooks.status(venv).ok, hooks.status(venv).problems


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "tcsh"])
def test_activation_mounts_an_unmounted_venv(shell: str, mounted_venv: Venv, run_venvfs: RunVenvfs) -> None:
    venv = mounted_venv
    require_shell(shell, venv)
    run_venvfs("umount", str(venv.root))
    assert not is_mounted(venv)
    then = {"fish": f"python -c \"{CHECK}\"", "tcsh": f"python -c \"{CHECK}\""}.get(shell, f'python -c "{CHECK}"')
    proc = run_activation(shell, venv, then=then)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1.0", "yes"], (proc.stdout, proc.stderr)
    assert proc.stderr == ""
    assert is_mounted(venv)


def test_python_started_directly_mounts(mounted_venv: Venv, run_venvfs: RunVenvfs) -> None:
    venv = mounted_venv
    run_venvfs("umount", str(venv.root))
    proc = subprocess.run([str(venv.python), "-c", CHECK], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1.0", "yes"] and proc.stderr == ""
    assert is_mounted(venv)
    # python -m, once more from the unmounted state
    run_venvfs("umount", str(venv.root))
    proc = subprocess.run([str(venv.python), "-m", "demo.sub.helpers"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_console_script_mounts(mounted_venv: Venv, run_venvfs: RunVenvfs) -> None:
    venv = mounted_venv
    run_venvfs("umount", str(venv.root))
    proc = subprocess.run([str(venv.bin_dir / "demo-hello")], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "demo 1.0\n", proc.stderr
    assert is_mounted(venv)


@pytest.mark.allow_warnings
def test_activation_brings_back_a_killed_daemon(mounted_venv: Venv, run_venvfs: RunVenvfs) -> None:
    venv = mounted_venv
    # Daemon and watcher killed together (a cgroup kill): the dead mount stays for activation to clear.
    kill_daemon(venv.root, watcher=True)
    with pytest.raises(OSError):
        venv.site_packages.stat()  # ENOTCONN: the mount is dead
    proc = run_activation("bash", venv, then=f'python -c "{CHECK}"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1.0", "yes"], (proc.stdout, proc.stderr)
    assert is_mounted(venv)


def test_eject_a_mounted_venv_keeps_what_the_user_wrote(mounted_venv: Venv, store: Store, tmp_path: Path,
                                                        run_venvfs: RunVenvfs) -> None:
    venv = mounted_venv
    sp = venv.site_packages
    (sp / "demo" / "notes.txt").write_text("written through the mount\n")
    helpers = sp / "demo" / "sub" / "helpers.py"
    helpers.write_text(helpers.read_text() + "EDITED = True\n")  # a copy-up of a store file
    (sp / "demo" / "data" / "table.txt").unlink()  # a whiteout
    uv_pip(venv.root, str(build_wheel(tmp_path / "w2", simple_package("extra", "2.0"))))  # into the upper layer

    proc = run_venvfs("eject", str(venv.root), "--json")
    report = json.loads(proc.stdout)
    assert report["unmounted"] and report["converted"]
    assert not is_mounted(venv) and not venv.state_dir.exists()
    assert store.registered_venvs() == []
    assert (sp / "demo" / "notes.txt").read_text() == "written through the mount\n"
    assert helpers.read_text().endswith("EDITED = True\n")
    assert not (sp / "demo" / "data" / "table.txt").exists()
    assert not (sp / PTH_NAME).exists()
    assert not set(venv_inodes(venv.root)) & store_inodes(store)
    proc = subprocess.run([str(venv.python), "-c", FULL_CHECK + "\nimport extra, demo.sub.helpers as h; "
                           "assert h.EDITED and extra.VERSION == '2.0'", "demo/data/table.txt"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr
    proc = subprocess.run([str(venv.bin_dir / "extra-hello")], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "extra 2.0\n", proc.stderr
    # Nothing venvfs left would mount it again.
    proc = run_activation("bash", venv, then=f'python -c "{CHECK}"')
    assert proc.returncode == 0 and not is_mounted(venv)


def test_interpreter_start_falls_back_to_materialized_files(mounted_venv: Venv, run_venvfs: RunVenvfs) -> None:
    """FUSE unusable at start-up: the mount materializes instead, says so in one line, and the same
    process imports from the real files; later starts do not try again (materialized layout)."""
    venv = mounted_venv
    run_venvfs("umount", str(venv.root))
    env = {**os.environ, "VENVFS_DISABLE_FUSE": "1"}
    proc = subprocess.run([str(venv.python), "-c", CHECK], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1.0", "yes"]
    assert len(proc.stderr.splitlines()) == 1 and "disabled by VENVFS_DISABLE_FUSE" in proc.stderr
    assert venv.read_state().layout == "materialized" and not is_mounted(venv)
    proc = subprocess.run([str(venv.python), "-c", CHECK], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.split() == ["1.0", "yes"]
    assert not (venv.site_packages / PTH_NAME).exists()  # the stray hook removed itself
    proc = run_activation("bash", venv, env={"VENVFS_DISABLE_FUSE": "1"}, then=f'python -c "{CHECK}"')
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
