"""Tier 1: the overlay's semantics, called directly (no FUSE, no venv)."""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, missing_tool
from venvfs.mount.overlay import ROOT_INO, Overlay, OverlayError, SetAttr
from venvfs.store.records import DistRecord, StoredFile
from venvfs.store.store import SOURCE_EPOCH, Store
from venvfs.store.verify import verify
from venvfs.venv.upper import OPAQUE, Upper
from venvfs.venv.view import OBJECT, PYC, LowerDir, LowerFile, View, build_view


def _record(store: Store, files: dict[str, bytes], name: str = "demo") -> DistRecord:
    stored = []
    for path, data in files.items():
        put = store.put_stream(io.BytesIO(data), durable=False)
        stored.append(StoredFile(path, "purelib", put.digest, put.size))
    record = DistRecord(name=name, version="1.0", dist_info=f"{name}-1.0.dist-info", tags=("py3-none-any",),
                        files=tuple(stored))
    store.add_dist(record)
    return record


FILES = {
    "pkg/__init__.py": b"X = 1\n",
    "pkg/mod.py": b"def f():\n    return 2\n",
    "pkg/sub/data.txt": b"data " * 50,
    "demo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
}


@pytest.fixture
def ov(store: Store, tmp_path: Path) -> Overlay:
    record = _record(store, FILES)
    view = build_view([record], cache_tag=None, store_root=store.root)
    upper = Upper(tmp_path / "upper", tmp_path / "work")
    return Overlay(view, upper, store)


def _ino(ov: Overlay, path: str) -> int:
    node = ov.resolve(path)
    assert node is not None, path
    return node.ino


def _read(ov: Overlay, path: str) -> bytes:
    fh, _ = ov.open(_ino(ov, path), os.O_RDONLY)
    try:
        return ov.read(fh, 0, 1 << 20)
    finally:
        ov.release(fh)


def _compiled_view(store: Store, pyc_bytes: bytes) -> tuple[View, Path]:
    """FILES as a view for cpython-311 whose store holds bytecode for pkg/mod.py alone; returns the
    view and that .pyc."""
    record = _record(store, FILES)
    digest = next(f.digest for f in record.files if f.path == "pkg/mod.py")
    assert digest is not None
    pyc = store.bytecode_path("cpython-311", digest)
    pyc.parent.mkdir(parents=True)
    pyc.write_bytes(pyc_bytes)
    return build_view([record], cache_tag="cpython-311", store_root=store.root), pyc


def test_view_merges_records_and_bytecode(store: Store) -> None:
    view, pyc = _compiled_view(store, b"pyc")
    entry = view.lookup("pkg/__pycache__/mod.cpython-311.pyc")
    assert isinstance(entry, LowerFile) and entry.kind == PYC and entry.digest == pyc.stem
    assert view.lookup("pkg/__pycache__/__init__.cpython-311.pyc") is None  # not compiled
    assert isinstance(view.lookup("pkg/sub"), LowerDir)
    leaf = view.lookup("pkg/mod.py")
    assert isinstance(leaf, LowerFile) and leaf.kind == OBJECT


def test_store_files_look_writable_with_the_epoch_mtime(ov: Overlay) -> None:
    attr = ov.getattr(_ino(ov, "pkg/mod.py"))
    assert attr.mode & 0o777 == 0o644 and attr.immutable
    assert attr.mtime_ns == SOURCE_EPOCH * 10**9
    assert attr.size == len(FILES["pkg/mod.py"])


def test_write_open_copies_up_atomically(ov: Overlay, tmp_path: Path) -> None:
    ino = _ino(ov, "pkg/mod.py")
    fh, keep = ov.open(ino, os.O_WRONLY)
    assert not keep
    ov.write(fh, 0, b"#")
    ov.release(fh)
    assert (tmp_path / "upper/pkg/mod.py").read_bytes() == b"#" + FILES["pkg/mod.py"][1:]
    assert _read(ov, "pkg/mod.py").startswith(b"#")
    assert ("inode", ino, "") in ov.invalidations
    assert os.listdir(tmp_path / "work") == []


