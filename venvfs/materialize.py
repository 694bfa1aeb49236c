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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from installer.scripts import Script

from venvfs.bytecode import compilable, pyc_relpath
from venvfs.errors import VenvfsError
from venvfs.fsutil import atomic_write_bytes
from venvfs.linkmode import Linker, LinkMode
from venvfs.progress import Progress
from venvfs.records import REWRITTEN_METADATA, DistRecord, StoredFile
from venvfs.store import SOURCE_EPOCH, Store
from venvfs.venv import InterpreterInfo, Venv, VenvState

log = logging.getLogger(__name__)

SHEBANG_PLACEHOLDER = b"#!python"


@dataclass
class MaterializeReport:
    placed: int = 0
    unchanged: int = 0
    scripts: int = 0


def destination(venv: Venv, interp: InterpreterInfo, record: DistRecord, f: StoredFile) -> Path:
    """Where a stored file lives in ``venv`` (the wheel spec's scheme paths for a POSIX venv)."""
    if f.in_site_packages:
        return venv.site_packages / f.path
    if f.scheme == "scripts":
        return venv.bin_dir / f.path
    if f.scheme == "headers":
        major, minor = interp.python_version
        return venv.root / "include" / "site" / f"python{major}.{minor}" / record.name / f.path
    return venv.root / f.path


def record_relpath(venv: Venv, path: Path) -> str:
    """A path as RECORD spells it: relative to site-packages, with ``../`` for other schemes."""
    return Path(os.path.relpath(path, venv.site_packages)).as_posix()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def entry_point_scripts(venv: Venv, record: DistRecord) -> list[tuple[str, bytes]]:
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
    for f in record.files:
        rel = record_relpath(venv, destination(venv, interp, record, f))
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
        rel = record_relpath(venv, venv.bin_dir / name)
        rows.append(f"{rel},{_record_hash(hashlib.sha256(data).digest())},{len(data)}")
    rows.append(f"{record.dist_info}/RECORD,,")
    return ("\n".join(sorted(rows)) + "\n").encode()


def _already_placed(dst: Path, obj: Path, f: StoredFile) -> bool:
    try:
        st = dst.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    obj_st = obj.stat()
    if (st.st_ino, st.st_dev) == (obj_st.st_ino, obj_st.st_dev):
        return True
    # Placed copies and reflinks get SOURCE_EPOCH as mtime; any edit since moved it. One with other
    # names is no copy of ours: a tool's hardlink (uv's cache keeps wheels' 1980 mtimes), to be replaced.
    return st.st_size == f.size and int(st.st_mtime) == SOURCE_EPOCH and st.st_nlink == 1


def _same_inode(a: Path, b: Path) -> bool:
    sa, sb = a.stat(), b.stat()
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


def _other_mode(linker: Linker, dst: Path, obj: Path) -> bool:
    """Whether a correctly placed ``dst`` must still be placed again because another mode is asked for.

    A hardlink is recognisable (the object's inode); a reflink and a copy are not, so a forced
    reflink places every file that is not a hardlink again (cheap where reflinks work, and a clear
    failure where they do not).
    """
    same = _same_inode(dst, obj)
    if linker.requested == LinkMode.HARDLINK:
        return not same
    if linker.requested == LinkMode.REFLINK:
        return True
    return same and (linker.requested == LinkMode.COPY or not linker.allow_hardlink)


def _place_symlink(dst: Path, target: str) -> None:
    tmp = dst.parent / f".{dst.name}.venvfs.tmp"  # fixed, as in Linker.place: a rerun clears a killed run's
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, dst)


