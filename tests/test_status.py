"""``venvfs status`` on a mounted venv whose daemon was killed repairs the mount, as ``mount`` does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from venvfs.mount import daemon
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

from conftest import uv_pip
from wheelbuilder import build_wheel, simple_package

Run = Callable[..., subprocess.CompletedProcess[str]]


def test_status_recovers_a_killed_daemon(require_fuse: None, store: Store, make_venv: Callable[..., Path],
                                         run_venvfs: Run, tmp_path: Path) -> None:
    path = make_venv("v", tool="uv")
    uv_pip(path, str(build_wheel(tmp_path / "wheels", simple_package())))
    run_venvfs("mount", str(path), "--no-hooks")
    venv = Venv.open(path)
    try:
        (venv.site_packages / "mine.txt").write_text("written before the kill")
        pid = daemon.daemon_pid(venv)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while daemon.mount_state(venv) != "dead" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.mount_state(venv) == "dead"

        proc = run_venvfs("status", str(path), "--json")
        assert "daemon had died" in proc.stderr
        report = json.loads(proc.stdout)
        assert report["mount"] == "mounted"
        assert daemon.mount_state(venv) == "mounted"
        assert (venv.site_packages / "mine.txt").read_text() == "written before the kill"
        assert (venv.site_packages / "demo" / "__init__.py").exists()
    finally:
        run_venvfs("umount", str(path), check=False)


def test_the_direct_loop_serves_reads_and_copy_up(require_fuse: None, store: Store,
                                                   make_venv: Callable[..., Path], run_venvfs: Run,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """VENVFS_FUSE_LOOP=direct (the opt-in loop that halves the daemon's CPU) behaves like trio's."""
    path = make_venv("v", tool="uv")
    uv_pip(path, str(build_wheel(tmp_path / "wheels", simple_package())))
    monkeypatch.setenv(daemon.LOOP_ENV, "direct")
    run_venvfs("mount", str(path), "--no-hooks")
    venv = Venv.open(path)
    try:
        pid = daemon.daemon_pid(venv)
        assert pid is not None
        assert b"VENVFS_FUSE_LOOP=direct" in Path(f"/proc/{pid}/environ").read_bytes()
        init = venv.site_packages / "demo" / "__init__.py"
        assert "VERSION" in init.read_text()
        with open(init, "a") as f:
            f.write("EDITED = True\n")
        assert init.read_text().endswith("EDITED = True\n")
        assert (venv.upper_dir / "demo" / "__init__.py").exists()
        out = subprocess.run([path / "bin" / "python", "-c", "import demo; print(demo.EDITED)"],
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "True"
    finally:
        run_venvfs("umount", str(path), check=False)
