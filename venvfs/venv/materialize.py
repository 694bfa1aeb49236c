"""Write a venv's selection as real files: site-packages, scripts, headers and data.

Used by adopt (to give duplicate bytes back to the disk), by the fallback where FUSE is unavailable,
by ``venvfs add`` in the materialized layout, and by eject (with hardlinks forbidden).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import posixpath
import stat
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from venvfs.errors import InvalidWheel, VenvfsError
from venvfs.progress import Progress
from venvfs.store.bytecode import compilable, pyc_relpath
from venvfs.store.limits import NAME_MAX, PATH_MAX
from venvfs.store.records import INSTALL_METADATA, DistRecord, StoredFile, is_install_metadata
from venvfs.store.store import SOURCE_EPOCH, Store
from venvfs.venv.linkmode import DirWalker, Linker, LinkMode, UnsafeDestination, name_in_error
from venvfs.venv.venv import InterpreterInfo, Venv, VenvState

log = logging.getLogger(__name__)

SHEBANG_PLACEHOLDER = b"#!python"


@dataclass
class MaterializeReport:
    placed: int = 0
    unchanged: int = 0
    scripts: int = 0
    store_inodes: int = 0  # files (bytecode too) that are now a store object's own inode: hardlinks


def placement(venv: Venv, interp: InterpreterInfo, record: DistRecord, f: StoredFile) -> tuple[Path, str]:
    """The directory a stored file is placed below (site-packages, bin or the venv) and its path there
    (the wheel spec's scheme paths for a POSIX venv)."""
    if f.in_site_packages:
        return venv.site_packages, f.path
    if f.scheme == "scripts":
        return venv.bin_dir, f.path
    if f.scheme == "headers":
        major, minor = interp.python_version
        return venv.root, f"include/site/python{major}.{minor}/{record.name}/{f.path}"
    return venv.root, f.path


def destination(venv: Venv, interp: InterpreterInfo, record: DistRecord, f: StoredFile) -> Path:
    """Where a stored file lives in ``venv``."""
    root, rel = placement(venv, interp, record, f)
    return root / rel


def record_relpath(venv: Venv, path: Path) -> str:
    """A path as RECORD spells it: relative to site-packages, with ``../`` for other schemes."""
    return Path(os.path.relpath(path, venv.site_packages)).as_posix()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def entry_point_scripts(venv: Venv, record: DistRecord) -> list[tuple[str, bytes]]:
    # Imported here: installer brings the email package along, which every command that imports this
    # module for its checks (``mount`` of a mounted venv) would pay for without writing a script.
    from installer.scripts import Script

    scripts = []
    for ep in record.entry_points:
        name, data = Script(ep.name, ep.module, ep.attr, ep.section).generate(str(venv.python), "posix")
        scripts.append((name, data))
    return scripts


def _venv_script(venv: Venv, data: bytes) -> bytes | None:
    """A ``.data/scripts`` file as written into ``venv``: ``#!python`` becomes the venv's interpreter."""
    if data[: len(SHEBANG_PLACEHOLDER)] != SHEBANG_PLACEHOLDER:
        return None
    return b"#!" + os.fsencode(venv.python) + data[len(SHEBANG_PLACEHOLDER):]


def render_record(venv: Venv, interp: InterpreterInfo, record: DistRecord, *, store: Store | None = None) -> bytes:
    """The RECORD file of ``record`` as installed in ``venv`` (scripts and bytecode included).

    Pass ``store``: a script whose ``#!python`` shebang is rewritten for the venv is listed with the
    hash and size of the rewritten file only when its object can be read.
    """
    rows: list[str] = []
    # Strings, not ``record_relpath``'s Path: pathlib interns every part it parses, and a mount's daemon
    # renders the RECORD of each distribution a walk stats; growing the interned-string table it shares
    # with the mount service made a private copy of it (1 MB for the scientific set).
    site = os.fspath(venv.site_packages)
    for f in record.files:
        root, path = placement(venv, interp, record, f)
        rel = os.path.relpath(os.path.join(root, path), site)
        script = None
        if store is not None and f.scheme == "scripts" and f.digest is not None:
            script = _venv_script(venv, store.object_path(f.digest, f.executable).read_bytes())
        if f.digest is None:
            rows.append(f"{rel},,")
        elif script is not None:
            rows.append(f"{rel},{_record_hash(hashlib.sha256(script).digest())},{len(script)}")
        else:
            rows.append(f"{rel},{_record_hash(bytes.fromhex(f.digest))},{f.size}")
        if f.in_site_packages and compilable(f.path):
            rows.append(f"{pyc_relpath(rel, interp.cache_tag)},,")
    for name, data in entry_point_scripts(venv, record):
        rel = os.path.relpath(os.path.join(venv.bin_dir, name), site)
        rows.append(f"{rel},{_record_hash(hashlib.sha256(data).digest())},{len(data)}")
    rows.append(f"{record.dist_info}/RECORD,,")
    return ("\n".join(sorted(rows)) + "\n").encode()


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _placed_state(dir_fd: int, name: str, obj: str, size: int) -> tuple[bool, bool]:
    """Whether the venv's ``name`` already holds the stored file ``obj`` (of ``size`` bytes), and
    whether as the object's own inode (a hardlink)."""
    st = _lstat_at(dir_fd, name)
    if st is None or not stat.S_ISREG(st.st_mode):
        return False, False
    obj_st = os.stat(obj)
    if (st.st_ino, st.st_dev) == (obj_st.st_ino, obj_st.st_dev):
        return True, True
    # Placed copies and reflinks get SOURCE_EPOCH as mtime; any edit since moved it. One with other
    # names is no copy of ours: a tool's hardlink (uv's cache keeps wheels' 1980 mtimes), to be replaced.
    return st.st_size == size and int(st.st_mtime) == SOURCE_EPOCH and st.st_nlink == 1, False


def _same_inode(dir_fd: int, name: str, obj: str | Path) -> bool:
    sa, sb = _lstat_at(dir_fd, name), os.stat(obj)
    return sa is not None and (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


def _other_mode(linker: Linker, same_inode: bool) -> bool:
    """Whether a correctly placed file (``same_inode``: as the object's hardlink) must still be placed
    again because another mode is asked for.

    A hardlink is recognisable (the object's inode); a reflink and a copy are not, so a forced
    reflink places every file that is not a hardlink again (cheap where reflinks work, and a clear
    failure where they do not).
    """
    if linker.requested == LinkMode.HARDLINK:
        return not same_inode
    if linker.requested == LinkMode.REFLINK:
        return True
    return same_inode and (linker.requested == LinkMode.COPY or not linker.allow_hardlink)


def _tmp_name(name: str) -> str:
    # Fixed, as in Linker.place: a rerun clears a killed run's.
    return f".{name}.venvfs.tmp"


def _place_symlink(dir_fd: int, name: str, target: str) -> None:
    tmp = _tmp_name(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    os.symlink(target, tmp, dir_fd=dir_fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _write(dir_fd: int, name: str, data: bytes, mode: int, *, mtime: int | None = None) -> None:
    """A new file ``name`` in ``dir_fd`` holding ``data``, replacing what was there in one rename."""
    tmp = _tmp_name(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        os.fchmod(fd, mode)  # not the umask's
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
        os.close(fd)
        fd = -1
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


class _Dirs:
    """Directory fds below the venv's roots (site-packages, bin, the venv itself), reached without
    following a symlink: see ``linkmode.DirWalker``."""

    def __init__(self, *, create: bool = True) -> None:
        self.create = create
        self.walkers: dict[Path, DirWalker] = {}

    def __enter__(self) -> _Dirs:
        return self

    def __exit__(self, *exc: object) -> None:
        for walker in self.walkers.values():
            walker.close()

    def walker(self, root: Path) -> DirWalker:
        walker = self.walkers.get(root)
        if walker is None:
            walker = self.walkers[root] = DirWalker(root, create=self.create)
        return walker

    def parent(self, root: Path, rel: str) -> tuple[int, str]:
        """The fd of ``root/rel``'s directory (valid until the next call) and ``rel``'s last name."""
        parent, _, name = rel.rpartition("/")
        if name in ("", ".", ".."):
            raise UnsafeDestination(f"{root / rel}: not a plain file name")
        return self.walker(root).open(parent), name


def check_placeable(venv: Venv, interp: InterpreterInfo, records: Sequence[DistRecord]) -> None:
    """Refuse, before anything changes, a selection whose files cannot all be placed as real files.

    Checked across all of ``records`` together, because each wheel was checked alone at ingest: a
    file of one distribution below a symlink of another (which materializing would write through,
    out of the venv; the placing walk refuses it too, but only once other files have changed), and
    names or paths too long for the filesystem here, including the names venvfs derives (temporary
    names, bytecode): those stop a materialization half way with ENAMETOOLONG.
    """
    base = len(str(venv.root))
    # The longest names venvfs derives: a temporary name (+12 bytes), and for a .py file its bytecode
    # (``__pycache__/`` +12 in the path, ``.{cache_tag}.pyc`` for ``.py``) under a temporary name.
    name_room = 14 + len(interp.cache_tag or "")
    path_room = 12 + name_room
    prefixes: dict[Path, tuple[str, int]] = {}
    symlinks: dict[str, str] = {}
    paths: list[tuple[str, DistRecord]] = []
    # A path of n characters is at most 4n bytes in UTF-8 (surrogate escapes: 1 byte each); below
    # this many characters nothing about a file can be too long, without encoding or splitting it.
    short = (NAME_MAX - name_room) // 4
    with_paths = any(f.symlink is not None for record in records for f in record.files)
    for record in records:
        for f in record.files:
            root, rel = placement(venv, interp, record, f)
            prefix = prefixes.get(root)
            if prefix is None:
                prefix = prefixes[root] = (f"{root}/", len(os.fsencode(root)) + 1)
            long = len(rel) > short or prefix[1] + 4 * len(rel) + path_room >= PATH_MAX
            encoded = os.fsencode(rel) if long else b""
            # The exact check only where the quick bound says it might fail (it costs ~40 us a file).
            if long and (prefix[1] + len(encoded) + path_room >= PATH_MAX
                            or max(len(part) for part in encoded.split(b"/")) + name_room > NAME_MAX):
                problem = _length_problem(root, rel, interp.cache_tag if f.in_site_packages else None)
                if problem is not None:
                    raise InvalidWheel(f"{record.key}: {problem}; `venvfs remove {venv.root} {record.name}` "
                                       "deselects it")
            if not with_paths:
                continue  # no symlink in the selection: no file can be below one
            path = prefix[0] + rel
            if f.symlink is not None:
                symlinks[path] = record.key
            paths.append((path, record))
    if not symlinks:
        return
    for path, record in paths:
        i = path.rfind("/")
        while i > base:
            owner = symlinks.get(path[:i])
            if owner is not None:
                shown = _short(path[base + 1:])
                link = _short(path[base + 1:i])
                raise InvalidWheel(
                    f"{record.key} has {shown} below the symlink {link} of {owner}: placing it would follow "
                    f"the link (out of the venv, with a chain of them); these cannot be selected together")
            i = path.rfind("/", 0, i)


def _length_problem(root: Path, rel: str, cache_tag: str | None) -> str | None:
    """Why ``root/rel``, or a name venvfs derives from it, is too long to be created, else None."""
    placed = [rel]
    if cache_tag is not None and compilable(rel):
        placed.append(pyc_relpath(rel, cache_tag))
    for path in placed:
        head, _, name = path.rpartition("/")
        longest = f"{head}/{_tmp_name(name)}" if head else _tmp_name(name)
        for part in longest.split("/"):
            size = len(os.fsencode(part))
            if size > NAME_MAX:
                return f"{_short(rel)}: placing it needs a name of {size} bytes, more than the filesystem's {NAME_MAX}"
        full = len(os.fsencode(root / longest))
        if full >= PATH_MAX:
            return (f"{_short(rel)}: placing it in {root} needs a path of {full} bytes, more than the "
                    f"filesystem's {PATH_MAX - 1}")
    return None


def _short(rel: str) -> str:
    # The end of a path tells it from its neighbours; its start (lib/python3.X/...) rarely does.
    return repr(rel) if len(rel) <= 80 else repr("..." + rel[-60:])


def check_selection(venv: Venv, store: Store, state: VenvState) -> None:
    """``check_placeable`` for the venv's whole selection (records gc removed are skipped)."""
    interp = state.interpreter if state.interpreter is not None else venv.probe_interpreter()
    check_placeable(venv, interp, [store.get_dist(k) for k in state.selection if store.has_dist(k)])


def materialize(venv: Venv, store: Store, state: VenvState, linker: Linker, *, site_packages: bool = True,
                outside_site_packages: bool = True, records: Iterable[DistRecord] | None = None,
                progress: Progress | None = None, in_place: Container[tuple[str, str]] = ()) -> MaterializeReport:
    """Make ``venv``'s files match its selection (or ``records``); files already right are kept.

    With ``site_packages=False`` only the schemes outside site-packages are written (scripts,
    headers, data): the mounted layout serves site-packages from the FUSE view. Adopt passes
    ``outside_site_packages=False``: those files are already the venv's own real files, and as
    ``in_place`` the (dist-info, path) of the files whose inode the store took as it read them:
    they are the object's own inode already, counted as hardlinks without a look.
    """
    assert state.interpreter is not None, "probe the interpreter before materializing"
    interp = state.interpreter
    report = MaterializeReport()
    selected = list(records) if records is not None else [store.get_dist(k) for k in state.selection]
    own_progress = progress or Progress("linking files", sum(len(r.files) for r in selected))
    # No bytecode for this Python in any layer (a new store, compiling in the background): no stat
    # per module. One compiled after this look is placed by the next materialize, or by Python.
    bytecode = any(os.path.isdir(f"{layer}/bytecode/{interp.cache_tag}") for layer in store.layers)
    with _Dirs() as dirs:
        for record in selected:
            _materialize_record(venv, store, interp, linker, record, dirs, report, own_progress,
                                site_packages=site_packages, outside_site_packages=outside_site_packages,
                                in_place=in_place, bytecode=bytecode)
    if progress is None:
        own_progress.close()
    return report


def _materialize_record(venv: Venv, store: Store, interp: InterpreterInfo, linker: Linker, record: DistRecord,
                        dirs: _Dirs, report: MaterializeReport, progress: Progress, *, site_packages: bool,
                        outside_site_packages: bool, in_place: Container[tuple[str, str]] = (),
                        bytecode: bool = True) -> None:
    for f in record.files:
        progress.advance()
        if (f.in_site_packages and not site_packages) or (not f.in_site_packages and not outside_site_packages):
            continue
        if (record.dist_info, f.path) in in_place:
            # Taken by the store in this run: two stats would only confirm it.
            report.unchanged += 1
            report.store_inodes += 1
            if bytecode:
                _place_bytecode(venv, store, interp, linker, f, dirs, report)
            continue
        root, rel = placement(venv, interp, record, f)
        try:
            _place_file(venv, store, interp, linker, record, f, dirs, report, root, rel, bytecode=bytecode)
        except OSError as e:
            raise name_in_error(e, root / posixpath.dirname(rel), posixpath.basename(rel)) from None
    if outside_site_packages:
        for script_name, data in entry_point_scripts(venv, record):
            dir_fd, name = dirs.parent(venv.bin_dir, script_name)
            try:
                _write(dir_fd, name, data, 0o755)
            except OSError as e:
                raise name_in_error(e, venv.bin_dir, name) from None
            report.scripts += 1
    if site_packages:
        dir_fd, name = dirs.parent(venv.site_packages, f"{record.dist_info}/RECORD")
        if _lstat_at(dir_fd, name) is None:
            try:
                _write(dir_fd, name, render_record(venv, interp, record, store=store), 0o644)
            except OSError as e:
                raise name_in_error(e, venv.site_packages / record.dist_info, name) from None


def _place_file(venv: Venv, store: Store, interp: InterpreterInfo, linker: Linker, record: DistRecord,
                f: StoredFile, dirs: _Dirs, report: MaterializeReport, root: Path, rel: str, *,
                bytecode: bool = True) -> None:
    """One stored file (and its bytecode), relative to directory fds reached without following a
    symlink (``_Dirs``): a symlink placed by one distribution never carries another's files elsewhere."""
    dir_fd, name = dirs.parent(root, rel)
    if f.symlink is not None:
        _place_symlink(dir_fd, name, f.symlink)
        report.placed += 1
        return
    assert f.digest is not None
    obj = os.fspath(store.object_path(f.digest, f.executable))
    if store.lowers and not obj.startswith(f"{store.root}/"):
        # A lower store's object never gains a name in a venv: an in-place edit through a hardlink
        # would change the shared store under every node (where its filesystem is writable at all).
        linker = Linker(LinkMode.AUTO if linker.requested == LinkMode.HARDLINK else linker.requested,
                        allow_hardlink=False)
    mode_bits = 0o755 if f.executable else 0o644
    script = _venv_script(venv, Path(obj).read_bytes()) if f.scheme == "scripts" else None
    if script is not None:
        _write(dir_fd, name, script, 0o755)
        report.scripts += 1
        return
    if f.in_site_packages and is_install_metadata(record.dist_info, f.path):
        # Installers rewrite these in place: a link would carry the rewrite into the store. One the
        # venv holds already is what its installer wrote about this install (pip's, uv's), and stays.
        if _lstat_at(dir_fd, name) is None or _same_inode(dir_fd, name, obj):
            _write(dir_fd, name, Path(obj).read_bytes(), 0o644, mtime=SOURCE_EPOCH)
            report.placed += 1
        return
    _place_one(linker, report, obj, f.size, dir_fd, name, root, rel, mode_bits)
    if bytecode:
        _place_bytecode(venv, store, interp, linker, f, dirs, report)


def _place_bytecode(venv: Venv, store: Store, interp: InterpreterInfo, linker: Linker, f: StoredFile, dirs: _Dirs,
                    report: MaterializeReport) -> None:
    if f.in_site_packages and compilable(f.path) and f.digest is not None:
        pyc = os.fspath(store.bytecode_path(interp.cache_tag, f.digest))
        try:
            pyc_size = os.stat(pyc).st_size
        except FileNotFoundError:
            return  # not compiled (yet): Python compiles it into the venv's own __pycache__ meanwhile
        pyc_rel = pyc_relpath(f.path, interp.cache_tag)
        pyc_fd, pyc_name = dirs.parent(venv.site_packages, pyc_rel)
        _place_one(linker, report, pyc, pyc_size, pyc_fd, pyc_name, venv.site_packages, pyc_rel, 0o644, counted=False)


def _place_one(linker: Linker, report: MaterializeReport, obj: str, size: int, dir_fd: int, name: str, root: Path,
               rel: str, mode_bits: int, *, counted: bool = True) -> None:
    """Place the store file ``obj`` as ``name`` (``root/rel``, in ``dir_fd``) unless it is there
    already, by the mode asked for."""
    placed, same_inode = _placed_state(dir_fd, name, obj, size)
    if placed and not _other_mode(linker, same_inode):
        if counted:
            report.unchanged += 1
    else:
        where = root / posixpath.dirname(rel)
        same_inode = linker.place_at(obj, dir_fd, name, where, mode_bits=mode_bits) == LinkMode.HARDLINK
        if counted:
            report.placed += 1
    if same_inode:
        report.store_inodes += 1


def remove_files(venv: Venv, interp: InterpreterInfo, record: DistRecord, *, site_packages: bool = True) -> int:
    """Delete what materialize placed for ``record`` (and its RECORD and bytecode); returns files removed.

    Nothing is removed through a symlink (a file below one belongs to whatever the link leads to).
    """
    targets = [placement(venv, interp, record, f) for f in record.files if site_packages or not f.in_site_packages]
    if site_packages:
        targets += [(venv.site_packages, rel) for rel in site_leftovers(interp, record)]
    targets += [(venv.bin_dir, name) for name, _ in entry_point_scripts(venv, record)]
    return remove_paths(venv, targets)


def site_leftovers(interp: InterpreterInfo, record: DistRecord) -> list[str]:
    """What a venv may hold of ``record`` in site-packages besides its stored files: their bytecode,
    its RECORD, and what an installer wrote about the install (pip's ``REQUESTED``, ``direct_url.json``:
    the venv's own files, which a store record does not list). A plain uninstall leaves none of them."""
    found = [pyc_relpath(f.path, interp.cache_tag) for f in record.site_files() if compilable(f.path)]
    found += [f"{record.dist_info}/{name}" for name in sorted(INSTALL_METADATA)]
    return found


def remove_paths(venv: Venv, targets: Sequence[tuple[Path, str]], *, tidy: bool = False) -> int:
    """Unlink each ``root/rel`` (a root: site-packages, bin or the venv), then the directories that
    leaves empty, never a root; returns the files removed. Nothing is removed through a symlink.
    ``tidy``: the directories of targets already gone too, where they are empty."""
    removed = 0
    emptied: set[tuple[Path, str]] = {(root, posixpath.dirname(rel)) for root, rel in targets} if tidy else set()
    with _Dirs(create=False) as dirs:
        for root, rel in targets:
            try:
                dir_fd, name = dirs.parent(root, rel)
                os.unlink(name, dir_fd=dir_fd)
            except (FileNotFoundError, NotADirectoryError, UnsafeDestination):
                continue
            removed += 1
            emptied.add((root, posixpath.dirname(rel)))
        # Remove directories left empty, deepest first, never site-packages, bin or the venv root.
        stops = {(venv.root, os.path.relpath(d, venv.root)) for d in (venv.site_packages, venv.bin_dir)}
        for root, d in sorted(emptied, key=lambda rd: len((rd[0] / rd[1]).parts), reverse=True):
            while d and (root, d) not in stops:
                parent, _, name = d.rpartition("/")
                walker = dirs.walker(root)
                walker.forget(d)
                try:
                    os.rmdir(name, dir_fd=walker.open(parent))
                except (OSError, UnsafeDestination):
                    break
                d = parent
    return removed


def unshare_outside(venv: Venv, store: Store, state: VenvState) -> int:
    """Give every file of the selection outside site-packages (scripts, headers, data) that is a store
    object's own inode a reflink or copy of its own; returns how many were replaced.

    In the mounted layout those are the only real files the selection places, and tools write them in
    place (an editor, ``sed -i`` is fine, ``>>`` is not): through a hardlink that write would change
    the store. A venv materialized with hardlinks keeps them in bin/ until it switches to the mount.
    """
    if state.interpreter is None:
        return 0
    linker = Linker(LinkMode.AUTO, allow_hardlink=False)
    replaced = 0
    with _Dirs(create=False) as dirs:
        for key in state.selection:
            try:
                record = store.get_dist(key)
            except VenvfsError:
                continue
            for f in record.files:
                if f.in_site_packages or f.digest is None or f.symlink is not None:
                    continue
                root, rel = placement(venv, state.interpreter, record, f)
                obj = store.object_path(f.digest, f.executable)
                try:
                    dir_fd, name = dirs.parent(root, rel)
                    if not _same_inode(dir_fd, name, obj):
                        continue
                except (FileNotFoundError, NotADirectoryError, UnsafeDestination):
                    continue
                linker.place_at(obj, dir_fd, name, root / posixpath.dirname(rel),
                                mode_bits=0o755 if f.executable else 0o644)
                replaced += 1
    return replaced


def count_store_inodes(root: Path, store_inodes: set[tuple[int, int]], *, skip: Path | None) -> int:
    """Files under ``root`` that are store objects' own inodes. (``skip``: a mounted site-packages,
    whose files are the mount's inodes, never the store's; walking it would only cost requests.)"""
    found = 0
    skipped = {str(root / ".venvfs"), str(skip)}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped]
        for name in filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if st.st_nlink > 1 and (st.st_ino, st.st_dev) in store_inodes:
                    found += 1
    return found
