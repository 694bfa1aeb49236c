"""Interrupted layout switches (issue 12, part 5), over real venvs, wheels and FUSE mounts.

Each test stops a `venvfs` command at a named step with the library's fault injection point
(``VENVFS_TEST_CRASH_AT``: the process dies there by ``os._exit(137)``, as under SIGKILL), then
checks that `venvfs status` reports the half-done switch, that what comes next (starting the venv's
python, activating it, or the next `venvfs` command) finishes it, that `import` of the selected
distributions works again and that no file of the venv's own is lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_hooks import require_shell, run_activation

from venvfs.fsutil import CRASH_ENV
from venvfs.store.store import Store
from venvfs.venv import layout
from venvfs.venv.venv import Venv

from conftest import uv_pip
from wheelbuilder import build_wheel, simple_package

pytestmark = pytest.mark.fuse

RunVenvfs = Callable[..., subprocess.CompletedProcess[str]]
CHECK = "import demo, other, mine; from demo.sub import helpers; print(demo.VERSION, other.VERSION, mine.MINE)"
MINE = b"MINE = 'kept'\n"
NO_HOOKS = {"VENVFS_NO_AUTOMOUNT": "1"}


@pytest.fixture
def venv(require_fuse: None, tmp_path: Path, make_venv: Callable[..., Path], store: Store,
         run_venvfs: RunVenvfs) -> Iterator[Venv]:
    """A uv venv with two real wheels and a module of the user's own, adopted (materialized layout,
    hooks on); one of demo's files edited by the user."""
    wheels = tmp_path / "wheels"
    path = make_venv(tool="uv")
    uv_pip(path, str(build_wheel(wheels, simple_package("demo"))), str(build_wheel(wheels, simple_package("other"))))
    v = Venv.open(path)
    (v.site_packages / "mine.py").write_bytes(MINE)
    run_venvfs("adopt", str(path))
    # As editors save: a new file renamed over the old one (adopt may have hardlinked it to the store).
    edited = v.site_packages / "demo" / "data" / "table.txt"
    edited.with_name("table.txt.new").write_bytes(b"edited by the user\n")
    os.replace(edited.with_name("table.txt.new"), edited)
    try:
        yield v
    finally:
        run_venvfs("umount", str(path), check=False)


