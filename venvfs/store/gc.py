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

from venvfs import fsflags
from venvfs.errors import StoreError
from venvfs.store.store import Store, digests_in_raw_record


@dataclass
class GcReport:
    dists: list[str] = field(default_factory=list)
    objects: int = 0
    bytecode: int = 0
    bytes_freed: int = 0
    forgotten_venvs: list[str] = field(default_factory=list)
    views: int = 0


def collect(store: Store, live_selections: dict[str, list[str]], *, dry_run: bool,
            live_views: Collection[str] = ()) -> GcReport:
    """Remove records, objects, bytecode and cached views (other than ``live_views``) no live venv
    references. Caller holds ``store.collecting()``."""
    report = GcReport()
    live_keys = {k for keys in live_selections.values() for k in keys}
    live_objects: set[tuple[str, bool]] = set()
    live_sources: set[str] = set()
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
        if (digest, executable) in live_objects:
            continue
        report.objects += 1
        report.bytes_freed += store.disk_usage(path)
        if not dry_run:
            path.unlink()
    live_digests = {digest for digest, _ in live_objects}
    for listed in list((store.root / "chunks").glob("*/*")):
        if listed.name in live_digests:
            continue
        report.bytes_freed += store.disk_usage(listed)
        if not dry_run:
            listed.unlink(missing_ok=True)
    for pyc in list((store.root / "bytecode").glob("*/*/*.pyc")):
        if pyc.stem in live_sources:
            continue
        report.bytecode += 1
        report.bytes_freed += store.disk_usage(pyc)
        if not dry_run:
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
        report.bytes_freed += store.disk_usage(view)
        if not dry_run:
            view.unlink(missing_ok=True)
    if not dry_run:
        for tmp in (store.root / "tmp").iterdir():
            # Only gc holds the exclusive lock, so no writer owns these: leftovers of a crash.
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