def test_truncate_and_chmod_copy_up(ov: Overlay, tmp_path: Path) -> None:
    ov.setattr(_ino(ov, "pkg/__init__.py"), SetAttr(size=0))
    assert (tmp_path / "upper/pkg/__init__.py").read_bytes() == b""
    ov.setattr(_ino(ov, "pkg/mod.py"), SetAttr(mode=0o600))
    assert (tmp_path / "upper/pkg/mod.py").stat().st_mode & 0o777 == 0o600


def test_unlink_and_rmdir_leave_whiteouts(ov: Overlay, tmp_path: Path) -> None:
    pkg = _ino(ov, "pkg")
    ov.unlink(pkg, "mod.py")
    assert (tmp_path / "upper/pkg/.wh.mod.py").exists()
    assert ov.lookup(pkg, "mod.py") is None
    with pytest.raises(OverlayError) as e:
        ov.rmdir(pkg, "sub")
    assert e.value.errno == errno.ENOTEMPTY
    ov.unlink(_ino(ov, "pkg/sub"), "data.txt")
    ov.rmdir(pkg, "sub")
    assert (tmp_path / "upper/pkg/.wh.sub").exists()
    assert not (tmp_path / "upper/pkg/sub").exists()
    # Recreated: opaque, so the old contents never show through.
    node = ov.mkdir(pkg, "sub", 0o755)
    assert (tmp_path / "upper/pkg/sub" / OPAQUE).exists()
    assert ov.opendir(node.ino) and ov.load(node) == {}
    # The whiteout of the deleted directory goes once the opaque one stands: an upper directory next
    # to a whiteout of its own name is read one way by a fresh mount and another by a reload.
    assert not (tmp_path / "upper/pkg/.wh.sub").exists()


def test_an_upper_directory_outranks_a_whiteout_of_its_name_across_a_reload(store: Store, tmp_path: Path) -> None:
    """Venvs made before the fix above hold both: the upper directory (merged, not opaque) shows the
    lower one's files, as a fresh mount shows them, also after the selection changes (a reload)."""
    record = _record(store, FILES)
    (tmp_path / "upper/pkg").mkdir(parents=True)
    (tmp_path / "upper/.wh.pkg").touch()
    (tmp_path / "upper/pkg/own.txt").write_bytes(b"mine")
    upper = Upper(tmp_path / "upper", tmp_path / "work")
    ov = Overlay(build_view([record], cache_tag=None, store_root=store.root), upper, store)
    assert _read(ov, "pkg/mod.py") == FILES["pkg/mod.py"] and _read(ov, "pkg/own.txt") == b"mine"
    extra = _record(store, {"extra/__init__.py": b""}, name="extra")
    ov.replace_view(build_view([record, extra], cache_tag=None, store_root=store.root))
    assert _read(ov, "pkg/mod.py") == FILES["pkg/mod.py"] and _read(ov, "pkg/own.txt") == b"mine"


def test_rename_of_a_store_directory_works(ov: Overlay, tmp_path: Path) -> None:
    ov.rename(ROOT_INO, "pkg", ROOT_INO, "moved")
    assert ov.resolve("pkg") is None
    assert _read(ov, "moved/sub/data.txt") == FILES["pkg/sub/data.txt"]
    assert (tmp_path / "upper/.wh.pkg").exists()
    assert (tmp_path / "upper/moved" / OPAQUE).exists()


def test_merged_directory_lists_each_name_once(ov: Overlay) -> None:
    fh, _ = ov.open(_ino(ov, "pkg/mod.py"), os.O_RDWR)
    ov.release(fh)
    ov.create(_ino(ov, "pkg"), "new.py", 0o644, os.O_WRONLY)
    names = [name for _, name, _ in ov.readdir(ov.opendir(_ino(ov, "pkg")), 0)]
    assert sorted(names) == ["__init__.py", "mod.py", "new.py", "sub"]


