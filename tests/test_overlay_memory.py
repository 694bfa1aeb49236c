"""What a walked tree costs a mount's daemon (issue 16, point 5): structural, never timed.

A daemon holds a node for every entry the kernel has looked up, tens of thousands after a walk of a
large venv, so each byte per entry counts: the figures below are ``tracemalloc``'s (the bytes Python
allocated and still holds), which do not depend on the machine's load.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

from venvfs.mount.fuse import Operations
from venvfs.mount.overlay import Overlay
from venvfs.store.store import Store
from venvfs.venv.upper import DIR, Upper
from venvfs.venv.view import OBJECT, LowerDir, LowerFile, View
from venvfs.venv.viewindex import ViewIndex, encode

PACKAGES, FILES = 10, 300


def _index(path: Path, seed: str) -> View:
    """A view of PACKAGES directories of FILES files each, read from an index as a mount reads it."""
    tree = {f"pkg{p}": {f"module_{i:04}.py": (OBJECT, hashlib.sha256(f"{seed}{p}/{i}".encode()).hexdigest(),
                                              1000 + i, False, None) for i in range(FILES)}
            for p in range(PACKAGES)}
    key = hashlib.sha256(seed.encode()).hexdigest()
    path.write_bytes(encode(tree, key=key, missing=[], records={}))
    return View(LowerDir.from_index(ViewIndex(path, key), 0))


def _walk(ov: Overlay) -> int:
    """Every entry listed and replied to as the FUSE adapter does for readdirplus; how many."""
    ops = Operations(ov)
    count = 0
    stack = [ov.root.ino]
    while stack:
        ino = stack.pop()
        for _offset, _name, node in ov.readdir(ino, 0):
            ops._node_entry(node)
            node.nlookup += 1
            count += 1
            if node.kind == DIR:
                stack.append(node.ino)
    return count


def test_a_walked_tree_costs_under_600_bytes_an_entry(store: Store, tmp_path: Path) -> None:
    view = _index(tmp_path / "a.index", "a")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ov = Overlay(view, Upper(tmp_path / "upper", tmp_path / "work"), store, no_open=True)
        entries = _walk(ov)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert entries == PACKAGES * (FILES + 1)
    # A node, its store entry (raw digest), its name and number, and its place in three dicts: about
    # 450 bytes. A reply kept per node (200 bytes) and hex digests (48 more) made it about 750.
    assert held / entries < 600, f"{held / entries:.0f} bytes an entry"


def test_the_view_index_is_read_not_mapped(store: Store, tmp_path: Path) -> None:
    # Mapped pages count as the daemon's own memory (USS) while no other process maps the index.
    path = tmp_path / "a.index"
    ov = Overlay(_index(path, "a"), Upper(tmp_path / "upper", tmp_path / "work"), store, no_open=True)
    ov.load(ov.root)  # its subdirectories, not yet visited, still need the index
    assert str(path) not in Path("/proc/self/maps").read_text()
    assert _walk(ov) == PACKAGES * (FILES + 1)


def test_a_reload_keeps_the_entries_of_unchanged_directories(store: Store, tmp_path: Path) -> None:
    ov = Overlay(_index(tmp_path / "a.index", "a"), Upper(tmp_path / "upper", tmp_path / "work"), store,
                 no_open=True)
    _walk(ov)
    before = {name: node.lower for name, node in ov.load(ov.root).items()}
    pkg1 = ov.resolve("pkg1")
    assert pkg1 is not None
    files_before = {name: node.lower for name, node in ov.load(pkg1).items()}
    # The same tree again (the selection of a `venvfs add` that changed nothing here), and one changed file.
    again = _index(tmp_path / "b.index", "a")
    changed = again.root.children["pkg0"]
    assert isinstance(changed, LowerDir)
    changed.children["module_0000.py"] = LowerFile(OBJECT, hashlib.sha256(b"other").hexdigest(), 1000)
    ov.replace_view(again)
    after = ov.load(ov.root)
    for p in range(1, PACKAGES):
        assert after[f"pkg{p}"].lower is before[f"pkg{p}"], "an unchanged directory took the new copy"
    assert after["pkg0"].lower is not before["pkg0"]
    assert ov.view.root.children["pkg1"] is before["pkg1"]
    assert all(node.lower is files_before[name] for name, node in ov.load(pkg1).items())
    # What the changed directory shows is the new view's.
    pkg0 = ov.resolve("pkg0/module_0000.py")
    assert pkg0 is not None and pkg0.lower is changed.children["module_0000.py"]
    assert ov.getattr(pkg0.ino).size == 1000
