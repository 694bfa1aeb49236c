"""Convert a venv between the materialized layout (real files in site-packages) and the mounted one
(site-packages empty under the mount, the venv's own files in the upper layer).

Never loses a file: content identical to the store is deleted (the view serves it), everything else
is moved by rename. Both directions can be finished after a crash at any point: a marker file in
``.venvfs/`` (``TO_MOUNTED``, ``TO_MATERIALIZED``) exists from the first change to the venv until the
state names the new layout, and records which phase was reached; each phase is idempotent. A venv
with a marker is half switched (``import`` of a selected distribution may fail), so every command
that changes the venv calls ``resume`` first, ``venvfs status`` reports it (``interrupted``), and
the automount hooks treat an unfinished switch to the mounted layout as a reason to mount.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from venvfs.errors import VenvError
from venvfs.fsutil import atomic_write_bytes, crash_point, fsync_dir
from venvfs.store.store import Store
from venvfs.venv import automount
from venvfs.venv.mountinfo import mounted_fstype
from venvfs.venv.venv import Venv, VenvState

if TYPE_CHECKING:
    from venvfs.venv.linkmode import Linker
    from venvfs.venv.view import LowerEntry, View

# The switches themselves import the view, the materializer and the linker where they run: every
# `venvfs mount` of a mounted venv calls ``resume``, which in the usual case finds nothing to finish.

log = logging.getLogger(__name__)

AUTOMOUNT_PTH = "_venvfs_automount.pth"
TO_MOUNTED = "converting-to-mounted"
TO_MATERIALIZED = "converting-to-materialized"
# Marker contents: the phase reached. Older venvfs wrote only the second phase's text.
_HIDING = b"writing whiteouts\n"
_EMPTYING = b"whiteouts written\n"
_MATERIALIZING = b"materializing\n"
_APPLYING = b"applying the upper layer\n"


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
    from venvfs.venv.view import INLINE, OBJECT, PYC, SYMLINK, LowerDir

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
    from venvfs.venv.materialize import unshare_outside
    from venvfs.venv.upper import WHITEOUT_PREFIX, whiteout_name
    from venvfs.venv.view import PYC, LowerDir, view_for

    sp = venv.site_packages
    upper = venv.upper_dir
    upper.mkdir(parents=True, exist_ok=True)
    marker = venv.state_dir / TO_MOUNTED
    # A marker of a switch to the materialized layout that ended after its state was written.
    (venv.state_dir / TO_MATERIALIZED).unlink(missing_ok=True)
    if not state.selection and _phase(marker) is None and _holds_nothing(sp):
        # A venv just made (`venvfs create`): nothing to hide or move, so no step a crash could leave
        # half done; the state's one atomic write is the switch (the markers' writes were ~4 ms).
        _install_hooks(venv)
        state.layout = "mounted"
        venv.write_state(state)
        return
    view = view if view is not None else view_for(venv, store, state)
    if _phase(marker) in (None, _HIDING) and not view.root.children:
        # Nothing selected (a venv `venvfs mount` has just adopted): phase 1 has nothing to hide, so
        # straight to phase 2; a durable marker write is two journal commits (~10 ms on a loop device).
        atomic_write_bytes(marker, _EMPTYING)
    elif _phase(marker) in (None, _HIDING):
        # Phase 1, before anything is deleted: what the user removed from the store's files must
        # stay removed once the view shows them again. Rerunnable while site-packages is untouched.
        atomic_write_bytes(marker, _HIDING)
        hidden: list[str] = []
        for rel, entry in view.walk():
            if (entry.kind == PYC if not isinstance(entry, LowerDir) else rel.rpartition("/")[2] == "__pycache__"):
                # A cache the store provides, or a directory of nothing else (absent where adopt left
                # compiling to the background): hiding it would only cost a recompile.
                continue
            if any(rel.startswith(h + "/") for h in hidden):
                continue
            if not os.path.lexists(sp / rel):
                parent, _, name = rel.rpartition("/")
                (upper / parent).mkdir(parents=True, exist_ok=True)
                (upper / parent / whiteout_name(name)).touch()
                hidden.append(rel)
        atomic_write_bytes(marker, _EMPTYING)
    # From here until the state says "mounted", site-packages is half emptied: the interpreter-start
    # hook must be in place (and must see the marker) so that starting Python finishes the switch.
    _install_hooks(venv)
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
            crash_point("to-mounted:emptying")
    fsync_dir(sp)
    crash_point("to-mounted:emptied")
    # Hardlinks into the store left in bin/, include/ or share/ by the materialized layout: in the
    # mounted one nothing else reaches the store for writing, so neither may they.
    unshare_outside(venv, store, state)
    state.layout = "mounted"
    venv.write_state(state)
    marker.unlink(missing_ok=True)


def to_materialized(venv: Venv, store: Store, state: VenvState, linker: Linker | None = None) -> None:
    """Write the selection as real files and move the upper layer over them (nothing is mounted)."""
    from venvfs.venv import linkmode
    from venvfs.venv.materialize import check_selection, materialize

    sp = venv.site_packages
    upper = venv.upper_dir
    marker = venv.state_dir / TO_MATERIALIZED
    # A marker of a switch to the mounted layout that ended after its state was written.
    (venv.state_dir / TO_MOUNTED).unlink(missing_ok=True)
    if _phase(marker) in (None, _MATERIALIZING):
        if _phase(marker) is None:
            check_selection(venv, store, state)  # refused before the first change, not half way
        # Before the first file lands in site-packages: a crash leaves a venv whose underlying
        # directory holds part of the selection, which only finishing this switch makes right.
        atomic_write_bytes(marker, _MATERIALIZING)
        if linker is None:
            mode = linkmode.LinkMode(state.link_mode) if state.link_mode else linkmode.LinkMode.AUTO
            linker = linkmode.Linker(mode)
        materialize(venv, store, state, linker, site_packages=True, outside_site_packages=False)
        if linker.used is not None:
            state.link_mode = linker.used.value
        # From here on site-packages holds moved user files: materializing again could overwrite them.
        atomic_write_bytes(marker, _APPLYING)
    crash_point("to-materialized:applying")
    if upper.is_dir():
        _apply_upper(upper, sp, str(store.root / "bytecode") + os.sep)
    state.layout = "materialized"
    venv.write_state(state)
    # The interpreter-start hook has nothing to mount in this layout (hooks.install would remove it
    # too; done here so that the switch is complete once the marker is gone).
    (sp / AUTOMOUNT_PTH).unlink(missing_ok=True)
    marker.unlink(missing_ok=True)


def _phase(marker: Path) -> bytes | None:
    try:
        return marker.read_bytes()
    except FileNotFoundError:
        return None


def _install_hooks(venv: Venv) -> None:
    automount.install(venv)


def _holds_nothing(sp: Path) -> bool:
    """Whether site-packages is empty but for the automount hook."""
    try:
        with os.scandir(sp) as entries:
            return all(e.name == AUTOMOUNT_PTH for e in entries)
    except FileNotFoundError:
        return True


def interrupted(venv: Venv) -> str | None:
    """What a killed command left half done: "mounted" or "materialized" (the layout a switch was
    heading for), "selection" (an add/remove), else None.

    A marker left behind after the state already names its layout (a crash between the two last
    steps) is no interrupted switch: ``resume`` only removes it.
    """
    from venvfs.venv.selecting import SELECTING

    try:
        layout = venv.read_state().layout
    except VenvError:
        return None
    if (venv.state_dir / SELECTING).exists():
        return "selection"
    if (venv.state_dir / TO_MATERIALIZED).exists() and layout != "materialized":
        return "materialized"
    if (venv.state_dir / TO_MOUNTED).exists() and layout != "mounted":
        return "mounted"
    return None


def resume(venv: Venv, store: Store | None, state: VenvState) -> str | None:
    """Finish what a killed command left half done (a layout switch, an add/remove); None if there
    was nothing, else the one line (also logged as a warning) saying what was finished. ``state`` is
    updated in place.

    The caller holds the venv lock. Nothing may be mounted on site-packages when a layout switch is
    to be finished (a switch only ever runs unmounted, and ``venvfs mount`` finishes it before
    mounting). ``store`` None: the venv's own, opened only if there is something to finish.
    """
    to_materialized_marker = venv.state_dir / TO_MATERIALIZED
    to_mounted_marker = venv.state_dir / TO_MOUNTED
    messages: list[str] = []
    target = interrupted(venv)
    if target is not None and store is None:
        store = Store.open(Path(state.store), create=False)
    if target == "selection":
        from venvfs.venv.selecting import finish_interrupted

        assert store is not None
        finished = finish_interrupted(venv, store, state)
        if finished:
            messages.append(finished)
        target = interrupted(venv)
    if target is None:
        # Stale markers of finished switches: harmless to drop, wrong to keep (a later switch would
        # skip its first phase).
        if state.layout == "materialized" and to_materialized_marker.exists():
            (venv.site_packages / AUTOMOUNT_PTH).unlink(missing_ok=True)
        to_materialized_marker.unlink(missing_ok=True)
        to_mounted_marker.unlink(missing_ok=True)
    else:
        if mounted_fstype(venv.site_packages) is not None:
            raise VenvError(f"{venv.root}: an interrupted switch to the {target} layout must be finished "
                            f"while site-packages is not mounted; run `venvfs umount {venv.root}` first")
        assert store is not None
        if target == "materialized":
            to_materialized(venv, store, state)
        else:
            to_mounted(venv, store, state)
        messages.append(f"finished the interrupted switch of {venv.root} to the {target} layout")
    if not messages:
        return None
    message = "; ".join(messages)
    log.warning("%s", message)
    return message


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _apply_upper(udir: Path, sdir: Path, store_bytecode: str) -> None:
    from venvfs.venv.upper import OPAQUE, WHITEOUT_PREFIX

    entries = sorted(os.listdir(udir))
    # Order within a directory makes a rerun safe: whiteouts and the opaque marker are consumed
    # (and deleted) before any user file moves into place, so they can never delete a moved file.
    for name in entries:
        if name.startswith(WHITEOUT_PREFIX) and name != OPAQUE:
            # An upper directory outranks a whiteout of its own name (the mount reads them so): whether
            # the lower directory's contents stay is that directory's opaque marker's to say.
            hidden = name[len(WHITEOUT_PREFIX):]
            if not ((udir / hidden).is_dir() and not (udir / hidden).is_symlink()):
                _remove(sdir / hidden)
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
        elif src.is_symlink() and (target := _store_bytecode_target(os.readlink(src), store_bytecode)):
            # A store .pyc the mount showed as a symlink, copied up by a rename: a venv of real files
            # gets a copy of its own, never a link into the store.
            _copy_out_of_store(src, target, dst)
        else:
            _move(src, dst)


def _store_bytecode_target(target: str, store_bytecode: str) -> str | None:
    """``target`` if it names a file of the store's bytecode, else None (the symlink is the venv's own).

    Normalized and resolved, not only compared by prefix: ``STORE/bytecode/../../etc/shadow`` starts
    like one, and whoever owns the venv writes its upper layer, while eject may run as root.
    """
    if os.path.normpath(target) != target or not target.startswith(store_bytecode):
        return None
    real = os.path.realpath(target)
    return target if real.startswith(os.path.realpath(store_bytecode) + os.sep) else None


def _copy_out_of_store(link: Path, target: str, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".venvfs-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a killed run's, or a symlink planted there: O_EXCL below follows neither
    try:
        src = open(target, "rb")  # noqa: SIM115 - closed below, after the copy
    except FileNotFoundError:
        link.unlink()  # the store no longer holds it: a cache file, which Python writes again
        return
    with src, open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), "wb") as out:
        shutil.copyfileobj(src, out)
    os.replace(tmp, dst)
    link.unlink()