def test_names_are_checked(ov: Overlay) -> None:
    for name, err in ((".wh.x", errno.EINVAL), ("a" * 256, errno.ENAMETOOLONG), ("a/b", errno.EINVAL),
                      ("..", errno.EINVAL)):
        with pytest.raises(OverlayError) as e:
            ov.create(ROOT_INO, name, 0o644, os.O_WRONLY)
        assert e.value.errno == err, name
    assert ov.lookup(ROOT_INO, ".wh.pkg") is None


@pytest.mark.allow_warnings
def test_missing_or_corrupt_object_is_eio(ov: Overlay, store: Store) -> None:
    record = store.get_dist(store.dist_keys()[0])
    for f in record.files:
        assert f.digest is not None
        obj = store.object_path(f.digest)
        if f.path == "pkg/mod.py":
            obj.unlink()
        elif f.path == "pkg/__init__.py":
            os.chmod(obj, 0o644)
            obj.write_bytes(b"Y = 1\n")  # same size, other bytes
    for path in ("pkg/mod.py", "pkg/__init__.py"):
        with pytest.raises(OverlayError) as e:
            ov.open(_ino(ov, path), os.O_RDONLY)
        assert e.value.errno == errno.EIO
    assert _read(ov, "pkg/sub/data.txt") == FILES["pkg/sub/data.txt"]


