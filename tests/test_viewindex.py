"""The view index (venvfs/venv/viewindex.py): the tree a daemon reads, one directory built at a time."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import create_venv, run_cli
from tests.wheelbuilder import WheelSpec, build_wheel, simple_package
from venvfs.store.store import Store
from venvfs.venv.venv import Venv
from venvfs.venv.view import LowerDir, LowerFile, View, view_cache_key, view_for


def _managed(tmp_path: Path, store_root: Path, *specs: WheelSpec) -> Venv:
    venv = create_venv(tmp_path / "venv", "uv")
    run_cli(store_root, "adopt", str(venv), "--no-hooks", "--no-compile")
    run_cli(store_root, "add", str(venv), *(str(build_wheel(tmp_path / "w", s)) for s in specs))
    return Venv(venv)


def _entries(view: View) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for path, e in view.walk():
        if isinstance(e, LowerDir):
            out.append((path, "dir"))
        elif e.render is None:  # RECORDs are rendered per venv, never indexed
            out.append((path, (e.kind, e.digest, e.size, e.executable, e.target)))
    return sorted(out)


def _odd_package() -> WheelSpec:
    spec = simple_package("odd", "1.0")
    files = dict(spec.files)
    files["odd/données/é.txt"] = "ünïcode".encode()
    files["odd/bin/run"] = b"#!/bin/sh\necho run\n"
    for i in range(50):
        files[f"odd/many/m{i:02}.py"] = f"X = {i}\n".encode()
    return WheelSpec(name="odd", version="1.0", files=files, executables=frozenset({"odd/bin/run"}),
                     symlinks={"odd/link.py": "sub/helpers.py"})


def test_index_round_trip_builds_only_visited_directories(tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    venv = _managed(tmp_path, store_root, _odd_package(), simple_package("plain", "2.0"))
    store = Store.open(store_root, create=False)
    state = venv.read_state()
    built = view_for(venv, store, state, cache=False)
    view_for(venv, store, state)  # writes the index
    path = store.view_cache_path(view_cache_key(state))
    assert path.name.endswith(".index") and path.read_bytes()[:8] == b"VENVFSIX"

    mapped = view_for(venv, store, state)
    odd = mapped.lookup("odd")
    assert isinstance(odd, LowerDir)
    many = odd.children["many"]
    # Loading and a lookup of one path built the directories on that path, and no other.
    assert isinstance(many, LowerDir) and many._children is None
    assert isinstance(odd.children["sub"], LowerDir) and odd.children["sub"]._children is None

    assert _entries(mapped) == _entries(built)
    link = mapped.lookup("odd/link.py")
    assert isinstance(link, LowerFile) and link.target == "sub/helpers.py"
    run = mapped.lookup("odd/bin/run")
    assert isinstance(run, LowerFile) and run.executable
    assert mapped.lookup("odd/données/é.txt") is not None
    record = mapped.lookup("odd-1.0.dist-info/RECORD")
    assert isinstance(record, LowerFile) and b"odd/__init__.py" in (record.data or b"")


def test_a_damaged_or_foreign_index_is_rebuilt(tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    venv = _managed(tmp_path, store_root, simple_package("demo", "1.0"))
    store = Store.open(store_root, create=False)
    state = venv.read_state()
    want = _entries(view_for(venv, store, state, cache=False))
    path = store.view_cache_path(view_cache_key(state))
    view_for(venv, store, state)
    good = path.read_bytes()
    other = good[:12] + bytes(32) + good[44:]  # another selection's key in the header
    for damaged in (good[:40], good[: len(good) // 2], other, b"not an index"):
        path.write_bytes(damaged)
        assert _entries(view_for(venv, store, state)) == want
        assert path.read_bytes() == good


def test_a_mapped_view_keeps_its_tree_when_the_index_is_replaced(tmp_path: Path) -> None:
    """gc removes an index, a daemon rebuilds one by rename: a live daemon's mapping is of the old
    file, whose bytes never change, so the directories it has yet to visit are still there."""
    store_root = tmp_path / "store"
    venv = _managed(tmp_path, store_root, simple_package("demo", "1.0"))
    store = Store.open(store_root, create=False)
    state = venv.read_state()
    view_for(venv, store, state)
    mapped = view_for(venv, store, state)
    path = store.view_cache_path(view_cache_key(state))
    os.unlink(path)
    view_for(venv, store, state)  # a new file by rename
    assert mapped.lookup("demo/sub/helpers.py") is not None
    assert mapped.lookup("demo/data/table.txt") is not None


def test_a_view_built_for_the_cache_is_served_from_its_index(tmp_path: Path) -> None:
    # A daemon that finds no index builds the whole tree from the records; what it keeps must be the
    # index it wrote, built a directory at a time, not that tree (its memory stays with the mount).
    store_root = tmp_path / "store"
    venv = _managed(tmp_path, store_root, _odd_package())
    store = Store.open(store_root, create=False)
    state = venv.read_state()
    store.view_cache_path(view_cache_key(state)).unlink(missing_ok=True)
    view = view_for(venv, store, state)
    assert store.view_cache_path(view_cache_key(state)).exists()
    odd = view.lookup("odd")
    assert isinstance(odd, LowerDir)
    many = odd.children["many"]
    assert isinstance(many, LowerDir) and many._children is None
    assert _entries(view) == _entries(view_for(venv, store, state, cache=False))
    record = view.lookup("odd-1.0.dist-info/RECORD")
    assert isinstance(record, LowerFile) and record.render is not None


def test_the_ingest_thread_names_the_selection_from_its_index(tmp_path: Path) -> None:
    # The daemon's ingest thread names the selected dist-infos at the first mount of a venv and after
    # each ingest: from the selection's index, not by parsing every record in the daemon's heap.
    from venvfs.mount.ingest import IngestScheduler
    from venvfs.mount.overlay.activity import Activity

    store_root = tmp_path / "store"
    venv = _managed(tmp_path, store_root, _odd_package(), simple_package("plain", "2.0"))
    store = Store.open(store_root, create=False)
    state = venv.read_state()
    view_for(venv, store, state)  # the index, as a mount has it
    away = [store.dist_path(key) for key in state.selection]
    for path in away:
        path.rename(path.with_name(path.name + ".away"))
    try:
        assert IngestScheduler(venv, store_root, Activity())._selected() == {"odd-1.0.dist-info",
                                                                             "plain-2.0.dist-info"}
    finally:
        for path in away:
            path.with_name(path.name + ".away").rename(path)
