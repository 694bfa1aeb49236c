"""``venvfs commit``: what pip installed into a mount moves into the store; the venv shows the same files."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import stop_mount, uv
from tests.test_pip_in_mount import _pip, tree
from tests.wheelbuilder import build_wheel, simple_package
from venvfs.mount import daemon
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

pytestmark = pytest.mark.fuse

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(autouse=True)
def synchronous_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of ``venvfs commit`` itself: the daemon must not ingest first (test_ingest.py)."""
    monkeypatch.setenv("VENVFS_AUTO_INGEST", "0")


@pytest.fixture
def venv(require_fuse: None, store: Store, make_venv: Callable[..., Path], run_venvfs: Run,
         tmp_path: Path) -> Iterator[Path]:
    wheels = tmp_path / "wheels"
    build_wheel(wheels, simple_package("demo", "1.0"))
    build_wheel(wheels, simple_package("extra", "1.0"))
    path = make_venv("v")
    _pip(path, wheels, "install", "demo==1.0")
    try:
        run_venvfs("mount", str(path))
        yield path
    finally:
        stop_mount(path)


def test_commit_moves_new_dists_into_the_store(venv: Path, store: Store, run_venvfs: Run, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _pip(venv, wheels, "install", "extra==1.0")
    _pip(venv, wheels, "uninstall", "-y", "demo")
    upper = venv / ".venvfs/upper"
    assert (upper / "extra/sub/helpers.py").is_file()
    before = tree(venv)
    out = json.loads(run_venvfs("commit", "--json", str(venv)).stdout)
    assert [k.split("-")[0] for k in out["added"]] == ["extra"]
    assert [k.split("-")[0] for k in out["removed"]] == ["demo"]
    state = Venv.open(venv).read_state()
    assert any(k.startswith("extra-") for k in state.selection)
    assert not any(k.startswith("demo-") for k in state.selection)
    assert store.has_dist(out["added"][0])
    # Same files, now served by the store; their copies left the upper layer.
    assert tree(venv) == before
    assert not (upper / "extra/sub/helpers.py").exists()
    assert not (upper / "extra/__init__.py").exists()
    result = subprocess.run([str(venv / "bin/python"), "-c", "import extra.sub.helpers as h; print(h.double(2))"],
                            check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "4"
    # Another venv can now select it from the store.
    assert "nothing to commit" in run_venvfs("commit", str(venv)).stdout


def test_commit_of_an_unmounted_venv_mounts_it_for_the_duration(venv: Path, store: Store, run_venvfs: Run,
                                                                tmp_path: Path) -> None:
    _pip(venv, tmp_path / "wheels", "install", "extra==1.0")
    run_venvfs("umount", str(venv))
    out = json.loads(run_venvfs("commit", "--json", str(venv)).stdout)
    assert [k.split("-")[0] for k in out["added"]] == ["extra"]
    assert daemon.mount_state(Venv.open(venv)) == "unmounted"  # left as it was found
    assert not (venv / ".venvfs/upper/extra/__init__.py").exists()
    run_venvfs("mount", str(venv))
    result = subprocess.run([str(venv / "bin/python"), "-c", "import extra.sub.helpers as h; print(h.double(2))"],
                            check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "4"


def test_commit_of_a_materialized_venv_points_to_adopt(venv: Path, run_venvfs: Run) -> None:
    run_venvfs("umount", "--materialize", str(venv))
    proc = run_venvfs("commit", str(venv), check=False)
    assert proc.returncode != 0 and "venvfs adopt" in proc.stderr


def test_commit_with_nothing_pending_reads_no_record(require_fuse: None, store: Store, make_venv: Callable[..., Path],
                                                     run_venvfs: Run, tmp_path: Path) -> None:
    """The daily path's settling step: builds selected from the store while mounted (``venvfs add``,
    ``venvfs uv``) leave nothing in the upper layer, so a commit has nothing to look at. A record is
    read only for a name the upper layer holds a dist-info or a whiteout of: here the damaged record
    shows that none is read, and an uninstall (a whiteout) is still seen."""
    wheels = tmp_path / "wheels"
    build_wheel(wheels, simple_package("demo", "1.0"))
    build_wheel(wheels, simple_package("extra", "1.0"))
    run_venvfs("store", "add", str(wheels))
    path = make_venv("v", tool="uv")
    try:
        run_venvfs("mount", str(path))
        run_venvfs("add", str(path), "demo", "extra")
        state = Venv.open(path).read_state()
        (demo,) = [k for k in state.selection if k.startswith("demo-")]
        record = store.dist_path(demo)
        saved = record.read_bytes()
        record.write_text("{damaged")
        try:
            assert run_venvfs("commit", str(path)).stdout.strip() == "nothing to commit"
        finally:
            record.write_bytes(saved)
        subprocess.run([uv(), "pip", "uninstall", "-q", "--python", str(path / "bin/python"), "extra"], check=True)
        out = json.loads(run_venvfs("commit", "--json", str(path)).stdout)
        assert [k.split("-")[0] for k in out["removed"]] == ["extra"] and out["added"] == []
    finally:
        stop_mount(path)
