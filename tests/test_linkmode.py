"""The link-mode state machine on real filesystems: ext4 (hardlinks, no reflinks), tmpfs (another
device), and a loop-mounted XFS image (reflinks), plus path-safety helpers it relies on."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import missing_tool
from venvfs.fsutil import UnsafePath, safe_relpath, symlink_stays_inside
from venvfs.store.store import SOURCE_EPOCH
from venvfs.venv.linkmode import Linker, LinkMode, LinkModeUnavailable


def _object(directory: Path, data: bytes = b"content\n" * 100, name: str = "obj") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    os.chmod(path, 0o444)
    os.utime(path, (SOURCE_EPOCH, SOURCE_EPOCH))
    return path


def _same_inode(a: Path, b: Path) -> bool:
    return (a.stat().st_ino, a.stat().st_dev) == (b.stat().st_ino, b.stat().st_dev)


@pytest.fixture
def other_device(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")  # noqa: S108 - a tmpfs: another device than tmp_path
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        missing_tool("no tmpfs at /dev/shm on another device than the test directory")
    base = shm.resolve() / f"venvfs-linkmode-{os.getpid()}-{os.urandom(4).hex()}"
    base.mkdir()
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_auto_on_ext4_probes_once_and_hardlinks(tmp_path: Path) -> None:
    objs = [_object(tmp_path / "store", f"{i}\n".encode(), f"o{i}") for i in range(5)]
    (tmp_path / "venv").mkdir()
    linker = Linker()
    modes = [linker.place(o, tmp_path / "venv" / o.name, mode_bits=0o644) for o in objs]
    assert modes == [LinkMode.HARDLINK] * 5
    assert linker.used == LinkMode.HARDLINK and linker.counts == {LinkMode.HARDLINK: 5}
    assert linker.fallback_reason is not None and linker.fallback_reason.startswith("reflink unavailable")
    assert linker.fallback_reason.endswith("using hardlink")
    assert all(_same_inode(o, tmp_path / "venv" / o.name) for o in objs)
    assert "5 by hardlink" in linker.summary()
    assert sorted(p.name for p in (tmp_path / "venv").iterdir()) == [o.name for o in objs]  # no temporaries


def test_copy_is_writable_with_source_epoch_and_replaces_atomically(tmp_path: Path) -> None:
    obj = _object(tmp_path / "store")
    dst = tmp_path / "venv" / "file.py"
    dst.parent.mkdir()
    dst.write_bytes(b"old content")
    inode_before = dst.stat().st_ino
    linker = Linker(LinkMode.COPY)
    assert linker.place(obj, dst, mode_bits=0o644) == LinkMode.COPY
    st = dst.stat()
    assert dst.read_bytes() == obj.read_bytes() and st.st_ino != inode_before and not _same_inode(dst, obj)
    assert stat.S_IMODE(st.st_mode) == 0o644 and int(st.st_mtime) == SOURCE_EPOCH
    assert linker.fallback_reason is None


def test_no_hardlink_allowed_means_copy(tmp_path: Path) -> None:
    obj = _object(tmp_path / "store")
    (tmp_path / "venv").mkdir()
    linker = Linker(allow_hardlink=False)
    assert linker.place(obj, tmp_path / "venv" / "f") == LinkMode.COPY
    with pytest.raises(LinkModeUnavailable):
        Linker(LinkMode.HARDLINK, allow_hardlink=False).place(obj, tmp_path / "venv" / "g")


def test_forced_reflink_on_ext4_fails_and_leaves_destination(tmp_path: Path) -> None:
    obj = _object(tmp_path / "store")
    dst = tmp_path / "venv" / "f"
    dst.parent.mkdir()
    dst.write_bytes(b"keep me")
    with pytest.raises(LinkModeUnavailable, match="reflink") as exc:
        Linker(LinkMode.REFLINK).place(obj, dst)
    assert "\n" not in str(exc.value)
    assert dst.read_bytes() == b"keep me"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["f"]


def test_across_devices_auto_copies_and_says_why(tmp_path: Path, other_device: Path) -> None:
    obj = _object(other_device / "store")
    (tmp_path / "venv").mkdir()
    linker = Linker()
    assert linker.place(obj, tmp_path / "venv" / "f") == LinkMode.COPY
    reason = linker.fallback_reason or ""
    assert "reflink unavailable" in reason and "hardlink unavailable" in reason and reason.endswith("using copy")
    with pytest.raises(LinkModeUnavailable, match="hardlink"):
        Linker(LinkMode.HARDLINK).place(obj, tmp_path / "venv" / "g")


def test_reflink_on_xfs(xfs_mount: Path) -> None:
    base = xfs_mount / f"linkmode-{os.urandom(4).hex()}"
    try:
        obj = _object(base / "store", os.urandom(1 << 20))
        (base / "venv").mkdir()
        linker = Linker()
        assert linker.place(obj, base / "venv" / "f") == LinkMode.REFLINK
        assert linker.fallback_reason is None
        dst = base / "venv" / "f"
        assert dst.read_bytes() == obj.read_bytes() and not _same_inode(dst, obj)
        assert Linker(LinkMode.REFLINK).place(obj, base / "venv" / "g") == LinkMode.REFLINK
        # Shared extents: a 1 MiB clone barely changes the filesystem's free space.
        free = os.statvfs(base).f_bfree * os.statvfs(base).f_frsize
        for i in range(20):
            Linker(LinkMode.REFLINK).place(obj, base / "venv" / f"clone{i}")
        used = free - os.statvfs(base).f_bfree * os.statvfs(base).f_frsize
        assert used < 2 << 20, f"20 reflinks of 1 MiB used {used} bytes"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("path", ["", "/abs", "../x", "a/../../x", "a/..", "C:/x", "c:x", "a\\b", "a\x00b", ".", "./"])
def test_safe_relpath_rejects(path: str) -> None:
    with pytest.raises(UnsafePath):
        safe_relpath(path)


def test_safe_relpath_normalizes() -> None:
    assert safe_relpath("a/./b//c") == "a/b/c"


@pytest.mark.parametrize(("link", "target", "inside"), [
    ("pkg/a", "b", True),
    ("pkg/a", "../other/b", True),
    ("pkg/sub/a", "../../top", True),
    ("pkg/a", "../../x", False),
    ("pkg/a", "/etc/passwd", False),
    ("pkg/a", "sub/../..", False),  # '..' after a component resolves physically: refused
    ("pkg/a", "", False),
    ("a", "..", False),
])
def test_symlink_stays_inside(link: str, target: str, inside: bool) -> None:
    assert symlink_stays_inside(link, target) is inside


_KILLED_MID_PLACE = """
import os, sys
from pathlib import Path
from venvfs.venv import linkmode
def die(*args, **kwargs):
    os._exit(9)  # as SIGKILL would: between linking the temporary and renaming it over the file
