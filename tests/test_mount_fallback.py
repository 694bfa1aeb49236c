"""`venvfs mount` from a venvfs that cannot use FUSE, of a venv another venvfs has mounted: the live
mount is left alone (no take-in, no fallback to real files through it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import create_venv, stop_mount
from tests.test_pip_commit import _upper_copies
from tests.test_select_clean import wheelhouse
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

pytestmark = pytest.mark.fuse


def test_mount_from_a_venvfs_that_cannot_use_fuse_leaves_a_live_mount_alone(
        require_fuse: None, store: Store, run_venvfs: object, tmp_path: Path) -> None:
    """A venv mounted by one venvfs, then `venvfs mount` from one that cannot mount (no pyfuse3, a
    closed /dev/fuse; here VENVFS_DISABLE_FUSE): it fell back to real files through the live mount,
    and that mount's ingest then deselected everything. It says the venv is mounted."""
    wheels = wheelhouse(tmp_path / "wheels")
    run_venvfs("store", "add", str(wheels))  # type: ignore[operator]
    venv = create_venv((tmp_path / "v").mkdir() or tmp_path / "v" / "venv", "uv")
    run_venvfs("add", str(venv), "needs")  # type: ignore[operator]
    run_venvfs("mount", str(venv))  # type: ignore[operator]
    try:
        before = Venv(venv).read_state().selection
        env = {**os.environ, "VENVFS_DISABLE_FUSE": "1"}
        proc = subprocess.run([sys.executable, "-m", "venvfs", "mount", str(venv)], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "already mounted" in proc.stdout + proc.stderr
        assert Venv(venv).read_state().layout == "mounted" and Venv(venv).read_state().selection == before
        assert not _upper_copies(venv)
    finally:
        stop_mount(venv)
