"""One wheel is one build (issue 15, finding 4): the build key holds no installer's name, so the same
wheel installed by pip, by uv and stored from its file has one key; stores holding the two builds
the old key made keep working."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import create_venv, stop_mount, uv
from tests.wheelbuilder import build_wheel, simple_package
from venvfs.store.records import StoredFile
from venvfs.store.store import Store
from venvfs.store.wheel import ingest_wheel
from venvfs.venv.select import change_selection, resolve
from venvfs.venv.venv import Venv

Run = Callable[..., subprocess.CompletedProcess[str]]


def _demo_keys(store: Store) -> list[str]:
    return [k for k in store.dist_keys() if k.startswith("demo-")]


def _installer(venv: Path) -> bytes:
    return (Venv(venv).site_packages / "demo-1.0.dist-info/INSTALLER").read_bytes()


def test_one_wheel_installed_by_pip_and_by_uv_is_one_build(require_fuse: None, store: Store, run_venvfs: Run,
                                                           tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheel = build_wheel(wheels, simple_package("demo", "1.0"))
    by_pip = create_venv(tmp_path / "by-pip", "uv")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(by_pip / "bin/python"), "install", "-q",
                    "--disable-pip-version-check", "--no-index", "--find-links", str(wheels), "demo==1.0"], check=True)
    run_venvfs("adopt", str(by_pip))
    by_uv = create_venv(tmp_path / "by-uv", "uv")
    run_venvfs("mount", str(by_uv))
    try:
        subprocess.run([uv(), "pip", "install", "-q", "--python", str(by_uv / "bin/python"), "--no-index",
                        "--find-links", str(wheels), "demo==1.0"], check=True)
        run_venvfs("commit", str(by_uv))
        assert _installer(by_uv) == b"uv"  # what uv wrote stays the venv's own
    finally:
        stop_mount(by_uv)
    (key,) = _demo_keys(store)
    assert key in Venv(by_pip).read_state().selection and key in Venv(by_uv).read_state().selection
    assert _installer(by_pip) == b"pip\n"
    run_venvfs("store", "add", str(wheel))
    assert _demo_keys(store) == [key], "the wheel's own file is the same build"
    # Placed by venvfs, its INSTALLER says so.
    third = create_venv(tmp_path / "third", "uv")
    run_venvfs("add", str(third), "demo")
    assert _installer(third) == b"venvfs\n"


@pytest.mark.parametrize("legacy_only", [False, True])
def test_a_store_holding_two_builds_of_one_wheel_from_before_keeps_working(store: Store, tmp_path: Path,
                                                                           legacy_only: bool) -> None:
    """Before, adopting one wheel from a pip venv and from a uv venv stored two records (INSTALLER
    "pip" and "uv", pip's REQUESTED). They still load under their keys, and a venv resolving the
    name gets one of them with no question (their content is one build), the installer-free one
    when the store has it, the venv's own choice first."""
    from venvfs.store.records import INSTALLER_DIGEST

    wheel = build_wheel(tmp_path / "wheels", simple_package("demo", "1.0"))
    record, _ = ingest_wheel(store, wheel)
    assert record.is_normalized
    legacy = []
    for installer in (b"pip\n", b"uv\n"):
        files = []
        for f in record.files:
            if f.path.endswith("/INSTALLER"):
                put = store.put_stream(io.BytesIO(installer))
                assert put.digest != INSTALLER_DIGEST
                files.append(dataclasses.replace(f, digest=put.digest, size=put.size))
            else:
                files.append(f)
        empty = store.put_stream(io.BytesIO(b""))
        files.append(StoredFile(f"{record.dist_info}/REQUESTED", "purelib", empty.digest, 0))
        old = dataclasses.replace(record, files=tuple(files), source=f"adopted:/venvs/{installer.decode().strip()}")
        store.add_dist(old)
        legacy.append(old)
    keys = {record.key, *(r.key for r in legacy)}
    assert len(keys) == 3 and sorted(_demo_keys(store)) == sorted(keys)
    for key in keys:
        assert store.get_dist(key).key == key
    if legacy_only:
        store.dist_path(record.key).unlink()
    interp = Venv(create_venv(tmp_path / "v", "uv")).probe_interpreter()
    chosen = resolve(store, interp, "demo")
    assert chosen.key == (min(r.key for r in legacy) if legacy_only else record.key)
    assert not any(r.is_normalized for r in legacy)
    # A venv that selected one of them keeps it.
    assert resolve(store, interp, "demo", selected=[legacy[1].key]).key == legacy[1].key
    # venvfs add places the build without an installer's metadata, storing it if the store has
    # only the old records: the venv says venvfs installed it, and has no pip REQUESTED.
    venv = Venv(tmp_path / "v")
    change_selection(venv, store, add=["demo"])
    assert venv.read_state().selection == [record.key] and store.has_dist(record.key)
    dist_info = venv.site_packages / record.dist_info
    assert (dist_info / "INSTALLER").read_bytes() == b"venvfs\n" and not (dist_info / "REQUESTED").exists()
    assert hashlib.sha256(b"venvfs\n").hexdigest() == INSTALLER_DIGEST


def test_a_compiled_wheel_installed_by_uv_is_the_build_its_file_makes(store: Store, run_venvfs: Run,
                                                                      compiled_wheel: Path, tmp_path: Path) -> None:
    """A platlib wheel from PyPI (markupsafe): adopted from uv's install it is stored as platlib, as
    ingest of its file does (Root-Is-Purelib: false), with one key for both."""
    venv = create_venv(tmp_path / "v", "uv")
    subprocess.run([uv(), "pip", "install", "-q", "--python", str(venv / "bin/python"), str(compiled_wheel)],
                   check=True)
    run_venvfs("adopt", str(venv))
    adopted = [k for k in store.dist_keys() if k.startswith("markupsafe-")]
    run_venvfs("store", "add", str(compiled_wheel))
    assert [k for k in store.dist_keys() if k.startswith("markupsafe-")] == adopted and len(adopted) == 1
    assert {f.scheme for f in store.get_dist(adopted[0]).site_files()} == {"platlib"}
