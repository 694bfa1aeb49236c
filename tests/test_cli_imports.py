"""What the quick commands import (issue 16, point 4): ``venvfs --version``, ``venvfs list`` and ``venvfs
mount`` of a mounted venv (the activation hook's call) pay for every module they load at each start.

Structural, never timed: the modules a real ``python -X importtime -m venvfs ...`` run loads, checked
against what each command has no use for (trio and pyfuse3 are the daemon's, packaging's tags the
selection's, installer the materializer's, the other command groups their own).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, stop_mount, uv_pip
from tests.wheelbuilder import build_wheel, simple_package
from venvfs.cli import app
from venvfs.store.store import Store

# Nobody's start-up needs these: the FUSE daemon's libraries, the selection's tag matching, the
# materializer's script writer (installer, with the email package), bytecode compilation's threads,
# and the layout switches' machinery (view, materializer, linker), which a mounted venv never runs.
NEVER = {"trio", "pyfuse3", "packaging.tags", "installer", "email", "concurrent.futures", "ctypes",
         "venvfs.mount.fuse", "venvfs.mount.service", "venvfs.mount.overlay", "venvfs.venv.view",
         "venvfs.venv.materialize", "venvfs.venv.linkmode", "venvfs.store.bytecode"}


def _imports(store: Path, *args: str, service: bool = False) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules ``venvfs ARGS`` loads, run where it is typed (``service``: in the store's mount
    service where it answers, as a user's command line does)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "VENVFS_STORE": str(store)}
    if not service:
        env["VENVFS_SERVICE"] = "0"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "venvfs", *args], capture_output=True,
                          text=True, timeout=120, cwd="/", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:")}
    assert ("venvfs.cli.thin" if service else "venvfs.cli.app") in modules, "no -X importtime output to judge"
    return modules, proc


def _loaded(modules: set[str], names: set[str]) -> set[str]:
    """The ``names`` (packages and their submodules) among ``modules``."""
    return {m for m in modules if m in names or any(m.startswith(n + ".") for n in names)}


def test_commands_table_names_the_module_that_registers_each_command() -> None:
    # app.COMMANDS decides which one module a command line imports: a command missing from it (or
    # listed under another module) would still work, but through the slow path of importing them all.
    registered: dict[str, str] = {}
    for module in app.COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        subparsers = parser.add_subparsers()
        __import__(module, fromlist=["register"]).register(subparsers)
        registered.update(dict.fromkeys(subparsers.choices, module))
    assert registered == app.COMMANDS


def test_version_imports_no_command(store: Store) -> None:
    modules, proc = _imports(store.root, "--version")
    assert proc.stdout.startswith("venvfs ")
    assert not _loaded(modules, NEVER | {"logging", "packaging", "platformdirs", "venvfs.store", "venvfs.venv",
                                         "venvfs.mount", "venvfs.hooks", "venvfs.cli.common", "venvfs.cli.store",
                                         "venvfs.cli.mount", "venvfs.cli.hooks", "venvfs.cli.bench"})


@pytest.mark.fuse
def test_list_and_mount_of_a_mounted_venv_import_only_their_own(
        require_fuse: None, store: Store, make_venv: Callable[..., Path], tmp_path: Path) -> None:
    path = make_venv("v", tool="uv")
    uv_pip(path, str(build_wheel(tmp_path / "wheels", simple_package())))
    other_commands = {"venvfs.cli.store", "venvfs.cli.hooks", "venvfs.cli.bench"}
    try:
        subprocess.run([sys.executable, "-m", "venvfs", "mount", str(path)], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), "VENVFS_STORE": str(store.root)})
        modules, proc = _imports(store.root, "list")
        assert str(path) in proc.stdout
        # What is mounted is read in the venv layer (venv/mountinfo.py): listing imports no mount machinery.
        never = NEVER | other_commands | {"venvfs.mount", "venvfs.hooks", "venvfs.venv.registry", "platformdirs"}
        assert not _loaded(modules, never), sorted(_loaded(modules, never))
        modules, proc = _imports(store.root, "mount", str(path))
        assert "already mounted" in proc.stdout
        # The daemon's own start (its loop, the keeper, the service's client) is not the command's.
        never = NEVER | other_commands | {"venvfs.mount.loop", "venvfs.mount.keeper", "venvfs.mount.watch",
                                          "venvfs.mount.serviceclient", "resource"}
        assert not _loaded(modules, never), sorted(_loaded(modules, never))
        # Handed to the store's mount service (the mount above started it): the client loads the socket's
        # path and nothing of the command line, the store or the venv (cli/thin.py).
        for args in (("list",), ("mount", str(path))):
            modules, proc = _imports(store.root, *args, service=True)
            assert str(path) in proc.stdout
            client = NEVER | {"argparse", "logging", "venvfs.cli.app", "venvfs.cli.common", "venvfs.store",
                              "venvfs.venv", "venvfs.mount.serviceclient", "venvfs.mount.daemon", "platformdirs"}
            assert not _loaded(modules, client), sorted(_loaded(modules, client))
    finally:
        stop_mount(path)
