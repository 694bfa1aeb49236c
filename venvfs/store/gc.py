"""``venvfs store gc``, the store's side: remove the records, objects, chunk lists, bytecode and cached
views that no live selection uses. Which selections are live is the venv layer's question
(``venvfs.venv.registry``), answered before this runs.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from venvfs import fsflags
from venvfs.errors import StoreError
from venvfs.store import layers
from venvfs.store.store import Store, bump_gc_epoch, digests_in_raw_record, disk_usage


@dataclass
class GcReport:
    dists: list[str] = field(default_factory=list)
    objects: int = 0
    bytecode: int = 0
    bytes_freed: int = 0
    forgotten_venvs: list[str] = field(default_factory=list)
    views: int = 0


def collect(store: Store, live_selections: dict[str, list[str]], *, dry_run: bool,
            live_views: Collection[str] = (), retire: Collection[str] = ()) -> GcReport:
    """Remove records, objects, bytecode and cached views (other than ``live_views``) no live venv
    references. Caller holds ``store.collecting()``.

    A shared store (one ``venvfs store publish`` wrote to) is used by venvs on other nodes, which
    register with their own stores, never with it: every record in it is live except those named in
    ``retire``, and files younger than ``layers.SHARED_GRACE`` stay (a publisher may be between an
    object and its record).

    Only the store's own layer is collected, never a lower: the lowers are read only for the records
    of what live venvs select from them, whose bytecode for a new Python lives in this layer."""
    layered, store = store, store.local_only()
    report = GcReport()
    live_keys = {k for keys in live_selections.values() for k in keys}
    shared = layers.is_shared(store.root)
    if shared:
        live_keys |= set(store.dist_keys()) - set(retire)
    elif retire:
        raise StoreError(f"{store.root} is no shared store (`venvfs store publish` makes one): its gc "
                         "removes what no venv selects, and retires nothing by name")

    def young(path: Path) -> bool:
        with contextlib.suppress(OSError):
            return shared and time.time() - path.lstat().st_ctime < layers.SHARED_GRACE
        return False
    live_objects: set[tuple[str, bool]] = set()
    live_sources = _sources_below(layered, live_keys)
    for key in store.dist_keys():
        try:
            record = store.get_dist(key)
        except StoreError:
            continue  # unreadable: keep it and its objects for a human to look at
        if key in live_keys:
            for f in record.files:
                if f.digest is not None:
                    live_objects.add((f.digest, f.executable))
                    live_sources.add(f.digest)
            continue
        report.dists.append(key)
        if not dry_run:
            store.dist_path(key).unlink()
    # Objects of unreadable records stay alive too.
    for key in store.dist_keys():
        if key in report.dists or key in live_keys:
            continue
        with contextlib.suppress(StoreError):
            store.get_dist(key)
            continue
        live_objects.update(digests_in_raw_record(store.dist_path(key)))
    for digest, executable, path in list(store.iter_objects()):
        if (digest, executable) in live_objects or young(path):
            continue
        report.objects += 1
        report.bytes_freed += disk_usage(path)
        if not dry_run:
            path.unlink()
    # Chunk lists this layer made for live builds below it (``verify.vouch_lower``) stay too.
    live_digests = {digest for digest, _ in live_objects} | live_sources
    for listed in list((store.root / "chunks").glob("*/*")):
        if listed.name in live_digests or young(listed):
            continue
        report.bytes_freed += disk_usage(listed)
        if not dry_run:
            listed.unlink(missing_ok=True)
    for pyc in list((store.root / "bytecode").glob("*/*/*.pyc")):
        if pyc.stem in live_sources or young(pyc):
            continue
        report.bytecode += 1
        report.bytes_freed += disk_usage(pyc)
        if not dry_run:
            if report.bytecode == 1:
                # Before the first: what a long-lived process learnt is compiled (warm.py) no longer
                # holds, even if this gc is killed half way. Not before: a gc that removes no bytecode
                # leaves the service's facts, and a shared store, as they were.
                bump_gc_epoch(store)
            fsflags.unlink(pyc)  # a mount that links bytecode made it immutable
    views = store.root / "views"
    for view in list(views.iterdir()) if views.is_dir() else []:
        # Cached views are written without the store lock (by mounting daemons) through a temporary
        # dotfile beside them: only a day-old one is a crash's leftover.
        if view.name.startswith("."):
            with contextlib.suppress(OSError):
                if time.time() - view.lstat().st_mtime < 86400:
                    continue
        elif view.stem in live_views:
            continue
        report.views += 1
        report.bytes_freed += disk_usage(view)
        if not dry_run:
            view.unlink(missing_ok=True)
    if not dry_run:
        for tmp in (store.root / "tmp").iterdir():
            # Only gc holds the exclusive lock, so no writer owns these: leftovers of a crash (in a
            # shared store, publishers on other nodes take no lock: only old ones are leftovers).
            if young(tmp):
                continue
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        # Registry entries are staged beside them by venv commands, without the lock, as views are.
        for tmp in (store.root / "venvs").glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if time.time() - tmp.lstat().st_mtime >= 86400:
                    tmp.unlink()
    return report


def _sources_below(store: Store, live_keys: set[str]) -> set[str]:
    """The source digests of the live builds that only a lower store holds: this layer keeps their
    bytecode. A lower that cannot be reached stops gc, rather than taking that bytecode for garbage."""
    sources: set[str] = set()
    below = sorted(k for k in live_keys if not store.local_dist_path(k).exists())
    if not store.lowers or not below:
        return sources
    store.check_lowers()
    for key in below:
        with contextlib.suppress(StoreError):  # in no layer: gone for good, nothing to keep
            sources.update(f.digest for f in store.get_dist(key).files if f.digest is not None)
    return sources
