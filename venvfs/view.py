"""The lower layer of a mounted site-packages: a pure, immutable tree built from the selection's records.

Nothing here touches the venv: the view says which names exist below site-packages and where their
bytes live (a store object, a store ``.pyc``, or a few bytes rendered in memory such as a RECORD file).
The overlay merges it with the upper layer; the FUSE adapter never sees it directly.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable, Iterator
from pathlib import Path

from venvfs.fsutil import UnsafePath, safe_relpath
from venvfs.records import DistRecord
from venvfs.store import Store
from venvfs.venv import Venv, VenvState

log = logging.getLogger(__name__)

# Kinds of lower files.
OBJECT = 0  # a store object
PYC = 1  # the store's bytecode for a .py object (digest is the source's)
SYMLINK = 2
INLINE = 3  # bytes rendered in memory (RECORD of a dist, which pip needs to uninstall it)


def pyc_relpath(py_relpath: str, cache_tag: str) -> str:
    """``a/b/mod.py`` -> ``a/b/__pycache__/mod.<cache_tag>.pyc`` (what importlib looks for)."""
    try:
        from venvfs.bytecode import pyc_relpath as lead

        return lead(py_relpath, cache_tag)
    except ImportError:  # pragma: no cover - bytecode.py is part of the package
        directory, name = posixpath.split(py_relpath)
        return posixpath.join(directory, "__pycache__", f"{name[:-3]}.{cache_tag}.pyc")


class LowerFile:
    __slots__ = ("data", "digest", "executable", "kind", "size", "target")

    def __init__(self, kind: int, digest: str | None, size: int, executable: bool = False,
                 target: str | None = None, data: bytes | None = None) -> None:
        self.kind = kind
        self.digest = digest
        self.size = size  # -1: not known yet (a .pyc, sized on first stat)
        self.executable = executable
        self.target = target
        self.data = data

    def same_as(self, other: LowerEntry) -> bool:
        return (isinstance(other, LowerFile) and other.kind == self.kind and other.digest == self.digest
                and other.executable == self.executable and other.target == self.target
                and other.data == self.data)

    def __repr__(self) -> str:
        return f"LowerFile(kind={self.kind}, digest={self.digest}, size={self.size})"


class LowerDir:
    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: dict[str, LowerEntry] = {}

    def __repr__(self) -> str:
        return f"LowerDir({len(self.children)} entries)"


LowerEntry = LowerFile | LowerDir


class View:
    """A directory tree of ``LowerDir`` / ``LowerFile`` rooted at site-packages."""

    def __init__(self, root: LowerDir | None = None, cache_tag: str | None = None) -> None:
        self.root = root if root is not None else LowerDir()
        self.cache_tag = cache_tag

    def lookup(self, relpath: str) -> LowerEntry | None:
        node: LowerEntry = self.root
        if relpath in ("", "."):
            return node
        for part in relpath.split("/"):
            if not isinstance(node, LowerDir):
                return None
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node

    def walk(self) -> Iterator[tuple[str, LowerEntry]]:
        """Every entry below the root (depth first, parents before children) with its relative path."""
        stack: list[tuple[str, LowerDir]] = [("", self.root)]
        while stack:
            prefix, d = stack.pop()
            for name, entry in d.children.items():
                path = f"{prefix}{name}"
                yield path, entry
                if isinstance(entry, LowerDir):
                    stack.append((path + "/", entry))

    def count(self) -> int:
        return sum(1 for _ in self.walk())

    def _insert(self, relpath: str, entry: LowerFile) -> bool:
        parts = relpath.split("/")
        d = self.root
        for part in parts[:-1]:
            child = d.children.get(part)
            if child is None:
                child = d.children[part] = LowerDir()
            elif not isinstance(child, LowerDir):
                return False
            d = child
        existing = d.children.get(parts[-1])
        if isinstance(existing, LowerDir):
            return False
        # Later distributions in the selection win, as a later install overwrites an earlier one.
        d.children[parts[-1]] = entry
        return True

    def _remove(self, relpath: str) -> None:
        parent = self.lookup(posixpath.dirname(relpath))
        if isinstance(parent, LowerDir):
            entry = parent.children.get(posixpath.basename(relpath))
            if isinstance(entry, LowerFile):
                del parent.children[posixpath.basename(relpath)]


def available_bytecode(store_root: Path, cache_tag: str) -> set[str]:
    """Digests of the .py objects the store holds bytecode for: one scandir per fan-out directory,
    far cheaper than one stat per .py file of a large venv."""
    digests: set[str] = set()
    base = store_root / "bytecode" / cache_tag
    try:
        subdirs = list(os.scandir(base))
    except FileNotFoundError:
        return digests
    for sub in subdirs:
        try:
            with os.scandir(sub.path) as it:
                digests.update(e.name[:-4] for e in it if e.name.endswith(".pyc"))
        except NotADirectoryError:
            continue
    return digests


def build_view(records: Iterable[DistRecord], *, cache_tag: str | None, store_root: Path | None = None,
               record_files: dict[str, bytes] | None = None) -> View:
    """The lower tree of a selection: site-packages files, bytecode where the store has it, and the
    RECORD files given in ``record_files`` (dist-info name -> rendered bytes)."""
    view = View(cache_tag=cache_tag)
    pycs = available_bytecode(store_root, cache_tag) if (store_root is not None and cache_tag) else set()
    for record in records:
        for f in record.site_files():
            try:
                rel = safe_relpath(f.path)
            except UnsafePath:
                log.error("%s: unsafe path %r left out of the view", record.key, f.path)
                continue
            if rel.split("/")[-1].startswith(".wh."):
                log.error("%s: %r uses the whiteout prefix; left out of the view", record.key, f.path)
                continue
            if f.symlink is not None:
                entry = LowerFile(SYMLINK, None, len(os.fsencode(f.symlink)), target=f.symlink)
            else:
                entry = LowerFile(OBJECT, f.digest, f.size, executable=f.executable)
            if not view._insert(rel, entry):
                log.error("%s: %s conflicts with a directory of another distribution", record.key, rel)
                continue
            if cache_tag and rel.endswith(".py"):
                pyc = pyc_relpath(rel, cache_tag)
                if f.digest in pycs:
                    view._insert(pyc, LowerFile(PYC, f.digest, -1))
                else:
                    # A .pyc of an earlier distribution's file at this path would carry the same
                    # mtime and maybe the same size: it must not outlive its source.
                    view._remove(pyc)
        if record_files and record.dist_info in record_files:
            data = record_files[record.dist_info]
            view._insert(f"{record.dist_info}/RECORD", LowerFile(INLINE, None, len(data), data=data))
    return view


def view_for(venv: Venv, store: Store, state: VenvState) -> View:
    """The view of ``venv``'s selection, with a rendered RECORD for each distribution: the store keeps
    no RECORD (installers rewrite it), yet pip reads it to uninstall."""
    from venvfs.materialize import render_record

    records = [store.get_dist(key) for key in state.selection]
    interp = state.interpreter
    cache_tag = interp.cache_tag if interp is not None else None
    record_files = (
        {r.dist_info: render_record(venv, interp, r, store=store) for r in records} if interp is not None else {}
    )
    return build_view(records, cache_tag=cache_tag, store_root=store.root, record_files=record_files)
