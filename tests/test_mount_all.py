"""``venvfs mount --all`` / ``umount --all`` (what the login unit runs) and ``venvfs list``."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from venvfs.mount import daemon
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

from conftest import uv_pip
from wheelbuilder import build_wheel, simple_package

Run = Callable[..., subprocess.CompletedProcess[str]]


def test_mount_all_and_umount_all(require_fuse: None, store: Store, make_venv: Callable[..., Path],
                                  run_venvfs: Run, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "wheels", simple_package())
    venvs = []
    for name in ("one", "two", "gone"):
        path = make_venv(name, tool="uv")
        uv_pip(path, str(wheel))
        run_venvfs("mount", str(path), "--no-hooks")
        venvs.append(Venv.open(path))
    try:
        run_venvfs("umount", str(venvs[2].root))
        shutil.rmtree(venvs[2].root)  # registered, then deleted: --all must step over it
        listed = {m["venv"] for m in json.loads(run_venvfs("list", "--json").stdout)}
        assert {str(v.root) for v in venvs[:2]} <= listed

        run_venvfs("umount", "--all")
        assert all(daemon.mount_state(v) == "unmounted" for v in venvs[:2])

        run_venvfs("mount", "--all")
        for v in venvs[:2]:
            assert daemon.mount_state(v) == "mounted"
            assert (v.site_packages / "demo" / "__init__.py").exists()
    finally:
        run_venvfs("umount", "--all", check=False)