def _damage(path: Path, offset: int) -> None:
    """Flip one byte in place, as a disk error or a careless root would (same size, same inode)."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.chmod(path, 0o444)


@pytest.mark.allow_warnings
@pytest.mark.parametrize("chunk_list", ["kept", "missing"])
def test_a_damaged_large_object_is_eio_where_it_is_damaged(store: Store, tmp_path: Path, chunk_list: str) -> None:
    from venvfs.store.chunks import CHUNK, chunks_path

    big = os.urandom(CHUNK * 4 + 1000)
    record = _record(store, {"pkg/big.so": big, "pkg/other.so": os.urandom(CHUNK * 2)})
    digest = record.files[0].digest
    assert digest is not None and chunks_path(store.root, digest).exists()
    if chunk_list == "missing":  # an object stored before chunk lists: checked whole on its first read
        chunks_path(store.root, digest).unlink()
    _damage(store.object_path(digest), CHUNK * 3 + 7)
    for no_open in (False, True):
        view = build_view([record], cache_tag=None, store_root=store.root)
        ov = Overlay(view, Upper(tmp_path / f"upper{no_open}", tmp_path / f"work{no_open}"), store, no_open=no_open)
        node = ov.resolve("pkg/big.so")
        assert node is not None
        node.nlookup += 1
        fh = node.ino if no_open else ov.open(node.ino, os.O_RDONLY)[0]
        if chunk_list == "kept":
            assert ov.read(fh, 0, 128 * 1024) == big[:128 * 1024]  # chunks before the damage serve
            assert ov.read(fh, CHUNK * 4, 4096) == big[CHUNK * 4:]
        with pytest.raises(OverlayError) as e:
            ov.read(fh, CHUNK * 3, 128 * 1024)
        assert e.value.errno == errno.EIO
        with pytest.raises(OverlayError) as e:  # nor can the damage be copied up into the venv
            ov.write(fh, 0, b"x") if no_open else ov.open(node.ino, os.O_RDWR)
        assert e.value.errno == errno.EIO
    report = verify(store, {})
    assert report.problems == {digest: "modified"}


def test_verify_checks_and_completes_chunk_lists(store: Store) -> None:
    from venvfs.store.chunks import CHUNK, chunks_path

    record = _record(store, {"pkg/big.so": os.urandom(CHUNK * 3)})
    digest = record.files[0].digest
    assert digest is not None
    listed = chunks_path(store.root, digest)
    original = listed.read_bytes()
    listed.unlink()
    assert verify(store, {}).ok
    assert listed.read_bytes() == original  # written again from the verified object
    _damage(listed, 5)
    assert verify(store, {}).problems == {digest: "chunk list damaged"}


def test_reload_invalidates_changed_names(ov: Overlay, store: Store) -> None:
    assert ov.lookup(ROOT_INO, "extra") is None
    base = store.get_dist(store.dist_keys()[0])
    extra = _record(store, {"extra/__init__.py": b""}, name="extra")
    ov.replace_view(build_view([base, extra], cache_tag=None, store_root=store.root))
    assert ov.lookup(ROOT_INO, "extra") is not None
    assert ("entry", ROOT_INO, "extra") in ov.invalidations


@pytest.fixture
def ov_no_open(store: Store, tmp_path: Path) -> Overlay:
    record = _record(store, FILES)
    view = build_view([record], cache_tag=None, store_root=store.root)
    return Overlay(view, Upper(tmp_path / "upper", tmp_path / "work"), store, no_open=True)


def test_no_open_reads_by_inode_and_copies_up_on_the_first_write(ov_no_open: Overlay, tmp_path: Path) -> None:
    ov = ov_no_open
    node = ov.resolve("pkg/mod.py")
    assert node is not None
    node.nlookup += 1  # as the kernel's lookup would
    assert ov.read(node.ino, 0, 100) == FILES["pkg/mod.py"]
    assert not (tmp_path / "upper/pkg/mod.py").exists()  # reading copies nothing up
    assert ov.write(node.ino, 0, b"#") == 1
    assert (tmp_path / "upper/pkg/mod.py").read_bytes() == b"#" + FILES["pkg/mod.py"][1:]
    assert ov.read(node.ino, 0, 1) == b"#"
    ov.forget(node.ino, 1)
    assert node.ino not in ov.handles


def test_no_open_unlinked_file_stays_readable_and_writable_until_forgotten(ov_no_open: Overlay) -> None:
    ov = ov_no_open
    for path in ("pkg/mod.py", "pkg/__init__.py"):
        node = ov.resolve(path)
        assert node is not None
        node.nlookup += 1
        if path == "pkg/__init__.py":
            ov.write(node.ino, 0, b"Y")  # an upper file
        parent = node.parent
        assert parent is not None
        ov.unlink(parent.ino, node.name)
        assert ov.resolve(path) is None
        ov.write(node.ino, 0, b"Z")
        assert ov.read(node.ino, 0, 1) == b"Z"
        assert ov.getattr(node.ino).nlink == 0
        ov.forget(node.ino, 1)
        with pytest.raises(OverlayError) as e:
            ov.read(node.ino, 0, 1)
        assert e.value.errno == errno.ESTALE


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_open_created_files_hold_no_fd_past_the_cache(ov_no_open: Overlay) -> None:
    # The kernel sends no RELEASE in no-open mode, so create() must not hand out a handle that only a
    # RELEASE would close: here, as there, nothing is ever released.
    from venvfs.mount.overlay import INODE_FDS_MAX

    ov = ov_no_open
    d = ov.resolve("pkg")
    assert d is not None
    before = _open_fds()
    nodes = []
    for i in range(INODE_FDS_MAX * 3):
        fh, node = ov.create(d.ino, f"new{i}", 0o644, os.O_WRONLY)
        assert fh == 0  # I/O then arrives by inode
        assert ov.write(node.ino, 0, b"x" * 10) == 10
        assert ov.read(node.ino, 0, 100) == b"x" * 10  # by another opener: the fd serves them all
        nodes.append(node)
    assert _open_fds() - before <= INODE_FDS_MAX
    assert ov.read(nodes[0].ino, 0, 100) == b"x" * 10  # an evicted fd is reopened on demand
    for node in nodes:
        ov.unlink(d.ino, node.name)
        ov.forget(node.ino, 1)
    assert _open_fds() == before
    assert not ov.handles


def test_no_open_listing_resumes_by_name_not_position(ov_no_open: Overlay) -> None:
    ov = ov_no_open
    d = ov.resolve("pkg")
    assert d is not None
    for i in range(20):
        fh, _node = ov.create(d.ino, f"n{i}", 0o644, os.O_WRONLY)
        ov.release(fh)
    first = ov.readdir(d.ino, 0)[:10]
    resume = first[-1][0]
    for _off, name, node in first:
        if node.kind != stat.S_IFDIR:  # the order is the names' hashes: "sub" may be among them
            ov.unlink(d.ino, name)
    rest = ov.readdir(d.ino, resume)
    assert {n for _o, n, _ in first} | {n for _o, n, _ in rest} == {*(f"n{i}" for i in range(20)), "__init__.py",
                                                                   "mod.py", "sub"}
    assert all(off > resume for off, _n, _ in rest)


def test_rename_exchange_swaps_store_and_upper_entries(ov: Overlay, tmp_path: Path) -> None:
    from venvfs.mount.overlay import RENAME_EXCHANGE

    pkg = _ino(ov, "pkg")
    fh, _node = ov.create(pkg, "new.txt", 0o644, os.O_WRONLY)
    ov.write(fh, 0, b"upper")
    ov.release(fh)
    ov.rename(pkg, "new.txt", pkg, "mod.py", RENAME_EXCHANGE)  # an upper file and a store file
    assert _read(ov, "pkg/mod.py") == b"upper"
    assert _read(ov, "pkg/new.txt") == FILES["pkg/mod.py"]
    with pytest.raises(OverlayError) as e:  # a directory may not land below itself
        ov.rename(ROOT_INO, "pkg", _ino(ov, "pkg/sub"), "data.txt", RENAME_EXCHANGE)
    assert e.value.errno == errno.EINVAL
    # A store directory and a store file: both names stay, each now shows the other's content.
    ov.rename(pkg, "sub", pkg, "__init__.py", RENAME_EXCHANGE)
    assert _read(ov, "pkg/sub") == FILES["pkg/__init__.py"]
    assert _read(ov, "pkg/__init__.py/data.txt") == FILES["pkg/sub/data.txt"]
    assert sorted(ov.load(ov.node(pkg))) == ["__init__.py", "mod.py", "new.txt", "sub"]
    # What the upper layer holds is the same tree, readable with nothing mounted.
    assert (tmp_path / "upper/pkg/sub").read_bytes() == FILES["pkg/__init__.py"]
    assert (tmp_path / "upper/pkg/__init__.py/data.txt").read_bytes() == FILES["pkg/sub/data.txt"]
    with pytest.raises(OverlayError) as e:
        ov.rename(pkg, "missing", pkg, "mod.py", RENAME_EXCHANGE)
    assert e.value.errno == errno.ENOENT


@pytest.fixture
def linked(store: Store, tmp_path: Path) -> tuple[Overlay, Path]:
    """An overlay that shows store bytecode as symlinks; returns it and the store's .pyc of pkg/mod.py."""
    view, pyc = _compiled_view(store, b"store bytecode")
    return Overlay(view, Upper(tmp_path / "upper", tmp_path / "work"), store, pyc_links=True), pyc


