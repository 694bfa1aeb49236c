"""The truth about sharing, which ``du`` cannot tell: ``du`` counts a hardlinked or reflinked file once
per venv, and a mounted site-packages not at all.

Bytes are counted from allocated blocks (``st_blocks``), logical sizes from the records.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from venvfs.errors import VenvfsError
from venvfs.store import layers
from venvfs.store.records import DistRecord
from venvfs.store.store import SOURCE_EPOCH, Store, keeping_records
from venvfs.venv.eject import EJECTING
from venvfs.venv.layout import interrupted
from venvfs.venv.linkmode import hardlink_warning
from venvfs.venv.materialize import count_store_inodes
from venvfs.venv.mountinfo import mount_state
from venvfs.venv.venv import Venv, VenvState

ObjectId = tuple[str, bool]


@dataclass
class DistSummary:
    key: str
    name: str
    version: str
    files: int
    logical_bytes: int
    shared_with_other_venvs: bool  # any object of it is used by another venv too
    store_bytes: int = 0  # disk its objects take in the store
    shared_bytes: int = 0  # of store_bytes, objects another registered venv uses too
    layer: str = ""  # the root of the store layer its record is in: the local store or a lower one


@dataclass
class VenvStatus:
    venv: str
    store: str
    layout: str
    mount: str
    lowers: list[str]
    link_mode: str | None
    python: str | None
    interrupted: str | None = None  # a layout switch left half done, and what will finish it
    state_problem: str | None = None  # why the venv's state cannot be trusted (then the rest is the registry's copy)
    distributions: list[DistSummary] = field(default_factory=list)
    logical_bytes: int = 0  # what the selection would take as plain copies
    store_bytes: int = 0  # disk the selection's objects take in the store
    shared_bytes: int = 0  # of store_bytes, objects another registered venv uses too
    owned_alone_bytes: int = 0  # of store_bytes, objects only this venv uses
    lower_bytes: int = 0  # of store_bytes, objects a lower (shared) store holds: not on this node's disk
    venv_own_bytes: int = 0  # disk in the venv itself: upper layer, copies, the venv's own files
    venv_own_files: int = 0
    store_hardlinks: int = 0  # files of the venv that are store objects' own inodes (the hardlink fallback)
    hardlink_warning: str | None = None  # the one line saying what that exposes
    # What is wrong with the mount and the command that fixes it (a dead mount; files an installer
    # wrote below the unmounted mount point, which a mount would hide). Reported, never repaired here.
    mount_problem: str | None = None
    unmounted_writes: list[str] = field(default_factory=list)  # names below the unmounted mount point
    # Installed into the mount, not yet in the store: dist-info -> why it waits ("" : for the next ingest)
    pending_ingest: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StoreStatus:
    store: str
    distributions: int = 0
    objects: int = 0
    stored_bytes: int = 0  # allocated blocks of objects
    stored_logical_bytes: int = 0  # lengths of objects (what dedupe is measured against)
    bytecode_bytes: int = 0  # allocated blocks of precompiled .pyc, all Python versions
    logical_bytes: int = 0  # sum over the venvs still there of what their selection takes as plain copies
    dedupe_ratio: float | None = None
    venvs: list[dict[str, Any]] = field(default_factory=list)
    # Registered venvs whose directory is gone (or holds another venv): their distributions stay until
    # `venvfs store gc --forget-missing`, and they count neither as venvs nor in the dedupe ratio.
    gone_venvs: int = 0
    # The local store and each lower below it: {"root", "role", "distributions", "error"}; objects and
    # bytes above count the local store alone (a lower is an admin's, verified where it is).
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def live_selections(store: Store) -> dict[str, VenvState]:
    """The selections of the venvs registered in the store that still count on it: read from each
    venv, or from the registry's copy when it is missing, moved or damaged (see ``venvfs.venv.registry``)."""
    from venvfs.venv.registry import kept_selections, registered

    return kept_selections(registered(store))


def _objects(record: DistRecord) -> set[ObjectId]:
    return {(f.digest, f.executable) for f in record.files if f.digest is not None}


def _blocks(path: Path) -> int:
    try:
        return path.lstat().st_blocks * 512
    except FileNotFoundError:
        return 0