linkmode.os.replace = die
linkmode.Linker(linkmode.LinkMode.HARDLINK).place(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def test_rerun_after_a_kill_mid_place_leaves_no_temporary(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    obj = _object(tmp_path / "store")
    dst = tmp_path / "venv" / "mod.py"
    dst.parent.mkdir()
    dst.write_bytes(b"the venv's file")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_PLACE, str(obj), str(dst)], env=env)
    assert proc.returncode == 9
    assert dst.read_bytes() == b"the venv's file"  # the kill left the old file whole
    Linker(LinkMode.HARDLINK).place(obj, dst)  # the rerun
    assert _same_inode(obj, dst)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["mod.py"], "a temporary of the killed run is left"


@pytest.mark.parametrize("requested", [LinkMode.AUTO, LinkMode.HARDLINK])
def test_hardlink_limit_of_one_object_copies_that_file_only(tmp_path: Path, requested: LinkMode) -> None:
    """An empty __init__.py object is linked from every venv: at 65000 links (ext4) that object alone is
    copied, the run goes on hardlinking everything else."""
    crowded = _object(tmp_path / "store", b"", "empty")
    other = _object(tmp_path / "store", b"x = 1\n", "other")
    links = tmp_path / "links"
    links.mkdir()
    try:
        for i in range(70000):
            os.link(crowded, links / str(i))
    except OSError as e:
        import errno

        if e.errno != errno.EMLINK:
            raise
    else:
        pytest.skip("no hardlink limit below 70000 on this filesystem")
    venv = tmp_path / "venv"
    venv.mkdir()
    linker = Linker(requested)
    assert linker.place(crowded, venv / "__init__.py") == LinkMode.COPY
    assert linker.place(other, venv / "mod.py") == LinkMode.HARDLINK
    assert _same_inode(other, venv / "mod.py") and not _same_inode(crowded, venv / "__init__.py")
    assert "cannot take another hardlink" in linker.summary()
    shutil.rmtree(links)
