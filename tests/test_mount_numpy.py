"""The one real-world mount: numpy from PyPI, adopted, mounted, imported, then pip install/uninstall,
ending like a plain venv that received the same commands."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import stop_mount, uv_pip, writes_bytecode
from tests.test_pip_in_mount import tree
from tests.wheelbuilder import build_wheel, simple_package
from venvfs.mount import daemon
from venvfs.venv.venv import Venv

pytestmark = [pytest.mark.fuse, pytest.mark.slow]

CHECK = "import numpy; print(int(numpy.arange(10).sum()))"


def pip(venv: Path, *args: str) -> None:
    # uv venvs carry no pip: drive the test runner's pip at the venv's interpreter.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "--disable-pip-version-check",
                    *args], check=True, capture_output=True)


def test_numpy_venv_mounted(require_fuse: None, make_venv: Callable[..., Path],
                            run_venvfs: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    plain = make_venv("venv", tool="uv", parent=(tmp_path / "plain").mkdir() or tmp_path / "plain")
    mounted = make_venv("venv", tool="uv", parent=(tmp_path / "mounted").mkdir() or tmp_path / "mounted")
    for v in (plain, mounted):
        uv_pip(v, "numpy")
    wheel = build_wheel(tmp_path / "wheels", simple_package())
    try:
        run_venvfs("mount", str(mounted))
        assert daemon.mount_state(Venv(mounted)) == "mounted"
        out = subprocess.run([str(mounted / "bin/python"), "-c", CHECK], check=True, capture_output=True, text=True,
                             env=writes_bytecode())
        assert out.stdout.strip() == "45"
        assert list((mounted / ".venvfs/upper").rglob("*.pyc")) == []  # bytecode came from the store
        subprocess.run([str(mounted / "bin/numpy-config"), "--version"], check=True, capture_output=True)
        for v in (plain, mounted):
            pip(v, "install", "--no-index", str(wheel))
            pip(v, "uninstall", "-y", "numpy")
        assert tree(mounted) == tree(plain)
        stop_mount(mounted)
        run_venvfs("mount", str(mounted))
        assert tree(mounted) == tree(plain)
    finally:
        stop_mount(mounted)
