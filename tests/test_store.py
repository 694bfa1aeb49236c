"""The store itself: format, objects, records, bytecode, and gc (which must notice a deleted venv, never
remove what a live venv references, and change nothing with --dry-run)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import create_venv, run_cli, tree_snapshot
from tests.wheelbuilder import build_wheel, data_package, simple_package
from venvfs.errors import StoreError
from venvfs.store.chunks import CHUNK, chunk_digests, digest_fd, needs_chunks
from venvfs.store.records import DistRecord, StoredFile
from venvfs.store.store import SOURCE_EPOCH, STORE_FORMAT, Store, take_inode
from venvfs.store.verify import verify
from venvfs.venv.venv import Venv
from venvfs.venv.view import view_for


def test_open_creates_and_checks_format(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no venvfs store"):
        Store.open(tmp_path / "absent", create=False)
    store = Store.open(tmp_path / "s")
    assert json.loads((store.root / "format.json").read_text()) == {"format": STORE_FORMAT}
    (store.root / "format.json").write_text('{"format": 99}')
    with pytest.raises(StoreError, match="99"):
        Store.open(store.root)
    (store.root / "format.json").write_text("not json")
    with pytest.raises(StoreError, match="unreadable"):
        Store.open(store.root)


def test_unknown_format_is_exit_5(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    (store.root / "format.json").write_text('{"format": 2}')
    proc = run_cli(store.root, "store", "list", check=False)
    assert proc.returncode == 5 and len(proc.stderr.strip().splitlines()) == 1


def test_put_is_content_addressed_read_only_and_idempotent(store: Store) -> None:
    a = store.put_stream(io.BytesIO(b"hello\n"))
    b = store.put_stream(io.BytesIO(b"hello\n"))
    x = store.put_stream(io.BytesIO(b"hello\n"), executable=True)
    assert a.digest == b.digest == x.digest and (a.new, b.new, x.new) == (True, False, True)
    plain, exe = store.object_path(a.digest), store.object_path(a.digest, True)
    assert plain != exe and plain.read_bytes() == exe.read_bytes() == b"hello\n"
    assert stat.S_IMODE(plain.stat().st_mode) == 0o444 and stat.S_IMODE(exe.stat().st_mode) == 0o555
    assert int(plain.stat().st_mtime) == SOURCE_EPOCH
    assert list((store.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("size", [0, 5, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_one_read_gives_the_digest_and_the_chunk_list(tmp_path: Path, size: int) -> None:
    # Issue 17: adopt reads each file once, for its sha256, RECORD's algorithm and its chunk list.
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = digest_fd(fd, size, "sha384")
        assert (got.sha256, got.size, got.other) == (hashlib.sha256(data).hexdigest(), size,
                                                     hashlib.sha384(data).hexdigest())
        assert got.chunk_list == (chunk_digests(fd, size) if needs_chunks(size) else None)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:  # a stat that is out of date (the file grew or shrank since) still hashes all of it
        assert digest_fd(fd, max(size - CHUNK, 0), "sha256").sha256 == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)


def test_the_store_takes_the_inode_it_was_handed_and_leaves_a_known_one(store: Store, tmp_path: Path) -> None:
    # Issue 17: adopt gives the store a venv's own file through the fd it hashed. The object is that
    # inode even if the path names another file by then; bytes the store already has leave the file
    # untouched (its mode and mtime too: a 1980 mtime would pass for a placed copy, never to be linked).
    venv_file = tmp_path / "mod.py"
    venv_file.write_bytes(b"print(1)\n")
    fd = os.open(venv_file, os.O_RDONLY)
    try:
        digests = digest_fd(fd, os.fstat(fd).st_size)
        inode = os.fstat(fd).st_ino
        venv_file.rename(tmp_path / "mod.py.orig")
        venv_file.write_bytes(b"print(2)\n")  # the path now names another file
        put = take_inode(store, fd, digests.sha256, digests.size, False, chunk_list=digests.chunk_list)
    finally:
        os.close(fd)
    assert put is not None and put.new
    obj = store.object_path(digests.sha256)
    assert obj.stat().st_ino == inode and obj.read_bytes() == b"print(1)\n"
    assert stat.S_IMODE(obj.stat().st_mode) == 0o444 and int(obj.stat().st_mtime) == SOURCE_EPOCH
    assert venv_file.read_bytes() == b"print(2)\n"

    twin = tmp_path / "twin.py"
    twin.write_bytes(b"print(1)\n")
    before = twin.stat()
    fd = os.open(twin, os.O_RDONLY)
    try:
        again = take_inode(store, fd, digests.sha256, digests.size, False)
    finally:
        os.close(fd)
    after = twin.stat()
    assert again is not None and not again.new
    assert (after.st_mode, after.st_mtime_ns, after.st_nlink) == (before.st_mode, before.st_mtime_ns, 1)


def test_record_needs_its_objects_and_round_trips(store: Store) -> None:
    put = store.put_stream(io.BytesIO(b"x = 1\n"))
    good = DistRecord("pkg", "1.0", "pkg-1.0.dist-info", ("py3-none-any",),
                      (StoredFile("pkg/__init__.py", "purelib", put.digest, put.size),))
    missing = DistRecord("pkg", "1.1", "pkg-1.1.dist-info", ("py3-none-any",),
                         (StoredFile("pkg/__init__.py", "purelib", "0" * 64, 3),))
    with pytest.raises(StoreError, match="not in the store"):
        store.add_dist(missing)
    assert not store.has_dist(missing.key)
    assert store.add_dist(good) and not store.add_dist(good)
    assert store.get_dist(good.key) == good
    # A record whose content does not match its key is refused as unreadable.
    path = store.dist_path(good.key)
    data = json.loads(path.read_text())
    data["version"] = "9.9"
    path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="unreadable record"):
        store.get_dist(good.key)
    assert verify(store, {}).bad_records == [good.key]


# -- gc ------------------------------------------------------------------------------------------------


def _managed(path: Path, store: Path, *wheels: Path) -> Path:
    venv = create_venv(path, "uv")
    run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
    if wheels:
        run_cli(store, "add", str(venv), *map(str, wheels))
    return venv


def test_gc_keeps_a_vanished_venv_until_forget_missing_and_dry_run_changes_nothing(tmp_path: Path) -> None:
    """A registered venv that is not where it was (deleted, or on a disk not mounted now) keeps what it
    selected, from the registry's copy, until `gc --forget-missing`, which names it first."""
    store = tmp_path / "store"
    shared = build_wheel(tmp_path / "w", simple_package("shared", "1.0"))
    only_a = build_wheel(tmp_path / "w", data_package("onlya", "1.0"))
    only_b = build_wheel(tmp_path / "w", simple_package("onlyb", "1.0"))
    unused = build_wheel(tmp_path / "w", simple_package("unused", "3.0"))
    live = _managed(tmp_path / "live", store, shared, only_a)
    gone = _managed(tmp_path / "gone", store, shared, only_b)
    run_cli(store, "store", "add", str(unused))
    st = Store.open(store, create=False)
    assert len(st.dist_keys()) == 4
    shutil.rmtree(gone)
    # A staging leftover of a killed writer.
    (store / "tmp" / "obj.leftover").write_bytes(b"partial")

    before = tree_snapshot(store)
    dry = json.loads(run_cli(store, "store", "gc", "--dry-run", "--json").stdout)
    assert tree_snapshot(store) == before, "--dry-run changed the store"
    assert dry["dry_run"] is True and dry["forgotten_venvs"] == []
    assert [(v["path"], v["condition"]) for v in dry["kept_venvs"]] == [(str(gone), "missing")]
    assert sorted(k.split("-")[0] for k in dry["distributions"]) == ["unused"]
    human = run_cli(store, "store", "gc", "--dry-run").stdout
    assert "would free" in human and str(gone) in human and "--forget-missing" in human
    assert "would remove unused-3.0-" in human

    kept = json.loads(run_cli(store, "store", "gc", "--json").stdout)
    assert sorted(k.split("-")[0] for k in kept["distributions"]) == ["unused"]
    assert sorted(k.split("-")[0] for k in st.dist_keys()) == ["onlya", "onlyb", "shared"]
    assert sorted(st.registered_venvs()) == sorted([live, gone])

    before = tree_snapshot(store)
    dry_forget = run_cli(store, "store", "gc", "--dry-run", "--forget-missing").stdout
    assert tree_snapshot(store) == before, "--dry-run changed the store"
    assert f"would forget venv {gone}" in dry_forget and "would remove onlyb-1.0-" in dry_forget
    live_objects = {(f.digest, f.executable) for k in Venv(live).read_state().selection
                    for f in st.get_dist(k).files if f.digest}
    done = run_cli(store, "store", "gc", "--forget-missing").stdout
    # Named before anything is removed.
    assert done.index(f"forgetting venv {gone}") < done.index("removed onlyb-1.0-"), done
    assert sorted(k.split("-")[0] for k in st.dist_keys()) == ["onlya", "shared"]
    remaining = {(d, x) for d, x, _p in st.iter_objects()}
    assert live_objects <= remaining, "gc removed an object a live venv uses"
    assert remaining == live_objects, "gc left unreferenced objects behind"
    assert st.registered_venvs() == [live]
    assert list((store / "tmp").iterdir()) == []
    assert run_cli(store, "store", "verify").returncode == 0
    proc = subprocess.run([live / "bin" / "python", "-c", "import shared, onlya; print(shared.VERSION)"],
                          capture_output=True, text=True)
    assert proc.stdout.strip() == "1.0", proc.stderr
    # Nothing left to collect.
    again = json.loads(run_cli(store, "store", "gc", "--json", "--forget-missing").stdout)
    assert again["distributions"] == [] and again["objects"] == 0 and again["bytes_freed"] == 0


