"""Outcome 3 of issue 15: uv's daily commands on a venvfs venv (a project's mounted ``.venv``), quiet
and correct: no uv warning, no dead mount, the venv's contents as uv says.

Real uv (offline: tiny wheels through ``--find-links``), real mounts. The tests run in order on one
project, as a user's day would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from venvfs.mount import daemon
from venvfs.venv.venv import Venv

from conftest import fuse_problem, missing_tool, stop_mount, uv
from wheelbuilder import build_wheel, simple_package

PYPROJECT = """[project]
name = "proj"
version = "0.1"
requires-python = ">=3.10"
dependencies = []

[tool.uv]
package = false
"""


class Project:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.venv = root / ".venv"
        self.env = env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(args), cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def uv(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(uv(), *args, check=check)

    def activated(self, command: str) -> subprocess.CompletedProcess[str]:
        return self.run("bash", "-c", f"source .venv/bin/activate && {command}")

    def venvfs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "venvfs", *args, check=check)

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "python"), "-c", code, check=False)

    def installed(self) -> list[str]:
        out = self.uv("pip", "list", "--format", "json").stdout
        return sorted(f"{p['name']}=={p['version']}" for p in json.loads(out))

    def mount_state(self) -> str:
        return daemon.mount_state(Venv(self.venv))


def quiet(proc: subprocess.CompletedProcess[str]) -> None:
    assert "warning" not in proc.stderr.lower(), proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    problem = fuse_problem()
    if problem:
        missing_tool(problem)
    base = tmp_path_factory.mktemp("uvday")
    wheels = base / "wheels"
    for name, version in (("tinya", "1.0"), ("tinyb", "1.0"), ("six", "1.0"), ("six", "2.0")):
        build_wheel(wheels, simple_package(name, version))
    root = base / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text(PYPROJECT)
    env = {**os.environ, "VENVFS_STORE": str(base / "store"), "UV_NO_INDEX": "1", "UV_FIND_LINKS": str(wheels),
           "UV_PYTHON_DOWNLOADS": "never"}
    for name in ("UV_LINK_MODE", "VIRTUAL_ENV", "VENVFS_NO_AUTOMOUNT"):
        env.pop(name, None)
    p = Project(root, env)
    p.uv("venv", "-q", "--python", sys.executable)
    proc = p.venvfs("mount", ".venv")
    p.mount_hint = proc.stderr  # type: ignore[attr-defined]
    yield p
    stop_mount(p.venv)


def test_mount_says_once_how_to_keep_uv_quiet(project: Project) -> None:
    hint = project.mount_hint  # type: ignore[attr-defined]
    assert "Failed to hardlink files" in hint and 'link-mode = "copy"' in hint
    assert str(project.root / "pyproject.toml") in hint
    project.venvfs("umount", ".venv")
    assert project.venvfs("mount", ".venv").stderr == ""  # once


def test_uv_add_in_the_activated_venv_is_quiet(project: Project) -> None:
    proc = project.activated("echo UV_LINK_MODE=$UV_LINK_MODE && uv add tinya")
    assert "UV_LINK_MODE=copy" in proc.stdout
    quiet(proc)
    assert project.python("import tinya; print(tinya.VERSION)").stdout == "1.0\n"
    assert project.mount_state() == "mounted"
    # deactivate takes the variable away again
    proc = project.activated("deactivate && echo \"after=${UV_LINK_MODE-unset}\"")
    assert "after=unset" in proc.stdout


# Each: activated, deactivated, then a user's own UV_LINK_MODE through an activation and a deactivate.
SHELL_SCRIPTS = {
    "bash": 'source .venv/bin/activate && echo "in=$UV_LINK_MODE"; deactivate; echo "out=${UV_LINK_MODE-unset}"; '
            'UV_LINK_MODE=symlink; export UV_LINK_MODE; source .venv/bin/activate; echo "mine=$UV_LINK_MODE"; '
            'deactivate; echo "kept=$UV_LINK_MODE"',
    "fish": 'source .venv/bin/activate.fish; echo "in=$UV_LINK_MODE"; deactivate; '
            'set -q UV_LINK_MODE; or echo out=unset; set -gx UV_LINK_MODE symlink; '
            'source .venv/bin/activate.fish; echo "mine=$UV_LINK_MODE"; deactivate; echo "kept=$UV_LINK_MODE"',
    # One command a line, as typed: csh expands aliases when it reads a line, so a `deactivate` on the
    # line that sources the script would not see the alias the script defines. Activated twice (the
    # second activation's own deactivate alias is wrapped again), deactivated once.
    "tcsh": "set prompt = ''\nsource .venv/bin/activate.csh\nsource .venv/bin/activate.csh\n"
            'echo "in=$UV_LINK_MODE"\ndeactivate\nif ( ! $?UV_LINK_MODE ) echo out=unset\n'
            "setenv UV_LINK_MODE symlink\nsource .venv/bin/activate.csh\necho \"mine=$UV_LINK_MODE\"\n"
            'deactivate\necho "kept=$UV_LINK_MODE"\n',
    "nu": "overlay use .venv/bin/activate.nu; print $'in=($env.UV_LINK_MODE)'; deactivate; "
          "print $'out=($env.UV_LINK_MODE? | default unset)'; $env.UV_LINK_MODE = 'symlink'; "
          "overlay use .venv/bin/activate.nu; print $'mine=($env.UV_LINK_MODE)'; deactivate; "
          "print $'kept=($env.UV_LINK_MODE)'",
}
SHELL_SCRIPTS["zsh"] = SHELL_SCRIPTS["bash"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "tcsh", "nu"])
def test_other_shells_set_and_restore_uv_link_mode(project: Project, shell: str) -> None:
    exe = shutil.which(shell)
    if exe is None:
        missing_tool(f"{shell} is not installed (scripts/test installs it)")
    out = project.run(str(exe), "-c", SHELL_SCRIPTS[shell]).stdout.split()
    assert out == ["in=copy", "out=unset", "mine=symlink", "kept=symlink"], out


def test_uv_add_without_activation_is_quiet_with_the_hinted_setting(project: Project) -> None:
    text = (project.root / "pyproject.toml").read_text()
    (project.root / "pyproject.toml").write_text(text.replace("[tool.uv]\n", '[tool.uv]\nlink-mode = "copy"\n'))
    proc = project.uv("add", "tinyb")
    quiet(proc)
    assert project.installed() == ["tinya==1.0", "tinyb==1.0"]


def test_uv_remove(project: Project) -> None:
    quiet(project.uv("remove", "tinya"))
    assert project.installed() == ["tinyb==1.0"]
    assert project.python("import tinya").returncode != 0
    upper = Venv(project.venv).upper_dir
    assert not any(n.startswith("tinya") for n in os.listdir(upper))  # nothing of it left behind


def test_uv_sync_after_an_unmount_takes_in_what_uv_installed(project: Project) -> None:
    project.venvfs("umount", ".venv")
    proc = project.uv("sync")  # no hook runs: uv installs below the mount point
    quiet(proc)
    assert project.python("import tinyb; print(tinyb.VERSION)").stdout == "1.0\n"  # mounts, takes in
    assert project.mount_state() == "mounted"
    assert project.installed() == ["tinyb==1.0"]


def test_uv_run_on_an_unmounted_venv(project: Project) -> None:
    project.venvfs("umount", ".venv")
    proc = project.uv("run", "python", "-c", "import tinyb; print(tinyb.VERSION)")
    assert proc.stdout == "1.0\n"
    quiet(proc)
    assert project.mount_state() == "mounted"


def test_uv_pip_install_uninstall_sync(project: Project) -> None:
    quiet(project.uv("pip", "install", "six==1.0"))
    assert "six==1.0" in project.installed()
    quiet(project.uv("pip", "install", "six==2.0"))
    assert project.python("import six; print(six.VERSION)").stdout == "2.0\n"
    quiet(project.uv("pip", "uninstall", "six"))
    assert project.python("import six").returncode != 0
    (project.root / "req.txt").write_text("tinya==1.0\n")
    quiet(project.uv("pip", "sync", "req.txt"))
    assert project.installed() == ["tinya==1.0"]
    assert project.mount_state() == "mounted"


def _no_mount_left(project: Project) -> None:
    assert daemon.mounted_fstype(Venv(project.venv).site_packages) is None
    assert not (project.venv / ".venvfs").exists()  # a new, plain venv: uv made it


def _uv_recreating(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """uv removes .venv recursively: .venvfs first, then lib/, where the mount point would be EBUSY.
    The daemon detaches itself when the removal starts; on a busy machine uv can reach lib/ first
    (docs/automount.md says so), and then the same command again must work without any venvfs
    command in between: the detach has happened by then."""
    proc = project.uv(*args, check=False)
    if proc.returncode != 0:
        assert "os error 16" in proc.stderr or "os error 39" in proc.stderr, proc.stderr
        deadline = time.monotonic() + 5
        while daemon.mounted_fstype(Venv(project.venv).site_packages) is not None:
            assert time.monotonic() < deadline, "the daemon did not detach after its venv was removed"
            time.sleep(0.05)
        proc = project.uv(*args)
    return proc


def test_uv_venv_clear_on_a_mounted_venv(project: Project) -> None:
    assert project.mount_state() == "mounted"
    proc = _uv_recreating(project, "venv", "--clear", "--python", sys.executable)
    quiet(proc)
    _no_mount_left(project)
    quiet(project.uv("sync"))
    assert project.python("import tinyb").returncode == 0


def _other_python() -> str | None:
    mine = os.path.realpath(sys.base_prefix)
    pyenv = sorted(str(p) for p in (Path.home() / ".pyenv" / "versions").glob("3.1[0-9]*/bin/python3"))
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", *pyenv):
        exe = shutil.which(candidate)
        if exe is None:
            continue
        proc = subprocess.run([exe, "-c", "import sys; print(sys.version_info >= (3, 10), sys.base_prefix)"],
                              capture_output=True, text=True)
        ok, prefix = proc.stdout.split(" ", 1) if proc.returncode == 0 else ("False", "")
        if ok == "True" and os.path.realpath(prefix.strip()) != mine:
            return exe
    return None


def test_uv_sync_after_a_python_change_recreates_the_venv(project: Project) -> None:
    other = _other_python()
    if other is None:
        missing_tool("no second Python >= 3.10 for a Python change")
    project.venvfs("mount", ".venv")
    assert project.mount_state() == "mounted"
    proc = _uv_recreating(project, "sync", "--python", str(other))
    quiet(proc)
    _no_mount_left(project)
    assert project.python("import tinyb").returncode == 0
