"""Convert a venv between the materialized layout (real files in site-packages) and the mounted one
(site-packages empty under the mount, the venv's own files in the upper layer).

Never loses a file: content identical to the store is deleted (the view serves it), everything else
is moved by rename. Both directions are rerunnable after a crash at any point: a marker file in
``.venvfs/`` records which phase was reached, and each phase is idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from venvfs.fsutil import atomic_write_bytes, fsync_dir
from venvfs.store import Store
from venvfs.upper import OPAQUE, WHITEOUT_PREFIX, whiteout_name
from venvfs.venv import Venv, VenvState
from venvfs.view import INLINE, OBJECT, PYC, SYMLINK, LowerDir, LowerEntry, View, view_for

if TYPE_CHECKING:
    from venvfs.linkmode import Linker

AUTOMOUNT_PTH = "_venvfs_automount.pth"
TO_MOUNTED = "converting-to-mounted"
TO_MATERIALIZED = "converting-to-materialized"


def _same_content(path: Path, st: os.stat_result, digest: str, size: int, executable: bool,
                  store: Store) -> bool:
    if not stat.S_ISREG(st.st_mode) or st.st_size != size or bool(st.st_mode & 0o100) != executable:
        return False
    with contextlib.suppress(OSError):
        ost = store.object_path(digest, executable).stat()
        if (ost.st_ino, ost.st_dev) == (st.st_ino, st.st_dev):
            return True
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest() == digest


def served_by_view(path: Path, entry: LowerEntry | None, store: Store) -> bool:
    """Whether the file at ``path`` is exactly what the view shows there (so it may be deleted)."""
    if entry is None or isinstance(entry, LowerDir):
        return False
    st = path.lstat()
    if entry.kind == SYMLINK:
        return stat.S_ISLNK(st.st_mode) and os.readlink(path) == entry.target
    if entry.kind == PYC:
        # A cache: the store's .pyc is valid for the store's source, whatever this one was.
        return stat.S_ISREG(st.st_mode)
    if entry.kind == INLINE:
        return stat.S_ISREG(st.st_mode) and st.st_size == entry.size and path.read_bytes() == entry.data
    assert entry.kind == OBJECT and entry.digest is not None
    return _same_content(path, st, entry.digest, entry.size, entry.executable, store)


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_dir() and not dst.is_symlink() and not (src.is_dir() and not src.is_symlink()):
        shutil.rmtree(dst)
    os.replace(src, dst)


def to_mounted(venv: Venv, store: Store, state: VenvState, view: View | None = None) -> None:
    """Empty site-packages into the upper layer (caller holds the venv lock, nothing is mounted)."""
    sp = venv.site_packages
    upper = venv.upper_dir
    upper.mkdir(parents=True, exist_ok=True)
    view = view if view is not None else view_for(venv, store, state)
    marker = venv.state_dir / TO_MOUNTED
    if not marker.exists():
        # Phase 1, before anything is deleted: what the user removed from the store's files must
        # stay removed once the view shows them again.
        hidden: list[str] = []
        for rel, entry in view.walk():
            if not isinstance(entry, LowerDir) and entry.kind == PYC:
                continue  # a cache the store provides; hiding it would only cost a recompile
            if any(rel.startswith(h + "/") for h in hidden):
                continue
            if not os.path.lexists(sp / rel):
                parent, _, name = rel.rpartition("/")
                (upper / parent).mkdir(parents=True, exist_ok=True)
                (upper / parent / whiteout_name(name)).touch()
                hidden.append(rel)
        atomic_write_bytes(marker, b"whiteouts written\n")
    # Phase 2: deepest first, delete what the view serves and move the rest to the upper layer.
    for dirpath, dirnames, filenames in os.walk(sp, topdown=False):
        d = Path(dirpath)
        rel_dir = d.relative_to(sp).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        for name in [*filenames, *dirnames]:
            path = d / name
            rel = prefix + name
            if rel == AUTOMOUNT_PTH:
                continue  # the automount hook: stays in the underlying directory, hidden by the mount
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if not isinstance(view.lookup(rel), LowerDir):
                    (upper / rel).mkdir(parents=True, exist_ok=True)  # the venv's own (empty) directory
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            if name.startswith(WHITEOUT_PREFIX):
                _move(path, upper / prefix / (".venvfs-renamed" + name))  # cannot be shown under its name
                continue
            if served_by_view(path, view.lookup(rel), store):
                path.unlink()
            else:
                _move(path, upper / rel)
    fsync_dir(sp)
    state.layout = "mounted"
    venv.write_state(state)
    marker.unlink(missing_ok=True)


def to_materialized(venv: Venv, store: Store, state: VenvState, linker: Linker | None = None) -> None:
    """Write the selection as real files and move the upper layer over them (nothing is mounted)."""
    from venvfs import linkmode
    from venvfs.materialize import materialize

    sp = venv.site_packages
    upper = venv.upper_dir
    marker = venv.state_dir / TO_MATERIALIZED
    if not marker.exists():
        if linker is None:
            mode = linkmode.LinkMode(state.link_mode) if state.link_mode else linkmode.LinkMode.AUTO
            linker = linkmode.Linker(mode)
        materialize(venv, store, state, linker, site_packages=True, outside_site_packages=False)
        if linker.used is not None:
            state.link_mode = linker.used.value
        # From here on site-packages holds moved user files: materializing again could overwrite them.
        atomic_write_bytes(marker, b"applying the upper layer\n")
    if upper.is_dir():
        _apply_upper(upper, sp, str(store.root / "bytecode") + os.sep)
    state.layout = "materialized"
    venv.write_state(state)
    marker.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _apply_upper(udir: Path, sdir: Path, store_bytecode: str) -> None:
    entries = sorted(os.listdir(udir))
    # Order within a directory makes a rerun safe: whiteouts and the opaque marker are consumed
    # (and deleted) before any user file moves into place, so they can never delete a moved file.
    for name in entries:
        if name.startswith(WHITEOUT_PREFIX) and name != OPAQUE:
            _remove(sdir / name[len(WHITEOUT_PREFIX):])
            (udir / name).unlink()
    if OPAQUE in entries:
        keep = {n for n in entries if not n.startswith(WHITEOUT_PREFIX)}
        if sdir.is_dir():
            for name in os.listdir(sdir):
                if name not in keep:
                    _remove(sdir / name)
        (udir / OPAQUE).unlink()
    for name in entries:
        if name.startswith(WHITEOUT_PREFIX):
            continue
        src = udir / name
        dst = sdir / name
        if src.is_dir() and not src.is_symlink():
            if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
                dst.unlink()
            if not dst.exists():
                dst.mkdir()
            shutil.copymode(src, dst)
            _apply_upper(src, dst, store_bytecode)
            src.rmdir()
        elif src.is_symlink() and os.readlink(src).startswith(store_bytecode):
            # A store .pyc the mount showed as a symlink, copied up by a rename: a venv of real files
            # gets a copy of its own, never a link into the store.
            _copy_out_of_store(src, dst)
        else:
            _move(src, dst)


def _copy_out_of_store(link: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".venvfs-tmp")
    try:
        shutil.copyfile(link, tmp)
    except FileNotFoundError:
        link.unlink()  # the store no longer holds it: a cache file, which Python writes again
        return
    os.replace(tmp, dst)
    link.unlink()