PYC_PATH = "pkg/__pycache__/mod.cpython-311.pyc"


def test_store_bytecode_is_a_symlink_into_the_store(linked: tuple[Overlay, Path]) -> None:
    ov, pyc = linked
    node = ov.resolve(PYC_PATH)
    assert node is not None
    attr = ov.getattr(node.ino)
    assert stat.S_ISLNK(attr.mode) and attr.immutable
    assert ov.readlink(node.ino) == str(pyc)
    assert attr.size == len(os.fsencode(str(pyc)))
    # Everything else stays a regular file.
    assert stat.S_ISREG(ov.getattr(_ino(ov, "pkg/mod.py")).mode)


def test_renaming_a_bytecode_link_copies_the_link_up(linked: tuple[Overlay, Path], tmp_path: Path) -> None:
    ov, pyc = linked
    cache = _ino(ov, "pkg/__pycache__")
    ov.rename(cache, "mod.cpython-311.pyc", cache, "moved.pyc")
    assert os.readlink(tmp_path / "upper/pkg/__pycache__/moved.pyc") == str(pyc)
    assert (tmp_path / "upper/pkg/__pycache__/.wh.mod.cpython-311.pyc").exists()
    assert pyc.read_bytes() == b"store bytecode"  # the store object itself is untouched


