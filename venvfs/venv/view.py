"""The lower layer of a mounted site-packages: a pure, immutable tree built from the selection's records.

Nothing here touches the venv: the view says which names exist below site-packages and where their
bytes live (a store object, a store ``.pyc``, or a few bytes rendered in memory such as a RECORD file).
The overlay merges it with the upper layer; the FUSE adapter never sees it directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from venvfs.fsutil import UnsafePath, atomic_write_bytes, safe_relpath
from venvfs.store.records import DistRecord
from venvfs.store.store import Store
from venvfs.venv.venv import Venv, VenvState
from venvfs.venv.viewindex import DIR_KIND, BadIndex, ViewIndex, encode

log = logging.getLogger(__name__)

# Kinds of lower files.
OBJECT = 0  # a store object
PYC = 1  # the store's bytecode for a .py object (digest is the source's)
SYMLINK = 2
INLINE = 3  # bytes rendered in memory (RECORD of a dist, which pip needs to uninstall it)


class LowerFile:
    """One file below: where its bytes live. An INLINE file may be rendered lazily (``render``): a
    RECORD costs a lot to render and pip reads one only to uninstall, so mounting renders none.

    A mounted tree holds one of these for every file of each directory the kernel visited (tens of
    thousands), so it is kept small: the digest as its 32 raw bytes (a hex string is 48 bytes more),
    kind and the executable bit in one small int, and what only symlinks and INLINE files have in one
    slot. A rendered RECORD is not kept either: its size is, and the bytes are rendered again for the
    rare reader (pip, to uninstall), who holds them while the file is open."""

    __slots__ = ("_digest", "_extra", "_kind", "_size")

    def __init__(self, kind: int, digest: str | bytes | None, size: int, executable: bool = False,
                 target: str | None = None, data: bytes | None = None,
                 render: tuple[Callable[[], bytes], Hashable] | None = None) -> None:
        self._kind = kind | (_EXECUTABLE if executable else 0)
        self._digest = _raw_digest(digest) if digest.__class__ is str else digest
        self._size = size  # -1: not known yet (a .pyc, sized on first stat; a RECORD not rendered yet)
        # A symlink's target (str), an INLINE file's bytes (bytes) or its renderer and token (tuple):
        # equal tokens render equal bytes.
        self._extra: str | bytes | tuple[Callable[[], bytes], Hashable] | None = (
            target if target is not None else data if data is not None else render)

    @property
    def kind(self) -> int:
        return self._kind & _KIND_MASK

    @property
    def executable(self) -> bool:
        return bool(self._kind & _EXECUTABLE)

    @property
    def digest(self) -> str | None:
        d = self._digest
        return d.hex() if isinstance(d, bytes) else d

    @property
    def target(self) -> str | None:
        extra = self._extra
        return extra if extra.__class__ is str else None

    @property
    def render(self) -> tuple[Callable[[], bytes], Hashable] | None:
        extra = self._extra
        return extra if extra.__class__ is tuple else None

    @property
    def size(self) -> int:
        if self._size < 0 and self.render is not None:
            self._render()
        return self._size

    @size.setter
    def size(self, value: int) -> None:
        self._size = value

    @property
    def data(self) -> bytes | None:
        extra = self._extra
        if extra.__class__ is bytes:
            return extra
        return self._render() if extra.__class__ is tuple else None

    def _render(self) -> bytes:
        render = self.render
        assert render is not None
        data = render[0]()
        self._size = len(data)
        return data

    def same_as(self, other: LowerEntry) -> bool:
        if not (isinstance(other, LowerFile) and other._kind == self._kind and other._digest == self._digest
                and other.target == self.target):
            return False
        mine, theirs = self.render, other.render
        if mine is not None and theirs is not None and mine[1] == theirs[1]:
            return True  # no need to render either
        return other.data == self.data

    def __repr__(self) -> str:
        return f"LowerFile(kind={self.kind}, digest={self.digest}, size={self._size})"


_EXECUTABLE = 0x100  # in LowerFile._kind, above the kind
_KIND_MASK = 0xFF


def _raw_digest(digest: str) -> bytes | str:
    """A sha256 as its raw bytes; anything else (never from the store) stays as it is."""
    if len(digest) == 64:
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            return digest
        if raw.hex() == digest:  # lowercase, as the store names objects: the property gives it back
            return raw
    return digest


class LowerDir:
    """A directory below. One loaded from a selection's index (``from_index``, ``viewindex.py``) turns
    its entries into ``LowerFile``/``LowerDir`` objects on first use, so a mount builds only the
    directories it visits."""

    __slots__ = ("_at", "_children", "_index")

    def __init__(self) -> None:
        self._children: dict[str, LowerEntry] | None = {}
        self._index: ViewIndex | None = None
        self._at = 0

    @classmethod
    def from_index(cls, index: ViewIndex, at: int) -> LowerDir:
        d = cls.__new__(cls)
        d._children = None
        d._index = index
        d._at = at
        return d

    @property
    def children(self) -> dict[str, LowerEntry]:
        children = self._children
        if children is None:
            index = self._index
            assert index is not None
            children = {}
            for name, kind, flags, value, digest, target in index.entries(self._at):
                if kind == DIR_KIND:
                    children[name] = LowerDir.from_index(index, value)
                elif kind == SYMLINK:
                    children[name] = LowerFile(SYMLINK, None, value, target=target)
                else:
                    children[name] = LowerFile(kind, digest, value, executable=bool(flags & 1))
            self._children = children
            self._index = None  # the open index goes with the last directory not yet built
        return children

    def to_raw(self) -> dict[str, Any]:
        """Nested dicts and tuples, what ``viewindex.encode`` stores; INLINE files are left out."""
        out: dict[str, Any] = {}
        for name, entry in self.children.items():
            if isinstance(entry, LowerDir):
                out[name] = entry.to_raw()
            elif entry.kind != INLINE:
                out[name] = (entry.kind, entry.digest, entry._size, entry.executable, entry.target)
        return out

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


def available_bytecode(store_root: Path | Sequence[Path], cache_tag: str) -> set[str]:
    """Digests of the .py objects the store (each of its layers) holds bytecode for: one scandir per
    fan-out directory, far cheaper than one stat per .py file of a large venv."""
    digests: set[str] = set()
    for root in [store_root] if isinstance(store_root, Path) else store_root:
        base = root / "bytecode" / cache_tag
        try:
            subdirs = list(os.scandir(base))
        except FileNotFoundError:
            continue
        for sub in subdirs:
            try:
                with os.scandir(sub.path) as it:
                    digests.update(e.name[:-4] for e in it if e.name.endswith(".pyc"))
            except NotADirectoryError:
                continue
    return digests


def build_view(records: Iterable[DistRecord], *, cache_tag: str | None, store_root: Path | Sequence[Path] | None = None,
               record_files: dict[str, bytes] | None = None,
               record_renderers: dict[str, tuple[Callable[[], bytes], Hashable]] | None = None) -> View:
    """The lower tree of a selection: site-packages files, bytecode where the store has it, and the
    RECORD files given in ``record_files`` (dist-info name -> rendered bytes) or ``record_renderers``
    (dist-info name -> (renderer, token), rendered on first use)."""
    view = View(cache_tag=cache_tag)
    pycs = available_bytecode(store_root, cache_tag) if (store_root is not None and cache_tag) else set()
    # Directory path -> its LowerDir: each file costs one dict lookup, not a walk from the root (mount
    # time is spent here, 20,000 files and as many .pyc for a large venv).
    dirs: dict[str, LowerDir] = {"": view.root}
    pyc_suffix = f".{cache_tag}.pyc"
    for record in records:
        for f in record.site_files():
            path = f.path
            if (not path or "\\" in path or "\x00" in path or path[0] == "/" or path[1:2] == ":"
                    or "//" in path or path[-1] == "/" or "." in (parts := path.split("/")) or ".." in parts):
                try:
                    path = safe_relpath(path)
                except UnsafePath:
                    log.error("%s: unsafe path %r left out of the view", record.key, f.path)
                    continue
            dirpath, _, name = path.rpartition("/")
            if name.startswith(".wh."):
                log.error("%s: %r uses the whiteout prefix; left out of the view", record.key, f.path)
                continue
            if f.symlink is not None:
                entry = LowerFile(SYMLINK, None, len(os.fsencode(f.symlink)), target=f.symlink)
            else:
                entry = LowerFile(OBJECT, f.digest, f.size, executable=f.executable)
            d = dirs.get(dirpath)
            if d is None:
                d = _makedirs(view, dirs, dirpath)
            if d is None or isinstance(d.children.get(name), LowerDir):
                log.error("%s: %s conflicts with a directory of another distribution", record.key, path)
                continue
            # Later distributions in the selection win, as a later install overwrites an earlier one.
            d.children[name] = entry
            if cache_tag and name.endswith(".py"):
                pycdir = f"{dirpath}/__pycache__" if dirpath else "__pycache__"
                pycname = name[:-3] + pyc_suffix
                if f.digest in pycs:
                    pd = dirs.get(pycdir)
                    if pd is None:
                        pd = _makedirs(view, dirs, pycdir)
                    if pd is not None and not isinstance(pd.children.get(pycname), LowerDir):
                        pd.children[pycname] = LowerFile(PYC, f.digest, -1)
                else:
                    # A .pyc of an earlier distribution's file at this path would carry the same
                    # mtime and maybe the same size: it must not outlive its source.
                    pd = dirs.get(pycdir)
                    if pd is not None and isinstance(pd.children.get(pycname), LowerFile):
                        del pd.children[pycname]
        if record_files and record.dist_info in record_files:
            data = record_files[record.dist_info]
            view._insert(f"{record.dist_info}/RECORD", LowerFile(INLINE, None, len(data), data=data))
        elif record_renderers and record.dist_info in record_renderers:
            lazy = LowerFile(INLINE, None, -1, render=record_renderers[record.dist_info])
            view._insert(f"{record.dist_info}/RECORD", lazy)
    return view


def _makedirs(view: View, dirs: dict[str, LowerDir], dirpath: str) -> LowerDir | None:
    """The LowerDir at ``dirpath``, created with its parents; None if a file is in the way."""
    parent, _, name = dirpath.rpartition("/")
    pd = dirs.get(parent)
    if pd is None:
        pd = _makedirs(view, dirs, parent)
        if pd is None:
            return None
    child = pd.children.get(name)
    if child is None:
        child = pd.children[name] = LowerDir()
    elif not isinstance(child, LowerDir):
        return None
    dirs[dirpath] = child
    return child


VIEW_CACHE_FORMAT = 3


def view_cache_key(state: VenvState) -> str:
    """Names the cached tree of ``state``'s selection in the store (``Store.view_cache_path``).

    A dist key names one immutable build, so the selection and the interpreter's cache tag decide the
    tree (apart from which .pyc the store has: see ``missing`` in ``view_for``); the venv does not, so
    every venv of one selection shares one cached tree."""
    cache_tag = state.interpreter.cache_tag if state.interpreter is not None else ""
    text = "\0".join([str(VIEW_CACHE_FORMAT), cache_tag or "", *state.selection])
    return hashlib.sha256(text.encode()).hexdigest()


def _load_cached_view(path: Path, key: str, store: Store, cache_tag: str | None) -> tuple[View, dict[str, str]] | None:
    try:
        index = ViewIndex(path, key)
    except (OSError, BadIndex):
        return None
    missing = index.missing
    if missing and cache_tag:
        # .py files that had no bytecode when the view was built: compiled since, the view must show it.
        if len(missing) <= 64:
            if any(store.bytecode_path(cache_tag, d).exists() for d in missing):
                return None
        elif not available_bytecode(store.layers, cache_tag).isdisjoint(missing):
            return None
    return View(LowerDir.from_index(index, 0), cache_tag=cache_tag), index.records


def indexed_dist_infos(store: Store, state: VenvState) -> dict[str, str] | None:
    """dist-info directory -> store key for ``state``'s selection, from the selection's cached index
    (None when the store has none): what reading each record would tell, without reading them. The
    scientific set's records are megabytes of JSON; parsed in a mount's daemon, their freed memory
    stayed with it."""
    key = view_cache_key(state)
    try:
        return ViewIndex(store.view_cache_path(key), key).records
    except (OSError, BadIndex):
        return None


def view_for(venv: Venv, store: Store, state: VenvState, *, cache: bool = True) -> View:
    """The view of ``venv``'s selection, with a RECORD for each distribution: the store keeps no RECORD
    (installers rewrite it), yet pip reads it to uninstall. RECORDs are rendered on first use: rendering
    them all took most of the time a mount took, and pip reads one only to uninstall that distribution.

    The tree is cached in the store by selection (``cache``), shared by every venv of that selection:
    loading it reads no distribution record and builds a directory's entries only when it is first
    visited, which takes a 20,000-file venv's mount from ~0.2 s of building to a few milliseconds."""
    interp = state.interpreter
    cache_tag = interp.cache_tag if interp is not None else None
    key = view_cache_key(state)
    cache_path = store.view_cache_path(key)
    # Where venvfs before 0.2 kept it: one copy per venv, up to a megabyte each.
    (venv.state_dir / "view.marshal").unlink(missing_ok=True)
    if cache:
        loaded = _load_cached_view(cache_path, key, store, cache_tag)
        if loaded is not None:
            return _with_records(venv, store, state, *loaded)
    records = [store.get_dist(key) for key in state.selection]
    view = _view_for_records(venv, store, state, records, cache_tag)
    if cache:
        log.info("built the view of %d distribution(s) from their records", len(records))
        pycs = available_bytecode(store.layers, cache_tag) if cache_tag else set()
        missing = sorted({f.digest for r in records for f in r.site_files() if f.symlink is None
                          and f.digest is not None and f.path.endswith(".py") and f.digest not in pycs}
                         ) if cache_tag else []
        try:
            data = encode(view.root.to_raw(), key=key, missing=missing,
                          records={r.dist_info: k for k, r in zip(state.selection, records, strict=True)})
            atomic_write_bytes(cache_path, data, durable=False)
            # What was just written, served as a cached view is: only the directories visited are
            # built. The tree built from the records (every entry of the selection, ~6 MB for the
            # scientific set) is freed, and a mount's daemon that built it would otherwise keep it
            # for its lifetime, on top of the nodes of what the kernel visits.
            index = ViewIndex(cache_path, key)
            view = _with_records(venv, store, state, View(LowerDir.from_index(index, 0), cache_tag=cache_tag),
                                 index.records)
        except (OSError, ValueError) as e:  # (BadIndex is a ValueError)
            log.warning("cannot cache the view in %s: %s", cache_path, e)
    return view


