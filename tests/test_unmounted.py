"""Findings 2 and 6 of issue 15: nothing an installer writes into an unmounted venv is hidden by the
next mount, and a killed daemon does not leave a venv that only says ``ModuleNotFoundError``.

Real uv and pip, real mounts, real SIGKILLs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from venvfs.hooks.target import PTH_NAME
from venvfs.mount import daemon
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

from conftest import kill_daemon, uv, uv_pip
from wheelbuilder import build_wheel, simple_package

Run = Callable[..., subprocess.CompletedProcess[str]]

VERSION_OF = ("import importlib.metadata as m, six; "
              "print(six.VERSION, m.version('six'), sorted(d.metadata['Name'] for d in m.distributions()))")


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    d = tmp_path / "wheels"
    for version in ("1.0", "2.0"):
        build_wheel(d, simple_package("six", version))
    build_wheel(d, simple_package())
    return d


def _python(venv: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd="/")


def _uv_unmounted(venv: Path, wheels: Path, *args: str) -> None:
    """uv as after a reboot: no hook runs (VENVFS_NO_AUTOMOUNT keeps uv's own interpreter probe, should
    it start the venv's python, from mounting it first)."""
    subprocess.run([uv(), "pip", *args, "-q", "--python", str(venv / "bin" / "python"), "--no-index",
                    "--find-links", str(wheels)], check=True, env={**os.environ, "VENVFS_NO_AUTOMOUNT": "1"})


def _uv_list(venv: Path) -> list[tuple[str, str]]:
    out = subprocess.run([uv(), "pip", "list", "--format", "json", "--python", str(venv / "bin" / "python")],
                         capture_output=True, text=True, check=True).stdout
    return sorted((p["name"], p["version"]) for p in json.loads(out))


@pytest.fixture
def mounted(require_fuse: None, store: Store, make_venv: Callable[..., Path], run_venvfs: Run,
            wheels: Path) -> Path:
    path = make_venv("v", tool="uv")
    uv_pip(path, "--no-index", "--find-links", str(wheels), "demo")
    run_venvfs("mount", str(path))
    yield path
    run_venvfs("umount", str(path), check=False)


# -- finding 6: a killed daemon -----------------------------------------------------------------------

def test_a_killed_daemons_mount_goes_and_the_next_python_start_mounts_again(mounted: Path) -> None:
    venv = Venv.open(mounted)
    kill_daemon(mounted, watcher=False)
    # The watcher unmounts the dead mount: site-packages is the directory underneath again, whose
    # .pth mounts the venv at the next interpreter start.
    deadline = __import__("time").monotonic() + 10
    while daemon.mount_state(venv) != "unmounted":
        assert __import__("time").monotonic() < deadline, daemon.mount_state(venv)
        __import__("time").sleep(0.02)
    proc = _python(mounted, "import demo; print(demo.VERSION)")
    assert proc.returncode == 0 and proc.stdout == "1.0\n", proc.stderr
    assert daemon.mount_state(venv) == "mounted"


def test_a_dead_mount_says_how_to_fix_it_in_venvfs_commands(mounted: Path, run_venvfs: Run, wheels: Path) -> None:
    kill_daemon(mounted, watcher=True)  # daemon and watcher: the dead mount stays
    proc = run_venvfs("add", str(mounted), str(wheels / "six-1.0-py3-none-any.whl"), check=False)
    assert "dead mount" in proc.stderr and f"venvfs mount {mounted}" in proc.stderr, proc.stderr
    proc = run_venvfs("hook", "status", str(mounted), check=False)
    assert f"venvfs mount {mounted}" in proc.stdout + proc.stderr


# -- finding 2: installs into an unmounted venv --------------------------------------------------------

@pytest.mark.allow_warnings
def test_uv_install_while_unmounted_is_taken_in_at_the_next_mount(mounted: Path, run_venvfs: Run,
                                                                  wheels: Path) -> None:
    run_venvfs("umount", str(mounted))
    _uv_unmounted(mounted, wheels, "install", "six==2.0")
    sp = Venv.open(mounted).site_packages
    assert "six" in os.listdir(sp)  # below the mount point
    status = json.loads(run_venvfs("status", str(mounted), "--json").stdout)
    assert "six" in status["unmounted_writes"] and f"venvfs mount {mounted}" in status["mount_problem"]

    # The next interpreter start mounts (the .pth) and takes it in.
    proc = _python(mounted, VERSION_OF)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(" ", 2)[:2] == ["2.0", "2.0"], proc.stdout
    assert "took in what was installed while unmounted" in proc.stderr
    assert daemon.mount_state(Venv.open(mounted)) == "mounted"
    assert _uv_list(mounted) == [("demo", "1.0"), ("six", "2.0")]
    assert json.loads(run_venvfs("status", str(mounted), "--json").stdout)["mount_problem"] is None


@pytest.mark.allow_warnings
def test_pip_install_while_unmounted_is_taken_in(require_fuse: None, store: Store, make_venv: Callable[..., Path],
                                                 run_venvfs: Run, wheels: Path) -> None:
    path = make_venv("p", tool="venv")
    run_venvfs("mount", str(path))
    try:
        run_venvfs("umount", str(path))
        # The venv's own pip is a stored distribution, hidden while unmounted: a pip from outside.
        subprocess.run([sys.executable, "-m", "pip", "--python", str(path / "bin" / "python"), "install", "-q",
                        "--no-index", "--find-links", str(wheels), "six==1.0"], check=True,
                       env={**os.environ, "VENVFS_NO_AUTOMOUNT": "1"})
        assert "six" in os.listdir(Venv.open(path).site_packages)
        run_venvfs("mount", str(path))
        proc = _python(path, VERSION_OF)
        assert proc.returncode == 0 and proc.stdout.startswith("1.0 1.0"), proc.stderr
        names = subprocess.run([str(path / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                               capture_output=True, text=True, check=True).stdout
        assert {"name": "six", "version": "1.0"} in json.loads(names)
    finally:
        run_venvfs("umount", str(path), check=False)


@pytest.mark.allow_warnings
def test_another_version_written_while_unmounted_replaces_the_selected_build(mounted: Path, run_venvfs: Run,
                                                                           wheels: Path, store: Store) -> None:
    run_venvfs("add", str(mounted), str(wheels / "six-1.0-py3-none-any.whl"))
    (Venv.open(mounted).site_packages / "six" / "__init__.py").write_text("VERSION = 'edited 1.0'\n")  # upper copy
    run_venvfs("umount", str(mounted))
    _uv_unmounted(mounted, wheels, "install", "six==2.0")
    run_venvfs("mount", str(mounted))
    venv = Venv.open(mounted)
    dist_infos = sorted(n for n in os.listdir(venv.site_packages) if n.startswith("six-"))
    assert dist_infos == ["six-2.0.dist-info"]
    proc = _python(mounted, VERSION_OF)
    assert proc.stdout.startswith("2.0 2.0"), (proc.stdout, proc.stderr)
    assert not any(k.startswith("six-1.0") for k in venv.read_state().selection)
    assert not (venv.upper_dir / "six-1.0.dist-info").exists()


@pytest.mark.allow_warnings
def test_the_selected_build_written_again_while_unmounted_stays_in_the_store(mounted: Path, run_venvfs: Run,
                                                                            wheels: Path) -> None:
    run_venvfs("add", str(mounted), str(wheels / "six-1.0-py3-none-any.whl"))
    run_venvfs("umount", str(mounted))
    _uv_unmounted(mounted, wheels, "install", "six==1.0")
    run_venvfs("mount", str(mounted))
    venv = Venv.open(mounted)
    assert not (venv.upper_dir / "six" / "sub" / "helpers.py").exists()  # the store serves it
    assert any(k.startswith("six-1.0") for k in venv.read_state().selection)
    proc = _python(mounted, VERSION_OF)
    assert proc.stdout.startswith("1.0 1.0"), (proc.stdout, proc.stderr)
    assert _uv_list(mounted) == [("demo", "1.0"), ("six", "1.0")]


@pytest.mark.allow_warnings
def test_a_directory_written_where_the_user_deleted_one_hides_the_old_contents(mounted: Path,
                                                                               run_venvfs: Run) -> None:
    venv = Venv.open(mounted)
    import shutil

    shutil.rmtree(venv.site_packages / "demo")  # through the mount: a whiteout
    run_venvfs("umount", str(mounted))
    (venv.site_packages / "demo").mkdir()
    (venv.site_packages / "demo" / "__init__.py").write_text("VERSION = 'mine'\n")
    run_venvfs("mount", str(mounted))
    assert sorted(os.listdir(venv.site_packages / "demo")) == ["__init__.py"]
    assert (venv.site_packages / "demo" / "__init__.py").read_text() == "VERSION = 'mine'\n"


@pytest.mark.allow_warnings
def test_a_take_in_killed_half_way_is_finished_by_the_next_mount(mounted: Path, run_venvfs: Run,
                                                                 wheels: Path) -> None:
    run_venvfs("umount", str(mounted))
    _uv_unmounted(mounted, wheels, "install", "six==2.0")
    venv = Venv.open(mounted)
    proc = subprocess.run([sys.executable, "-m", "venvfs", "mount", str(mounted)], capture_output=True, text=True,
                          env={**os.environ, "VENVFS_TEST_CRASH_AT": "take-in:moving"})
    assert proc.returncode == 137, proc.stderr
    assert daemon.mount_state(venv) == "unmounted"
    left = os.listdir(venv.site_packages)
    assert "six" in left or "six-2.0.dist-info" in left  # part moved, part not
    run_venvfs("mount", str(mounted))
    proc = _python(mounted, VERSION_OF)
    assert proc.stdout.startswith("2.0 2.0"), (proc.stdout, proc.stderr)
    assert _uv_list(mounted) == [("demo", "1.0"), ("six", "2.0")]


def test_a_file_written_over_a_directory_of_the_venv_is_refused(mounted: Path, run_venvfs: Run) -> None:
    venv = Venv.open(mounted)
    (venv.site_packages / "notes").mkdir()
    (venv.site_packages / "notes" / "a.txt").write_text("through the mount\n")
    run_venvfs("umount", str(mounted))
    (venv.site_packages / "notes").write_text("written while unmounted\n")
    proc = run_venvfs("mount", str(mounted), check=False)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.count("\n") == 1 and "move one of them away" in proc.stderr
    assert daemon.mount_state(venv) == "unmounted"
    assert (venv.site_packages / "notes").read_text() == "written while unmounted\n"
    assert (venv.upper_dir / "notes" / "a.txt").read_text() == "through the mount\n"
    assert sorted(os.listdir(venv.site_packages)) == sorted(["notes", PTH_NAME])


@pytest.mark.allow_warnings
def test_what_was_installed_while_unmounted_survives_the_fallback_to_real_files(
        mounted: Path, run_venvfs: Run, wheels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_venvfs("add", str(mounted), str(wheels / "six-1.0-py3-none-any.whl"))
    run_venvfs("umount", str(mounted))
    _uv_unmounted(mounted, wheels, "install", "six==2.0")
    monkeypatch.setenv("VENVFS_DISABLE_FUSE", "1")
    proc = run_venvfs("mount", str(mounted))
    assert "keeps real files" in proc.stderr
    sp = Venv.open(mounted).site_packages
    assert sorted(n for n in os.listdir(sp) if n.startswith("six-")) == ["six-2.0.dist-info"]
    proc = _python(mounted, VERSION_OF)
    assert proc.stdout.startswith("2.0 2.0"), (proc.stdout, proc.stderr)