def materialize(venv: Venv, store: Store, state: VenvState, linker: Linker, *, site_packages: bool = True,
                outside_site_packages: bool = True, records: Iterable[DistRecord] | None = None,
                progress: Progress | None = None) -> MaterializeReport:
    """Make ``venv``'s files match its selection (or ``records``); files already right are kept.

    With ``site_packages=False`` only the schemes outside site-packages are written (scripts,
    headers, data): the mounted layout serves site-packages from the FUSE view. Adopt passes
    ``outside_site_packages=False``: those files are already the venv's own real files.
    """
    assert state.interpreter is not None, "probe the interpreter before materializing"
    interp = state.interpreter
    report = MaterializeReport()
    selected = list(records) if records is not None else [store.get_dist(k) for k in state.selection]
    own_progress = progress or Progress("linking files", sum(len(r.files) for r in selected))
    for record in selected:
        for f in record.files:
            own_progress.advance()
            if (f.in_site_packages and not site_packages) or (
                not f.in_site_packages and not outside_site_packages
            ):
                continue
            dst = destination(venv, interp, record, f)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if f.symlink is not None:
                _place_symlink(dst, f.symlink)
                report.placed += 1
                continue
            assert f.digest is not None
            obj = store.object_path(f.digest, f.executable)
            mode_bits = 0o755 if f.executable else 0o644
            script = _venv_script(venv, obj.read_bytes()) if f.scheme == "scripts" else None
            if script is not None:
                atomic_write_bytes(dst, script, mode=0o755, durable=False)
                report.scripts += 1
                continue
            if posixpath.basename(f.path) in REWRITTEN_METADATA and posixpath.dirname(f.path) == record.dist_info:
                # Installers rewrite these in place: a link would carry the rewrite into the store.
                if not _already_placed(dst, obj, f) or _same_inode(dst, obj):
                    atomic_write_bytes(dst, obj.read_bytes(), mode=0o644, durable=False)
                    os.utime(dst, (SOURCE_EPOCH, SOURCE_EPOCH))
                    report.placed += 1
                continue
            if _already_placed(dst, obj, f) and not _other_mode(linker, dst, obj):
                report.unchanged += 1
            else:
                linker.place(obj, dst, mode_bits=mode_bits)
                report.placed += 1
            if f.in_site_packages and compilable(f.path):
                pyc = store.bytecode_path(interp.cache_tag, f.digest)
                if pyc.exists():
                    pyc_dst = venv.site_packages / pyc_relpath(f.path, interp.cache_tag)
                    pyc_dst.parent.mkdir(exist_ok=True)
                    if (not _already_placed(pyc_dst, pyc, StoredFile("", "purelib", None, pyc.stat().st_size))
                            or _other_mode(linker, pyc_dst, pyc)):
                        linker.place(pyc, pyc_dst, mode_bits=0o644)
        if outside_site_packages:
            for name, data in entry_point_scripts(venv, record):
                atomic_write_bytes(venv.bin_dir / name, data, mode=0o755, durable=False)
                report.scripts += 1
        if site_packages:
            record_file = venv.site_packages / record.dist_info / "RECORD"
            if not record_file.exists():
                atomic_write_bytes(record_file, render_record(venv, interp, record, store=store), durable=False)
    if progress is None:
        own_progress.close()
    return report


def remove_files(venv: Venv, interp: InterpreterInfo, record: DistRecord, *, site_packages: bool = True) -> int:
    """Delete what materialize placed for ``record`` (and its RECORD and bytecode); returns files removed."""
    removed = 0
    dirs: set[Path] = set()
    paths = [destination(venv, interp, record, f) for f in record.files
             if site_packages or not f.in_site_packages]
    if site_packages:
        paths += [venv.site_packages / pyc_relpath(f.path, interp.cache_tag)
                  for f in record.site_files() if compilable(f.path)]
        paths.append(venv.site_packages / record.dist_info / "RECORD")
    paths += [venv.bin_dir / name for name, _ in entry_point_scripts(venv, record)]
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            continue
        dirs.add(path.parent)
    # Remove directories left empty, deepest first, never above site-packages or the venv root.
    stops = {venv.site_packages, venv.root, venv.bin_dir}
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        while d not in stops and venv.root in d.parents:
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent
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
    for key in state.selection:
        try:
            record = store.get_dist(key)
        except VenvfsError:
            continue
        for f in record.files:
            if f.in_site_packages or f.digest is None or f.symlink is not None:
                continue
            dst = destination(venv, state.interpreter, record, f)
            obj = store.object_path(f.digest, f.executable)
            try:
                if not _same_inode(dst, obj):
                    continue
            except FileNotFoundError:
                continue
            linker.place(obj, dst, mode_bits=0o755 if f.executable else 0o644)
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


def store_inodes(store: Store, records: Iterable[DistRecord], cache_tag: str | None) -> set[tuple[int, int]]:
    """The (inode, device) of every object of ``records``, and of their bytecode for ``cache_tag``."""
    found: set[tuple[int, int]] = set()
    for record in records:
        for f in record.files:
            if f.digest is None:
                continue
            paths = [store.object_path(f.digest, f.executable)]
            if cache_tag is not None and compilable(f.path):
                paths.append(store.bytecode_path(cache_tag, f.digest))
            for path in paths:
                with contextlib.suppress(OSError):
                    st = path.stat()
                    found.add((st.st_ino, st.st_dev))
    return found