def _tree_usage(root: Path, exclude_inodes: set[tuple[int, int]],
                exclude_placed: dict[str, int] | None = None) -> tuple[int, int]:
    """Allocated bytes and file count under ``root``, not counting inodes shared with the store, nor
    (``exclude_placed``: relative path -> size) reflinks that materialize placed and nobody modified."""
    total = files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and (st.st_ino, st.st_dev) in exclude_inodes:
                    continue
                if (exclude_placed is not None and int(st.st_mtime) == SOURCE_EPOCH
                        and exclude_placed.get(os.path.relpath(path, root)) == st.st_size):
                    continue
                total += st.st_blocks * 512
                files += 1
    return total, files


def _interrupted(venv: Venv, state: VenvState) -> str | None:
    target = interrupted(venv)
    if target is None:
        if (venv.state_dir / EJECTING).exists():
            return ("an eject did not finish (its hooks are off): `venvfs eject` again finishes it; "
                    "`venvfs mount` or `venvfs hook install` keeps the venv with venvfs")
        return None
    if target == "mounted":
        then = ("; `venvfs mount`, or starting its python, finishes it and mounts" if state.hooks else
                "; `venvfs mount` finishes it and mounts")
        return (f"the switch to the mounted layout was interrupted: site-packages is half moved into "
                f"{venv.upper_dir}, so imports can fail until it is finished{then}; any other venvfs "
                "command on this venv finishes it first")
    if target == "selection":
        return ("an add/remove was interrupted: the venv's files match neither selection; the next venvfs "
                "command on this venv finishes it first")
    return ("the switch to the materialized layout was interrupted: site-packages holds part of the "
            "selection; the next venvfs command on this venv finishes it first (`venvfs mount` then mounts)")


def venv_status(venv: Venv, store: Store, state: VenvState | None = None) -> VenvStatus:
    """``state``: what to report on instead of the venv's own (the registry's copy of a damaged one)."""
    # Every other live venv's selection is read to tell shared bytes from this venv's own: mostly
    # the same few records, each parse of which hashes its whole manifest. Parsed once each, a
    # store with 116 registered venvs of 28 distributions answered in 0.3 s instead of 4.2 s.
    with keeping_records(store):
        return _venv_status(venv, store, state)


def _venv_status(venv: Venv, store: Store, state: VenvState | None) -> VenvStatus:
    state = state if state is not None else venv.read_state()
    own = (str(venv.root), f"{venv.root} (registry copy)")
    others = {p: s for p, s in live_selections(store).items() if p not in own}
    other_objects: set[ObjectId] = set()
    for key in {k for other in others.values() for k in other.selection}:
        with contextlib.suppress(VenvfsError):
            other_objects |= _objects(store.get_dist(key))
    status = VenvStatus(
        venv=str(venv.root), store=state.store, layout=state.layout, mount=mount_state(venv),
        lowers=[str(p) for p in store.lowers],
        link_mode=state.link_mode, python=state.interpreter.version if state.interpreter else None,
        interrupted=_interrupted(venv, state),
    )
    mine: set[ObjectId] = set()
    used_by: dict[ObjectId, int] = {}
    for key in state.selection:
        record = store.get_dist(key)
        objs = _objects(record)
        mine |= objs
        for obj in objs:
            if obj not in used_by:
                used_by[obj] = _blocks(store.object_path(*obj))
        # "Shared" as bytes, not as a flag: one small file in common made torch, used by one venv
        # alone, read "shared" (issue 17).
        status.distributions.append(DistSummary(
            key=key, name=record.name, version=record.version, files=len(record.files),
            logical_bytes=record.logical_size, shared_with_other_venvs=bool(objs & other_objects),
            store_bytes=sum(used_by[o] for o in objs),
            shared_bytes=sum(used_by[o] for o in objs & other_objects),
            layer=str(store.layer_of(store.dist_path(key))),
        ))
        status.logical_bytes += record.logical_size
    store_inodes: set[tuple[int, int]] = set()
    local_prefix = f"{store.root}/"
    for obj in mine:
        path = store.object_path(*obj)
        if store.lowers and not str(path).startswith(local_prefix):
            status.lower_bytes += used_by[obj]
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            store_inodes.add((st.st_ino, st.st_dev))
        if state.interpreter is not None:
            with contextlib.suppress(FileNotFoundError):
                st = store.bytecode_path(state.interpreter.cache_tag, obj[0]).stat()
                store_inodes.add((st.st_ino, st.st_dev))
        used = used_by[obj]
        status.store_bytes += used
        if obj in other_objects:
            status.shared_bytes += used
        else:
            status.owned_alone_bytes += used
    if state.layout == "mounted":
        status.venv_own_bytes, status.venv_own_files = _tree_usage(venv.upper_dir, set())
    elif state.link_mode == "reflink":
        # Reflinked files share the store's extents until modified (which moves their mtime): only
        # the venv's other files are its own.
        placed = {f.path: f.size for key in state.selection for f in store.get_dist(key).site_files()}
        status.venv_own_bytes, status.venv_own_files = _tree_usage(venv.site_packages, store_inodes, placed)
    else:
        status.venv_own_bytes, status.venv_own_files = _tree_usage(venv.site_packages, store_inodes)
    status.store_hardlinks = count_store_inodes(
        venv.root, store_inodes, skip=venv.site_packages if state.layout == "mounted" else None)
    if status.store_hardlinks:
        status.hardlink_warning = hardlink_warning(status.store_hardlinks, f"link mode {state.link_mode or '?'}")
    _mount_problem(venv, state, status)
    if state.layout == "mounted":
        status.pending_ingest = _pending_ingest(venv, store, state)
    return status