def _with_records(venv: Venv, store: Store, state: VenvState, view: View, dist_infos: dict[str, str]) -> View:
    """A view loaded from its cached index, with each distribution's RECORD (rendered on first use)."""
    interp = state.interpreter
    if interp is not None:
        for dist_info, dist_key in dist_infos.items():
            render = _lazy_renderer(venv, store, interp, dist_key)
            view._insert(f"{dist_info}/RECORD",
                         LowerFile(INLINE, None, -1, render=(render, (dist_key, str(venv.root), view.cache_tag))))
    return view


def cache_view(venv: Venv, store: Store, state: VenvState, *, apart: bool = False) -> None:
    """Make sure the store holds a valid index of ``state``'s selection, built here if need be:
    called before a daemon starts or reloads (``mountinfo.prepare_view``), so that the daemon maps
    the index instead of building the whole tree from the records. A build leaves its freed memory
    with the process that made it (Python keeps an arena while any object in it lives), and a
    daemon lives as long as its mount: built there, it left ~11 MB more unique memory in the daemon
    (measured for the scientific set). ``apart``: build in a child process, for a caller that forks
    the daemon (or what forks it): the daemon would inherit that freed memory, and copy each page
    of it that its own allocations reuse."""
    cache_tag = state.interpreter.cache_tag if state.interpreter is not None else None
    key = view_cache_key(state)
    if _load_cached_view(store.view_cache_path(key), key, store, cache_tag) is not None:
        return
    if not apart:
        view_for(venv, store, state)
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            view_for(venv, store, state)
            code = 0
        except BaseException as e:  # the daemon builds what is missing itself
            log.info("could not index the selection of %s: %s", venv.root, e)
        finally:
            os._exit(code)
    with contextlib.suppress(ChildProcessError):  # a caller that ignores SIGCHLD: reaped once it exited
        os.waitpid(pid, 0)


def _lazy_renderer(venv: Venv, store: Store, info: Any, dist_key: str) -> Callable[[], bytes]:
    def render() -> bytes:
        from venvfs.venv.materialize import render_record

        return render_record(venv, info, store.get_dist(dist_key), store=store)
    return render


def _view_for_records(venv: Venv, store: Store, state: VenvState, records: list[DistRecord],
                      cache_tag: str | None) -> View:
    interp = state.interpreter
    renderers: dict[str, tuple[Callable[[], bytes], Hashable]] = {}
    if interp is not None:
        info = interp

        def renderer(record: DistRecord) -> Callable[[], bytes]:
            def render() -> bytes:
                from venvfs.venv.materialize import render_record

                return render_record(venv, info, record, store=store)
            return render

        # The token: the same build in the same venv for the same interpreter renders the same RECORD.
        # (The selection's keys, not ``DistRecord.key``, which hashes the whole manifest.)
        renderers = {r.dist_info: (renderer(r), (key, str(venv.root), info.cache_tag))
                     for key, r in zip(state.selection, records, strict=True)}
    return build_view(records, cache_tag=cache_tag, store_root=store.layers, record_renderers=renderers)