def test_dropping_an_upper_pyc_for_a_link_gives_the_name_a_new_inode(linked: tuple[Overlay, Path],
                                                                      tmp_path: Path) -> None:
    ov, pyc = linked
    # What a commit leaves: bytecode pip compiled in the upper layer, for a source now in the store.
    (tmp_path / "upper/pkg/__pycache__").mkdir(parents=True)
    (tmp_path / "upper/pkg/__pycache__/mod.cpython-311.pyc").write_bytes(b"pip's bytecode")
    cache = _ino(ov, "pkg/__pycache__")
    old = ov.lookup(cache, "mod.cpython-311.pyc")
    assert old is not None and stat.S_ISREG(ov.getattr(old.ino).mode)
    ov.invalidations.clear()
    assert ov.drop_upper([PYC_PATH]) == 1
    assert not os.path.lexists(tmp_path / "upper/pkg/__pycache__/mod.cpython-311.pyc")
    new = ov.resolve(PYC_PATH)
    # The kernel keeps an inode's file type: a regular file cannot become a symlink in place.
    assert new is not None and new.ino != old.ino and stat.S_ISLNK(ov.getattr(new.ino).mode)
    assert ov.readlink(new.ino) == str(pyc)
    assert ("entry", cache, "mod.cpython-311.pyc") in ov.invalidations


_AS_OWNER = """
import os, sys
from pathlib import Path
from venvfs.mount.overlay import INODE_FDS_MAX, ROOT_INO, Overlay, SetAttr
from venvfs.store.store import Store
from venvfs.venv.upper import Upper
from venvfs.venv.view import View

base = Path(sys.argv[1])
ov = Overlay(View(), Upper(base / "upper", base / "work"), Store.open(base / "store", create=True), no_open=True)
fh, node = ov.create(ROOT_INO, "ro.txt", 0o644, os.O_WRONLY)
ov.release(fh)
node.nlookup += 1
ov.write(node.ino, 0, b"abc")  # no-open mode: by inode, as the kernel sends it
ov.setattr(node.ino, SetAttr(mode=0o444))  # what a caller does with the file still open for writing
for i in range(INODE_FDS_MAX + 1):  # evicts ro.txt's fd from the daemon's cache
    fh, other = ov.create(ROOT_INO, f"f{i}", 0o644, os.O_WRONLY)
    ov.release(fh)
    other.nlookup += 1
    ov.write(other.ino, 0, b"x")
ov.write(node.ino, 3, b"def")
ov.setattr(node.ino, SetAttr(size=5))
st = os.stat(base / "upper/ro.txt")
print((base / "upper/ro.txt").read_bytes().decode(), oct(st.st_mode & 0o777))
"""


def test_an_ordinary_users_daemon_keeps_writing_a_file_made_read_only(require_root: None) -> None:
    # Root ignores mode bits, so the daemon runs as an ordinary user here (nobody) to meet them.
    if shutil.which("setpriv") is None:
        missing_tool("setpriv (util-linux)")
    base = Path(tempfile.mkdtemp(prefix="venvfs-owner-"))
    try:
        os.chown(base, 65534, 65534)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               _AS_OWNER, str(base)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["abcde", "0o444"]
    finally:
        shutil.rmtree(base)
