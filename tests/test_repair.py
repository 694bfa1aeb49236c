"""Issue 13, point 4: a damaged store object can be repaired, by re-adding its wheel or from a good
copy a venv holds, and running mounts serve the repaired bytes without a remount."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import create_venv, run_cli, stop_mount, uv_pip
from tests.wheelbuilder import WheelSpec, build_wheel, simple_package
from venvfs.store.chunks import CHUNK, chunks_path
from venvfs.store.repairlog import repaired_log
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

HELPERS = b"def double(x):\n    return 2 * x\n"  # demo/sub/helpers.py of simple_package
DIGEST = hashlib.sha256(HELPERS).hexdigest()


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    return build_wheel(tmp_path / "wheels", simple_package())


def damage(obj: Path) -> None:
    """What a user can do to a read-only file they own (root needs no chmod): flip one byte in place."""
    mode = obj.stat().st_mode
    os.chmod(obj, mode | 0o200)
    with open(obj, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0x20]))
    os.chmod(obj, mode)


def test_store_add_of_the_same_wheel_repairs_a_damaged_object(tmp_path: Path, wheel: Path) -> None:
    store_root = tmp_path / "store"
    run_cli(store_root, "store", "add", str(wheel))
    store = Store.open(store_root, create=False)
    obj = store.object_path(DIGEST)
    damage(obj)
    damaged = obj.stat()
    # A venv's hardlink of the damaged inode (how it got damaged, often): the repair must not write it.
    witness = tmp_path / "hardlink-of-the-damaged-object"
    os.link(obj, witness)
    assert run_cli(store_root, "store", "verify", check=False).returncode == 5

    proc = run_cli(store_root, "store", "add", str(wheel))
    assert "already stored" in proc.stdout and "repaired 1 damaged object" in proc.stdout, proc.stdout
    assert obj.read_bytes() == HELPERS
    fresh = obj.stat()
    assert fresh.st_ino != damaged.st_ino, "repaired in place: the damaged inode is hardlinked elsewhere"
    assert fresh.st_mode & 0o777 == 0o444
    assert witness.read_bytes() != HELPERS and witness.stat().st_ino == damaged.st_ino
    assert run_cli(store_root, "store", "verify").returncode == 0
    assert repaired_log(store.root).read_text().split()[0] == DIGEST
    # Nothing damaged: the next add repairs nothing.
    assert "repaired" not in run_cli(store_root, "store", "add", str(wheel)).stdout


def test_verify_repair_takes_a_good_copy_from_a_venv(tmp_path: Path, wheel: Path) -> None:
    store_root = tmp_path / "store"
    venv = create_venv(tmp_path / "venv", "uv")
    run_cli(store_root, "adopt", str(venv), "--no-hooks", "--no-compile")
    run_cli(store_root, "add", str(venv), str(wheel), "--link-mode", "copy")
    # A second venv of hardlinks, through which the object gets damaged (the way in).
    linked = create_venv(tmp_path / "linked", "uv")
    run_cli(store_root, "adopt", str(linked), "--no-hooks", "--no-compile")
    run_cli(store_root, "add", str(linked), str(wheel), "--link-mode", "hardlink")
    obj = Store.open(store_root, create=False).object_path(DIGEST)
    through = Venv(linked).site_packages / "demo" / "sub" / "helpers.py"
    assert through.stat().st_ino == obj.stat().st_ino
    damage(through)
    proc = run_cli(store_root, "store", "verify", check=False)
    assert proc.returncode == 5 and "--repair" in proc.stdout
    proc = run_cli(store_root, "store", "verify", "--repair")
    copy = Venv(venv).site_packages / "demo" / "sub" / "helpers.py"
    assert f"repaired from {copy}" in proc.stdout and "ok after repair" in proc.stdout, proc.stdout
    assert f"{linked} hardlinks the damaged copy" in proc.stdout, proc.stdout
    assert obj.read_bytes() == HELPERS
    assert run_cli(store_root, "store", "verify").returncode == 0
    # The hardlinked venv's name kept the damaged inode (never written by the repair) until relinked.
    assert through.read_bytes() != HELPERS
    run_cli(store_root, "materialize", str(linked), "--link-mode", "hardlink")
    assert through.read_bytes() == HELPERS and through.stat().st_ino == obj.stat().st_ino


def test_verify_repair_without_a_good_copy_names_the_wheel_to_add(tmp_path: Path, wheel: Path) -> None:
    store_root = tmp_path / "store"
    venv = create_venv(tmp_path / "venv", "uv")
    run_cli(store_root, "adopt", str(venv), "--no-hooks", "--no-compile")
    # Hardlinks: the venv's file is the damaged inode itself, which is no source.
    run_cli(store_root, "add", str(venv), str(wheel), "--link-mode", "hardlink")
    obj = Store.open(store_root, create=False).object_path(DIGEST)
    damage(obj)
    proc = run_cli(store_root, "store", "verify", "--repair", check=False)
    assert proc.returncode == 5
    assert "cannot repair" in proc.stdout and "re-add demo-1.0" in proc.stdout, proc.stdout
    report = json.loads(run_cli(store_root, "store", "verify", "--repair", "--json", check=False).stdout)
    assert list(report["unrepairable"]) == [DIGEST] and not report["ok"]
    assert obj.read_bytes() != HELPERS
    run_cli(store_root, "store", "add", str(wheel))
    assert run_cli(store_root, "store", "verify").returncode == 0


# -- running mounts ---------------------------------------------------------------------------------------


@pytest.fixture
def mounted(fuse_mode: str, store: Store, make_venv: Callable[..., Path], wheel: Path, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch,
            run_venvfs: Callable[..., subprocess.CompletedProcess[str]]) -> Iterator[Venv]:
    # uv hardlinks from its cache: a cache of the test's own, so that a venvfs that took uv's inodes
    # (issue 13, point 3) damages no cache but this one.
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    path = make_venv("v", tool="uv")
    uv_pip(path, str(wheel))
    try:
        run_venvfs("mount", str(path))
        yield Venv.open(path)
    finally:
        stop_mount(path)


def _read_uncached(path: Path) -> bytes:
    """The file's bytes as the mount serves them now: its pages in the kernel's cache are dropped
    first (this one file's, as memory pressure would), so the read reaches the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, 1 << 16, 0)
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["store add", "verify --repair"])
def test_a_mount_that_read_damaged_bytes_serves_the_repaired_object(
        mounted: Venv, store: Store, wheel: Path, how: str, tmp_path: Path,
        run_venvfs: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    served = mounted.site_packages / "demo" / "sub" / "helpers.py"
    assert served.read_bytes() == HELPERS  # checked against its digest on this first read
    if how == "verify --repair":
        # A good copy for verify --repair to find: a second venv with real copies of its own.
        other = create_venv(tmp_path / "other", "uv")
        run_venvfs("adopt", str(other), "--no-hooks", "--no-compile")
        run_venvfs("add", str(other), "demo", "--link-mode", "copy")
    obj = store.object_path(DIGEST)
    damage(obj)
    # Damage after the mount's check: what it reads now is the damaged bytes (the finding),
    # and the kernel keeps them in its page cache.
    assert _read_uncached(served) != HELPERS
    assert served.read_bytes() != HELPERS
    if how == "store add":
        assert "repaired 1 damaged object" in run_venvfs("store", "add", str(wheel)).stdout
    else:
        assert "repaired from" in run_venvfs("store", "verify", "--repair").stdout
    assert obj.read_bytes() == HELPERS
    # No remount, and no eviction by the test: the repair itself dropped what the kernel cached.
    assert served.read_bytes() == HELPERS
    assert _read_uncached(served) == HELPERS
    out = subprocess.run([str(mounted.python), "-c", "import demo.sub.helpers as h; print(h.double(21))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "42"


def test_a_mount_that_met_a_damaged_object_serves_it_once_repaired(
        mounted: Venv, store: Store, wheel: Path,
        run_venvfs: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    # Damaged before the mount's first read: EIO, and the daemon may keep an fd on the damaged inode.
    served = mounted.site_packages / "demo" / "sub" / "helpers.py"
    damage(store.object_path(DIGEST))
    with pytest.raises(OSError):
        served.read_bytes()
    run_venvfs("store", "add", str(wheel))
    assert served.read_bytes() == HELPERS


@pytest.mark.parametrize("what", ["object", "chunk list"])
def test_store_add_repairs_a_large_object_and_its_chunk_list(tmp_path: Path, what: str) -> None:
    big = os.urandom(3 * CHUNK + 17)
    wheel = build_wheel(tmp_path / "wheels", WheelSpec(name="bigpkg", version="1.0", files={"bigpkg/blob.bin": big}))
    store_root = tmp_path / "store"
    run_cli(store_root, "store", "add", str(wheel))
    store = Store.open(store_root, create=False)
    digest = hashlib.sha256(big).hexdigest()
    damage(store.object_path(digest) if what == "object" else chunks_path(store_root, digest))
    assert run_cli(store_root, "store", "verify", check=False).returncode == 5
    assert "repaired 1 damaged object" in run_cli(store_root, "store", "add", str(wheel)).stdout
    assert store.object_path(digest).read_bytes() == big
    assert run_cli(store_root, "store", "verify").returncode == 0