def test_gc_keeps_bytecode_of_live_sources(tmp_path: Path) -> None:
    store = tmp_path / "store"
    live = create_venv(tmp_path / "live", "uv")
    subprocess.run(["uv", "pip", "install", "-q", "--python", str(live / "bin" / "python"),
                    str(build_wheel(tmp_path / "w", simple_package("compiled", "1.0")))], check=True)
    run_cli(store, "adopt", str(live), "--no-hooks", "--compile-now")  # bytecode into the store
    pycs = sorted((store / "bytecode").glob("*/*/*.pyc"))
    assert pycs
    # The venv's __pycache__ holds the shared .pyc, and Python accepts it (no rewrite on import).
    site = Venv(live).site_packages
    cached = site / "compiled" / "sub" / "__pycache__" / "helpers.cpython-311.pyc"
    inode = cached.stat().st_ino
    subprocess.run([live / "bin" / "python", "-c", "import compiled.sub.helpers"], check=True)
    assert cached.stat().st_ino == inode
    run_cli(store, "store", "gc")
    assert sorted((store / "bytecode").glob("*/*/*.pyc")) == pycs


def test_gc_notices_a_venv_now_using_another_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    wheel = build_wheel(tmp_path / "w", simple_package("moved", "1.0"))
    venv = _managed(tmp_path / "venv", store, wheel)
    state = Venv(venv).read_state()
    state.store = str(tmp_path / "elsewhere")
    Venv(venv).write_state(state)
    report = json.loads(run_cli(store, "store", "gc", "--json").stdout)
    assert report["forgotten_venvs"] == [str(venv)]
    assert Store.open(store, create=False).dist_keys() == []


