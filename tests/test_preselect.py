"""``venvfs uv``: what uv is about to install and the store holds is selected first, so uv writes
nothing through the mount (issue 15, outcome 2); the venv still ends as a plain venv given the same
command ends. Real uv (offline, tiny wheels), real mounts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import create_venv, stop_mount, uv
from tests.sitetree import assert_same_site_packages
from tests.test_pip_commit import _upper_copies
from tests.test_select_clean import _versions, wheelhouse
from venvfs.store.store import Store
from venvfs.venv.preselect import Plan
from venvfs.venv.venv import Venv

pytestmark = pytest.mark.fuse


def test_a_dry_runs_plan_is_read_as_uv_prints_it() -> None:
    plan = Plan.parse("Using Python 3.11.7 environment at: v\nResolved 3 packages in 5ms\nWould install 2 packages\n"
                      " - Tools==1.0\n + tools==2.0\n + Python_Dateutil==4.0.0\n + proj @ file:///tmp/proj\n")
    assert plan.install == (("tools", "2.0"), ("python-dateutil", "4.0.0"))
    assert plan.remove == {"tools"} and plan.environment == "v"
    assert Plan.parse("Would create project environment at: .venv\n").environment == ".venv"


def _venvfs_uv(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(uv()).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "venvfs", "uv", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_uv_pip_install_through_venvfs_serves_stored_builds_and_ends_as_plain(
        require_fuse: None, store: Store, run_venvfs: object, tmp_path: Path) -> None:
    wheels = wheelhouse(tmp_path / "wheels")
    run_venvfs("store", "add", str(wheels))  # type: ignore[operator]
    ours = create_venv((tmp_path / "ours").mkdir() or tmp_path / "ours" / "v", "uv")
    plain = create_venv((tmp_path / "plain").mkdir() or tmp_path / "plain" / "v", "uv")
    run_venvfs("mount", str(ours))  # type: ignore[operator]
    try:
        # What venvfs placed says so in its installer files (INSTALLER, no uv_cache.json): venvfs's record.
        placed = ["needs-1.0.dist-info", "pipish-1.0.dist-info", "tools-2.0.dist-info"]
        for args, served in ((["install", "needs", "pipish"], 3),  # needs pulls tools 2.0
                             (["install", "tools==1.0"], 0)):  # a downgrade: uv's way, then ingested
            flags = ["--no-index", "--find-links", str(wheels)]
            out = _venvfs_uv(tmp_path, "pip", *args, "-q", "--python", str(ours / "bin/python"), *flags)
            subprocess.run([uv(), "pip", *args, "--python", str(plain / "bin/python"), "-q", *flags], check=True)
            assert (f"{served} served from the store" in out.stderr) == bool(served), out.stderr
            if served:
                # Nothing went through the mount: no copy to drop, nothing pending.
                assert not _upper_copies(ours), _upper_copies(ours)
            run_venvfs("commit", str(ours))  # type: ignore[operator]
            placed = [p for p in placed if (Venv(ours).site_packages / p).exists()]
            assert_same_site_packages(Venv(ours).site_packages, Venv(plain).site_packages, when=" ".join(args),
                                      placed_by_venvfs=placed)
            assert _versions(ours) == _versions(plain)
            assert not _upper_copies(ours)
    finally:
        stop_mount(ours)


def _project_versions(proj: Path) -> dict[str, str]:
    # The checkout this runs from is on a `python -c`'s path (its cwd): venvfs itself is no package here.
    return {k: v for k, v in _versions(proj / ".venv").items() if k != "venvfs"}


def test_uv_add_and_sync_through_venvfs_in_a_project(require_fuse: None, store: Store, run_venvfs: object,
                                                     tmp_path: Path) -> None:
    wheels = wheelhouse(tmp_path / "wheels")
    run_venvfs("store", "add", str(wheels))  # type: ignore[operator]
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text('[project]\nname = "proj"\nversion = "0.1"\nrequires-python = ">=3.10"\n'
                                         f'dependencies = []\n\n[tool.uv]\npackage = false\nno-index = true\n'
                                         f'find-links = ["{wheels}"]\n')
    subprocess.run([uv(), "venv", "-q", str(proj / ".venv")], check=True, cwd=proj)
    run_venvfs("mount", str(proj / ".venv"))  # type: ignore[operator]
    try:
        out = _venvfs_uv(proj, "add", "-q", "needs")
        assert "2 served from the store" in out.stderr, out.stderr  # needs and tools
        assert not _upper_copies(proj / ".venv")
        assert _project_versions(proj) == {"needs": "1.0", "tools": "2.0"}
        subprocess.run([uv(), "remove", "needs"], cwd=proj, check=True, capture_output=True)
        out = _venvfs_uv(proj, "sync")
        assert "served from the store" not in out.stderr, out.stderr  # a sync that only removes
        assert _project_versions(proj) == {}
    finally:
        stop_mount(proj / ".venv")