def _mount_problem(venv: Venv, state: VenvState, status: VenvStatus) -> None:
    from venvfs.venv.takein import hidden_entries

    if state.layout != "mounted":
        return
    if status.mount == "dead":
        status.mount_problem = (f"site-packages is a dead mount (its daemon died: imports fail, uv says "
                                f"\"os error 107\"): `venvfs mount {venv.root}` mounts it again")
    elif status.mount == "unmounted":
        status.unmounted_writes = hidden_entries(venv)
        if status.unmounted_writes:
            names = ", ".join(status.unmounted_writes[:4]) + (" ..." if len(status.unmounted_writes) > 4 else "")
            status.mount_problem = (f"{len(status.unmounted_writes)} entries were written below the mount point "
                                    f"while unmounted ({names}): `venvfs mount {venv.root}` takes them into "
                                    "the venv (a mount would otherwise hide them)")


def _pending_ingest(venv: Venv, store: Store, state: VenvState) -> dict[str, str]:
    from venvfs.venv.pending import pending

    selected = set()
    for key in state.selection:
        with contextlib.suppress(VenvfsError):
            selected.add(store.get_dist(key).dist_info)
    return {p.dist_info: p.reason or "" for p in pending(venv, selected)}


def store_status(store: Store) -> StoreStatus:
    status = StoreStatus(store=str(store.root))
    with contextlib.suppress(VenvfsError):  # an unreachable lower: its layer below says so
        status.distributions = len(store.dist_keys())
    for role, root in [("local", store.root), *(("lower", p) for p in store.lowers)]:
        layer: dict[str, Any] = {"root": str(root), "role": role, "distributions": None, "error": None}
        try:
            if role == "lower":
                layers.check(root, store.root)
            layer["distributions"] = len(Store(root).dist_keys())
        except (VenvfsError, OSError) as e:
            layer["error"] = str(e)
        status.layers.append(layer)
    for _digest, _exe, path in store.iter_objects():
        status.objects += 1
        with contextlib.suppress(FileNotFoundError):
            st = path.lstat()
            status.stored_bytes += st.st_blocks * 512
            status.stored_logical_bytes += st.st_size
    for pyc in (store.root / "bytecode").glob("*/*/*.pyc"):
        status.bytecode_bytes += _blocks(pyc)
    from venvfs.venv.registry import kept_selections, registered

    venvs = registered(store)
    here = {str(rv.path) for rv in venvs if rv.condition in ("live", "damaged")}
    sizes: dict[str, int] = {}  # the venvs select mostly the same records: each parsed once
    for venv_path, state in kept_selections(venvs).items():
        if venv_path not in here:
            # Gone (or a registry copy of one that is here): its selection is kept, not used. Counted
            # as a venv, a store of removed venvs claimed a dedupe ratio of 103x against the 3x of
            # the ones left.
            status.gone_venvs += not venv_path.endswith(" (registry copy)")
            continue
        logical = 0
        for key in state.selection:
            if key not in sizes:
                with contextlib.suppress(VenvfsError):
                    sizes[key] = store.get_dist(key).logical_size
            logical += sizes.get(key, 0)
        status.logical_bytes += logical
        status.venvs.append({"path": venv_path, "layout": state.layout, "distributions": len(state.selection),
                             "logical_bytes": logical})
    if status.stored_logical_bytes:
        # Lengths against lengths: allocated blocks round small files up to 4 KiB and would understate it.
        status.dedupe_ratio = round(status.logical_bytes / status.stored_logical_bytes, 2)
    return status