def test_venvs_of_one_selection_share_one_cached_view_and_gc_drops_unused_ones(tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    wheel = build_wheel(tmp_path / "w", simple_package("viewed", "1.0"))
    a, b = (_managed(tmp_path / name, store_root, wheel) for name in ("a", "b"))
    store = Store.open(store_root)
    (a / ".venvfs/view.marshal").write_bytes(b"where venvfs 0.1 kept it")
    for v in (a, b):
        venv = Venv(v)
        assert view_for(venv, store, venv.read_state()).lookup("viewed/__init__.py") is not None
    (live,) = (store_root / "views").glob("*.index")
    assert not (a / ".venvfs/view.marshal").exists()
    stale = store_root / "views" / ("0" * 64 + ".index")  # the tree of a selection nobody has now
    stale.write_bytes(b"stale")
    dry = json.loads(run_cli(store_root, "store", "gc", "--dry-run", "--json").stdout)
    assert dry["views"] == 1 and stale.exists()
    report = json.loads(run_cli(store_root, "store", "gc", "--json").stdout)
    assert report["views"] == 1 and sorted((store_root / "views").iterdir()) == [live]


def test_gc_busy_while_a_writer_holds_the_store(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    with store.writing():
        proc = run_cli(store.root, "store", "gc", "--no-wait", check=False)
        assert proc.returncode == 7 and "locked" in proc.stderr
        # By default gc waits for a writer (adopt's background bytecode compile, say), saying so.
        proc = run_cli(store.root, "store", "gc", "--wait", "1.5", check=False)
    assert proc.returncode == 7 and "waiting for the lock" in proc.stderr and "gave up after 1.5 s" in proc.stderr


def test_store_list_and_status_json(tmp_path: Path) -> None:
    store = tmp_path / "store"
    wheel = build_wheel(tmp_path / "w", simple_package("listed", "1.0"))
    _managed(tmp_path / "venv", store, wheel)
    rows = json.loads(run_cli(store, "store", "list", "--json").stdout)
    (row,) = rows
    assert row["name"] == "listed" and row["venvs"] == 1 and row["files"] > 0
    status = json.loads(run_cli(store, "store", "status", "--json").stdout)
    assert status["distributions"] == 1 and status["objects"] > 0 and len(status["venvs"]) == 1
    assert "listed" in run_cli(store, "store", "list").stdout


def test_ingest_race_with_gc_never_leaves_a_record_without_objects(tmp_path: Path) -> None:
    """gc waits for writers (or, with --no-wait, fails busy), and writers hold the shared lock:
    interleave them a few times."""
    store = Store.open(tmp_path / "store")
    wheels = [build_wheel(tmp_path / "w", simple_package(f"race{i}", "1.0")) for i in range(6)]
    env = {**os.environ, "VENVFS_STORE": str(store.root)}
    import sys

    adds = [subprocess.Popen([sys.executable, "-m", "venvfs", "store", "add", str(w)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for w in wheels]
    gcs = [run_cli(store.root, "store", "gc", *(("--no-wait",) if i % 2 else ()), check=False) for i in range(3)]
    for p in adds:
        p.wait(timeout=120)
    assert all(g.returncode in (0, 7) for g in gcs), [g.stderr for g in gcs]
    assert all(p.returncode == 0 for p in adds)
    # Whatever gc removed (records nobody selects), no record is left pointing at a missing object.
    assert verify(store, {}).ok


_KILLED_WRITING_RECORD = """
import io, os, sys
from pathlib import Path
from venvfs import fsutil
from venvfs.store.chunks import CHUNK, chunk_digests, digest_fd, needs_chunks
from venvfs.store.records import DistRecord, StoredFile
from venvfs.store.store import Store
store = Store.open(Path(sys.argv[1]))
put = store.put_stream(io.BytesIO(b"x = 1\\n"))
record = DistRecord("pkg", "1.0", "pkg-1.0.dist-info", ("py3-none-any",),
                    (StoredFile("pkg/__init__.py", "purelib", put.digest, put.size),))
def die(*args, **kwargs):
    os._exit(9)  # as SIGKILL would: the record is written to a temporary, not yet renamed
fsutil.os.replace = die
store.add_dist(record)
"""


def test_gc_clears_what_a_writer_killed_mid_record_left(tmp_path: Path) -> None:
    import sys

    from tests.conftest import REPO

    store = Store.open(tmp_path / "store")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITING_RECORD, str(store.root)],
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 9
    assert store.dist_keys() == []  # nothing half-visible
    run_cli(store.root, "store", "gc")
    leftovers = [str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], "a killed writer's temporary outlives gc"


def test_a_new_store_is_closed_to_other_users(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a" / "store")
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700


def test_records_are_parsed_once_inside_keeping_records_and_never_outlive_their_file(tmp_path: Path) -> None:
    from venvfs.store.store import keeping_records
    from venvfs.store.wheel import ingest_wheel

    store = Store.open(tmp_path / "store")
    record = ingest_wheel(store, build_wheel(tmp_path / "wheels", simple_package("kept", "1.0")))[0]
    assert store.get_dist(record.key) is not store.get_dist(record.key)  # outside: read each time
    with keeping_records(store):
        first = store.get_dist(record.key)
        assert store.get_dist(record.key) is first
        saved = store.dist_path(record.key).read_bytes()
        store.dist_path(record.key).unlink()  # as gc does
        with pytest.raises(StoreError, match="not in the store"):
            store.get_dist(record.key)
        store.dist_path(record.key).write_bytes(saved)  # published again
        assert store.get_dist(record.key) == first
    assert store._records is None


def test_a_file_the_store_did_not_take_keeps_its_mode_and_mtime(store: Store, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two files of equal bytes adopted at once (pip and setuptools vendor the same packaging modules;
    adopt hashes on threads and in a forked process): the loser of the race to publish must not keep
    the store's mode and mtime, or it passes for a placed copy and is never linked to the object."""
    import venvfs.store.store as store_module

    data = b"VERSION = 1\n"
    digest = hashlib.sha256(data).hexdigest()
    winner, loser = tmp_path / "a.py", tmp_path / "b.py"
    for path in (winner, loser):
        path.write_bytes(data)
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    with open(winner, "rb") as f:
        assert take_inode(store, f.fileno(), digest, len(data), False).new
    before = loser.stat()
    # The race: the other writer publishes after this one looked for the object.
    monkeypatch.setattr(store_module, "exists", lambda name: False)
    with open(loser, "rb") as f:
        put = take_inode(store, f.fileno(), digest, len(data), False)
    assert put is not None and not put.new
    after = loser.stat()
    assert (stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (stat.S_IMODE(before.st_mode), before.st_mtime_ns)
    assert after.st_ino != os.stat(store.local_object_name(digest, False)).st_ino
