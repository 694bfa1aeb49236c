"""pip (and uv) in a mounted venv, each command followed by ``venvfs commit`` (issue 15, outcomes 5
and 7): site-packages ends as in a plain venv given the same commands, the store holds one build per
wheel, and the upper layer keeps no copy of what the store now serves."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import create_venv, stop_mount, uv
from tests.sitetree import INSTALLER_FILES, assert_same_site_packages
from tests.test_select_clean import _versions, wheelhouse
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

pytestmark = pytest.mark.fuse

Run = Callable[..., subprocess.CompletedProcess[str]]


def _run(tool: str, venv: Path, wheels: Path, *args: str) -> None:
    if tool == "pip":
        cmd = [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "--disable-pip-version-check",
               "--no-input", "-q", *args]
    else:
        args = tuple("--reinstall" if a == "--force-reinstall" else a for a in args if a != "-y")
        cmd = [uv(), "pip", *args, "--python", str(venv / "bin/python"), "-q"]
    if args[0] == "install":
        cmd += ["--no-index", "--find-links", str(wheels)]
    subprocess.run(cmd, check=True)


def _builds_per_wheel(store: Store) -> dict[str, int]:
    return collections.Counter(key.rsplit("-", 1)[0] for key in store.dist_keys())


def _upper_copies(venv: Path) -> list[str]:
    """Files in the upper layer other than bytecode, installer metadata and the venv's own files."""
    upper = venv / ".venvfs/upper"
    found = []
    for dirpath, dirs, files in os.walk(upper):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel_dir = os.path.relpath(dirpath, upper)
        for name in files:
            if ((rel_dir.endswith(".dist-info") and name in INSTALLER_FILES)
                    or (rel_dir == "." and name.startswith("_virtualenv"))):
                continue
            found.append(os.path.join(rel_dir, name))
    return sorted(found)


STEPS = [
    ("install -r", ["install", "-r", "{reqs}"]),
    ("install -U", ["install", "-U", "tools"]),
    ("install --force-reinstall", ["install", "--force-reinstall", "tools==2.0"]),
    ("uninstall", ["uninstall", "-y", "pipish"]),
    ("install (a downgrade)", ["install", "tools==1.0"]),
]


@pytest.mark.parametrize("tool", ["pip", "uv"])
def test_installer_commands_then_commit_end_as_in_a_plain_venv(require_fuse: None, store: Store, run_venvfs: Run,
                                                               tmp_path: Path, tool: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Of `venvfs commit` itself, as test_commit.py; test_ingest.py covers the automatic path.
    monkeypatch.setenv("VENVFS_AUTO_INGEST", "0")
    _steps_end_as_in_a_plain_venv(store, run_venvfs, tmp_path, tool, "commit")


@pytest.mark.parametrize("tool", ["pip", "uv"])
def test_installer_commands_then_adopt_end_as_in_a_plain_venv(store: Store, run_venvfs: Run, tmp_path: Path,
                                                              tool: str) -> None:
    """The materialized layout's way: pip or uv change real files, ``venvfs adopt`` stores them."""
    _steps_end_as_in_a_plain_venv(store, run_venvfs, tmp_path, tool, "adopt")


def _steps_end_as_in_a_plain_venv(store: Store, run_venvfs: Run, tmp_path: Path, tool: str, ingest: str) -> None:
    wheels = wheelhouse(tmp_path / "wheels")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("tools==1.0\npipish==1.0\n")
    ours = create_venv((tmp_path / "ours").mkdir() or tmp_path / "ours" / "v", "uv")
    plain = create_venv((tmp_path / "plain").mkdir() or tmp_path / "plain" / "v", "uv")
    # The store already holds these wheels (another venv's `venvfs add`): pip's installs are the same builds.
    run_venvfs("store", "add", str(wheels))
    run_venvfs("mount" if ingest == "commit" else "adopt", str(ours))
    try:
        for step, args in STEPS:
            when = f"{tool} {step}"
            args = [a.format(reqs=reqs) for a in args]
            for v in (ours, plain):
                _run(tool, v, wheels, *args)
            run_venvfs(ingest, str(ours))
            assert_same_site_packages(Venv(ours).site_packages, Venv(plain).site_packages, when=f"after {when}")
            assert _versions(ours) == _versions(plain), when
            assert all(n == 1 for n in _builds_per_wheel(store).values()), (when, store.dist_keys())
            # Finding 1 included: a package directory the installer deleted and made again (opaque).
            assert not _upper_copies(ours), f"after {when}: upper copies {_upper_copies(ours)}"
    finally:
        stop_mount(ours)