def crash(step: str, *args: str) -> None:
    """Run `venvfs ARGS` (against the test's store: the fixture sets VENVFS_STORE) and let it die at ``step``."""
    env = {**os.environ, CRASH_ENV: step}
    proc = subprocess.run([sys.executable, "-m", "venvfs", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 137, f"did not stop at {step}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def python(venv: Venv, code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv.python), "-c", code], capture_output=True, text=True, cwd="/",
                          env={**os.environ, **(env or {})}, timeout=300)


def status_json(run_venvfs: RunVenvfs, venv: Venv) -> dict[str, object]:
    data: dict[str, object] = json.loads(run_venvfs("status", "--json", str(venv.root)).stdout)
    return data


def assert_whole_and_mounted(venv: Venv) -> None:
    proc = python(venv, CHECK, NO_HOOKS)
    assert proc.returncode == 0 and proc.stdout.split() == ["1.0", "1.0", "kept"], proc.stderr
    assert os.path.ismount(venv.site_packages)
    assert (venv.site_packages / "demo" / "data" / "table.txt").read_bytes() == b"edited by the user\n"
    assert (venv.site_packages / "mine.py").read_bytes() == MINE
    assert venv.read_state().layout == "mounted"
    assert layout.interrupted(venv) is None
    assert not (venv.state_dir / layout.TO_MOUNTED).exists()


@pytest.mark.parametrize("step", ["to-mounted:emptying", "to-mounted:emptied"])
def test_killed_switch_to_mounted_is_reported_and_python_finishes_it(
        step: str, venv: Venv, run_venvfs: RunVenvfs) -> None:
    crash(step, "mount", str(venv.root))
    assert (venv.state_dir / layout.TO_MOUNTED).exists()
    if step == "to-mounted:emptied":
        # What the issue reproduced: without the hooks, the venv is broken.
        assert python(venv, "import demo", NO_HOOKS).returncode != 0

    st = status_json(run_venvfs, venv)
    assert st["interrupted"] and "switch to the mounted layout was interrupted" in str(st["interrupted"])
    text = run_venvfs("status", str(venv.root)).stdout
    assert "interrupted: the switch to the mounted layout was interrupted" in text, text

    # Starting the venv's python runs the interpreter-start hook, which finishes the switch and mounts.
    proc = python(venv, CHECK)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1.0", "1.0", "kept"], proc.stderr
    assert proc.stderr == f"venvfs: finished the interrupted switch of {venv.root} to the mounted layout\n"
    assert_whole_and_mounted(venv)
    assert status_json(run_venvfs, venv)["interrupted"] is None


def test_killed_switch_to_mounted_is_finished_by_activation(venv: Venv, run_venvfs: RunVenvfs) -> None:
    require_shell("bash", venv)
    crash("to-mounted:emptied", "mount", str(venv.root))
    proc = run_activation("bash", venv, then=f'python -c "{CHECK}"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1.0", "1.0", "kept"], proc.stderr
    assert_whole_and_mounted(venv)


def test_killed_switch_to_mounted_is_finished_by_the_next_mount(venv: Venv, run_venvfs: RunVenvfs) -> None:
    crash("to-mounted:emptying", "mount", str(venv.root))
    # Hooks off: only the next command can finish it.
    run_venvfs("hook", "uninstall", str(venv.root))
    proc = run_venvfs("mount", str(venv.root))
    assert proc.stderr == f"venvfs: finished the interrupted switch of {venv.root} to the mounted layout\n"
    assert_whole_and_mounted(venv)


def test_killed_switch_to_mounted_then_adopt_keeps_the_selection(venv: Venv, run_venvfs: RunVenvfs) -> None:
    selection = venv.read_state().selection
    crash("to-mounted:emptied", "mount", str(venv.root))
    # adopt of a half-emptied site-packages would forget every distribution moved away so far.
    proc = run_venvfs("adopt", str(venv.root), check=False)
    assert f"finished the interrupted switch of {venv.root} to the mounted layout" in proc.stderr
    assert venv.read_state().selection == selection
    run_venvfs("mount", str(venv.root))
    assert_whole_and_mounted(venv)


def test_killed_switch_to_materialized_is_reported_and_finished_by_mount(
        venv: Venv, run_venvfs: RunVenvfs) -> None:
    run_venvfs("mount", str(venv.root))
    (venv.site_packages / "written_while_mounted.py").write_text("X = 1\n")
    (venv.site_packages / "other" / "sub" / "helpers.py").unlink()
    crash("to-materialized:applying", "umount", "--materialize", str(venv.root))
    assert not os.path.ismount(venv.site_packages)

    st = status_json(run_venvfs, venv)
    assert "switch to the materialized layout was interrupted" in str(st["interrupted"])

    proc = run_venvfs("mount", str(venv.root))
    assert proc.stderr == f"venvfs: finished the interrupted switch of {venv.root} to the materialized layout\n"
    assert_whole_and_mounted(venv)
    assert (venv.site_packages / "written_while_mounted.py").read_text() == "X = 1\n"
    assert not (venv.site_packages / "other" / "sub" / "helpers.py").exists()
    # Nothing the interrupted switch wrote lingers under the mount.
    run_venvfs("umount", str(venv.root))
    assert os.listdir(venv.site_packages) == [layout.AUTOMOUNT_PTH]


def test_marker_left_after_a_finished_switch_is_dropped(venv: Venv, run_venvfs: RunVenvfs) -> None:
    """A switch killed after its state was written but before its marker went away: the marker must
    not make a later switch skip its first phase (the whiteouts for files the user deleted)."""
    run_venvfs("mount", str(venv.root))
    (venv.state_dir / layout.TO_MOUNTED).write_bytes(b"whiteouts written\n")
    assert status_json(run_venvfs, venv)["interrupted"] is None
    run_venvfs("umount", "--materialize", str(venv.root))
    helpers = venv.site_packages / "demo" / "sub" / "helpers.py"
    helpers.unlink()  # the user deletes a file of a stored distribution
    run_venvfs("mount", str(venv.root))
    assert not helpers.exists()
    assert not (venv.state_dir / layout.TO_MOUNTED).exists()


def test_killed_add_is_reported_and_finished_by_the_next_command(
        venv: Venv, tmp_path: Path, run_venvfs: RunVenvfs) -> None:
    """An add killed after the state names the new distribution but before its files are placed: a
    switch to the mounted layout would then hide the missing files for good behind whiteouts."""
    run_venvfs("store", "add", str(build_wheel(tmp_path / "wheels3", simple_package("third"))))
    crash("select:placing", "add", str(venv.root), "third")
    assert "an add/remove was interrupted" in str(status_json(run_venvfs, venv)["interrupted"])
    proc = run_venvfs("mount", str(venv.root))
    assert proc.stderr == f"venvfs: finished the interrupted change of the selection of {venv.root}\n"
    assert_whole_and_mounted(venv)
    proc = python(venv, "import third.sub.helpers; print(third.VERSION)", NO_HOOKS)
    assert proc.returncode == 0 and proc.stdout == "1.0\n", proc.stderr
    assert (venv.bin_dir / "third-hello").exists()
    assert not (venv.state_dir / "changing-selection").exists()


def test_killed_eject_is_finished_by_the_next_eject(venv: Venv, store: Store, run_venvfs: RunVenvfs) -> None:
    """An eject killed while it deletes VENV/.venvfs (state.json may already be gone): the venv is a
    plain one that works, and the next eject removes what is left and makes the store forget it."""
    crash("eject:renamed", "eject", str(venv.root))
    leftover = venv.root / ".venvfs-ejected"
    (leftover / "state.json").unlink()  # as a delete killed half way may leave it
    assert not venv.is_managed and venv.root in store.registered_venvs()
    assert python(venv, CHECK).stdout.split() == ["1.0", "1.0", "kept"]
    proc = run_venvfs("eject", str(venv.root))
    assert proc.stderr == f"venvfs: finished the interrupted eject of {venv.root}\n"
    assert not leftover.exists() and venv.root not in store.registered_venvs()
    assert python(venv, CHECK).stdout.split() == ["1.0", "1.0", "kept"]


def test_killed_commit_leaves_upper_copies_to_the_next_daemon(
        venv: Venv, tmp_path: Path, run_venvfs: RunVenvfs) -> None:
    """A commit killed after the state names the stored distribution, before the daemon dropped the
    upper copies: the next daemon start drops them (the store serves the same bytes)."""
    run_venvfs("mount", str(venv.root))
    uv_pip(venv.root, str(build_wheel(tmp_path / "wheels4", simple_package("fourth"))))
    copy = venv.upper_dir / "fourth" / "sub" / "helpers.py"
    assert copy.exists()
    crash("commit:selected", "commit", str(venv.root))
    assert any(k.startswith("fourth-") for k in venv.read_state().selection)
    run_venvfs("umount", str(venv.root))
    run_venvfs("mount", str(venv.root))
    assert not copy.exists()
    proc = python(venv, "import fourth.sub.helpers; print(fourth.VERSION)", NO_HOOKS)
    assert proc.returncode == 0 and proc.stdout == "1.0\n", proc.stderr
    assert_whole_and_mounted(venv)


@pytest.mark.parametrize("then", ["eject", "mount"])
def test_eject_killed_while_materializing(then: str, venv: Venv, store: Store, run_venvfs: RunVenvfs) -> None:
    """An eject of a mounted venv killed while it brings the upper layer back: eject run again
    finishes it; mount instead keeps the venv with venvfs, its hooks on again."""
    run_venvfs("mount", str(venv.root))
    (venv.site_packages / "written_while_mounted.py").write_text("X = 1\n")
    crash("to-materialized:applying", "eject", str(venv.root))
    assert not venv.read_state().hooks
    assert "switch to the materialized layout was interrupted" in str(status_json(run_venvfs, venv)["interrupted"])
    proc = run_venvfs(then, str(venv.root))
    assert f"finished the interrupted switch of {venv.root} to the materialized layout" in proc.stderr
    if then == "eject":
        assert not venv.state_dir.exists() and not (venv.root / ".venvfs-ejected").exists()
        assert venv.root not in store.registered_venvs()
    else:
        assert f"abandoned the unfinished eject of {venv.root}; its hooks are back on" in proc.stderr
        assert_whole_and_mounted(venv)
        assert venv.read_state().hooks and status_json(run_venvfs, venv)["interrupted"] is None
        run_venvfs("umount", str(venv.root))
    proc = python(venv, CHECK + "; import written_while_mounted")
    assert proc.returncode == 0 and proc.stdout.split() == ["1.0", "1.0", "kept"], proc.stderr
    assert (venv.site_packages / "demo" / "data" / "table.txt").read_bytes() == b"edited by the user\n"


def test_umount_works_while_a_pending_switch_cannot_be_finished(venv: Venv, store: Store,
                                                                 run_venvfs: RunVenvfs) -> None:
    """`umount` must work on a damaged venv: a half-done switch whose store is out of reach (an
    unplugged disk) is left for later, with a warning, instead of failing the unmount."""
    crash("to-mounted:emptied", "mount", str(venv.root))
    away = store.root.with_name("store-away")
    store.root.rename(away)
    try:
        proc = run_venvfs("umount", str(venv.root))
        assert "could not be finished yet" in proc.stderr, proc.stderr
        assert (venv.state_dir / layout.TO_MOUNTED).exists()
    finally:
        away.rename(store.root)
    run_venvfs("mount", str(venv.root))
    assert_whole_and_mounted(venv)
