"""Automatic ingest: what pip or uv installed into a mounted venv goes into the store by itself.

The daemon watches its own requests (``overlay.Activity``): a change of a top-level ``*.dist-info``
(an installer's RECORD, an uninstall) wakes ``IngestScheduler``'s thread, which waits for a quiet
period (no change through the mount for ``QUIET`` seconds, at most ``MAX_WAIT`` after the first
notice so that a long install still settles), asks ``venv.pending`` whether anything is pending,
and then runs ``python -m venvfs.mount.ingest``: a worker process that runs ``ingest_mounted``
(what ``venvfs commit`` runs) with ``automatic=True``, off the FUSE request path and under the venv
lock. The worker takes only distributions whose every RECORD file is there with its RECORD hash,
and nothing while pip's stash of an upgrade exists; it reads them from the upper layer directly
(``upper_adopter.UpperAdopter``), not through the mount (1.5 s against 2.6 s for scipy's 109 MiB),
and stores a reflink or copy, never a hardlink: the store never shares an inode with a venv's file.
Then it selects them and has the daemon reload, which drops the upper copies that still match.

``VENVFS_AUTO_INGEST=0`` turns it off (``venvfs commit`` then does it on demand).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from venvfs.errors import Busy, VenvError, VenvfsError
from venvfs.fsutil import atomic_write_json, crash_point, log_to_stderr, read_json
from venvfs.mount.overlay.activity import Activity
from venvfs.store.store import Store
from venvfs.venv.mountinfo import drop_path, mount_state, reload
from venvfs.venv.venv import Venv

log = logging.getLogger(__name__)

AUTO_ENV = "VENVFS_AUTO_INGEST"
QUIET = 1.0  # seconds without a change through the mount before an install counts as done
MAX_WAIT = 10.0  # ... but no longer than this after the first notice: a long install settles in steps


def auto_ingest_enabled() -> bool:
    return os.environ.get(AUTO_ENV, "1").strip().lower() not in ("0", "no", "false", "off")


@dataclass
class CommitReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    dropped: int = 0  # upper copies queued to drop (the daemon drops those that still match)
    skipped: dict[str, str] = field(default_factory=dict)  # dist-info -> why it was not ingested


def _source(info: Path, venv: Venv) -> str:
    """``installed:<installer>:<venv>``: who installed it where (PEP 376's INSTALLER, "pip", "uv")."""
    try:
        installer = (info / "INSTALLER").read_text(errors="replace").strip().splitlines()[0].strip()
    except (OSError, IndexError):
        installer = ""
    return f"installed:{installer or 'unknown installer'}:{venv.root}"


def ingest_mounted(venv: Venv, store: Store, *, automatic: bool = False) -> CommitReport:
    """Store and select what is pending in the mounted ``venv`` (see the module docstring).
    ``automatic``: the daemon's worker: complete distributions only, and a venv that is no longer
    mounted is left for its next mount instead of being an error."""
    # Here, not at the top: the daemon imports this module at every mount, and the adopter's
    # imports (installer, packaging) would add ~30 ms to each.
    from venvfs.mount.upper_adopter import UpperAdopter
    from venvfs.progress import Progress
    from venvfs.store.bytecode import ensure_bytecode, pyc_relpath
    from venvfs.venv import pending

    report = CommitReport()
    with venv.locked(wait=True):
        state = venv.read_state()
        if state.layout != "mounted" or mount_state(venv) != "mounted":
            if automatic:
                return report
            raise VenvError(f"{venv.root} was unmounted during the commit; nothing was changed")
        assert state.interpreter is not None
        busy = pending.installer_busy(venv) if automatic else None
        if busy is not None:
            # Its end removes the stash, a change the daemon sees: the ingest runs again then.
            log.info("an install is still under way (%s): nothing ingested now", busy)
            return report
        if pending.expect_path(venv).exists():
            # A worker killed between selecting and confirming: finish its check, and reload even
            # when all is confirmed, since the daemon may not serve that selection yet (the whiteouts
            # of a later uninstall need the store's files in the view).
            gone = pending.unconfirmed(venv)
            if gone:
                state.selection = [k for k in state.selection if k not in gone]
                venv.write_state(state)
            reload(venv, store=store)
            confirmed = {name: (sig, pending.INGESTED)
                         for key, (name, sig) in pending.expected(venv).items() if key not in gone}
            pending.mark_seen(venv, confirmed)
            pending.expect_path(venv).unlink(missing_ok=True)
        sp = venv.site_packages
        upper = venv.upper_dir
        # Only the selected builds whose names the upper layer holds a dist-info or a whiteout of can
        # have changed: an install through the mount writes its dist-info there, and an uninstall
        # (or an upgrade's removal) of a selected one leaves a whiteout of its dist-info there. With
        # nothing of either, nothing is pending and no record is read (a commit returns at once).
        touched = _touched_names(upper)
        records = {key: store.get_dist(key) for key in state.selection
                   if touched is None or any(key.startswith(name + "-") for name in touched)}
        by_dist_info = {r.dist_info: key for key, r in records.items()}
        for key, record in records.items():
            if not (sp / record.dist_info).is_dir():
                report.removed.append(key)
        todo = pending.pending(venv, by_dist_info)
        if automatic:
            todo = [p for p in todo if p.reason is None]
        new_records = []
        stamps: dict[str, tuple[int, int, int, int]] = {}
        results: dict[str, tuple[list[int] | None, str]] = {}
        with store.writing():
            for item in todo:
                info = upper / item.dist_info
                sig = pending.record_signature(info)
                log.info("ingesting %s (RECORD %s)", item.dist_info, sig)
                # Read from the upper layer: faster than through the mount, and a link from a FUSE
                # mount into the store could not work.
                adopter = UpperAdopter(venv, store, info, Progress(f"committing {info.name}", 0), strict=automatic)
                try:
                    if automatic:
                        adopter.precheck()
                    record = adopter.adopt()
                except VenvError as e:
                    report.skipped[info.name] = str(e)
                    results[info.name] = (sig, f"not ingested: {e}")
                    continue
                record = dataclasses.replace(record, source=_source(info, venv))
                store.add_dist(record)
                new_records.append(record)
                stamps.update(adopter.stamps)
                results[info.name] = (sig, pending.INGESTED)
            if new_records:
                ensure_bytecode(store, new_records, state.interpreter, venv.python, show_progress=False)
        crash_point("ingest:stored")
        new_names = {r.name for r in new_records}
        new_keys = {r.key for r in new_records}
        # A dist upgraded, downgraded or rebuilt by pip: its old build leaves the selection as the new one arrives.
        report.removed += [k for k, r in records.items()
                           if r.name in new_names and k not in new_keys and k not in report.removed]
        report.added = [r.key for r in new_records if r.key not in state.selection]
        drop: list[str | list[str | int]] = []
        for record in new_records:
            for f in record.site_files():
                stamp = stamps.get(f.path)
                drop.append([f.path, *stamp] if stamp else f.path)
                if f.path.endswith(".py"):
                    drop.append(pyc_relpath(f.path, state.interpreter.cache_tag))
        report.dropped = len(drop)
        if report.added or report.removed or drop:
            state.selection = [k for k in state.selection if k not in report.removed]
            state.selection += [k for k in report.added if k not in state.selection]
            # Each new key with the RECORD it was read from: the daemon leaves out of the view one an
            # installer replaced or removed meanwhile (pending.unconfirmed), and so do we, below.
            atomic_write_json(pending.expect_path(venv), {r.key: [r.dist_info, results[r.dist_info][0]]
                                                          for r in new_records})
            # Queued before the state names the new records: a commit killed from here on leaves the
            # upper copies to the next reload or daemon start, which drops them (only where they still
            # match the store), instead of to nobody. Added to what an earlier killed one queued.
            queued = _queued(venv)
            if queued or drop:
                have = {p if isinstance(p, str) else str(p[0]) for p in queued}
                atomic_write_json(drop_path(venv), queued + [p for p in drop
                                                             if (p if isinstance(p, str) else p[0]) not in have])
            venv.write_state(state)
            crash_point("commit:selected")
            reload(venv, store=store)
            gone = pending.unconfirmed(venv)
            if gone:
                state.selection = [k for k in state.selection if k not in gone]
                report.added = [k for k in report.added if k not in gone]
                for r in new_records:
                    if r.key in gone:
                        del results[r.dist_info]  # pending again: the next ingest looks at what is there now
                venv.write_state(state)
                reload(venv, store=store)
            pending.expect_path(venv).unlink(missing_ok=True)
            pending.mark_seen(venv, results)
        else:
            pending.mark_seen(venv, results)
    return report


def _touched_names(upper: Path) -> set[str] | None:
    """Canonical names of the top-level dist-infos and dist-info whiteouts of the upper layer; None
    when one has no name-version form to take a name from (then every record is looked at)."""
    from packaging.utils import canonicalize_name

    from venvfs.venv.upper import WHITEOUT_PREFIX

    names: set[str] = set()
    try:
        with os.scandir(upper) as entries:
            for entry in entries:
                name = entry.name.removeprefix(WHITEOUT_PREFIX)
                if name.endswith(".dist-info"):
                    project = name.removesuffix(".dist-info").rpartition("-")[0]
                    if not project:
                        return None
                    names.add(canonicalize_name(project))
    except FileNotFoundError:
        pass
    return names


def _queued(venv: Venv) -> list[str | list[str | int]]:
    try:
        data = read_json(drop_path(venv))
    except (OSError, ValueError):
        return []
    return [p if isinstance(p, list) else str(p) for p in data] if isinstance(data, list) else []


class IngestScheduler:
    """The daemon's side: a thread that waits for installs to settle and runs the worker."""

    def __init__(self, venv: Venv, store_root: Path, activity: Activity, *, quiet: float = QUIET,
                 max_wait: float = MAX_WAIT) -> None:
        self.venv = venv
        self.store_root = store_root
        self.activity = activity
        self.quiet = quiet
        self.max_wait = max_wait
        self._stopped = False
        self._selected_stamp: tuple[int, int, int] | None = None
        self._selected_cache: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="venvfs-ingest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self.activity.dist_info_changed.set()

    def _run(self) -> None:
        try:
            self._baseline()
        except Exception:
            log.exception("ingest: reading what is installed failed")
        # Whatever an earlier mount left pending (a killed ingest, an install while mounted elsewhere).
        self.activity.dist_info_changed.set()
        while True:
            self.activity.dist_info_changed.wait()
            if self._stopped:
                return
            self.activity.dist_info_changed.clear()
            self._settle()
            if self._stopped:
                return
            try:
                if not self._pending():
                    continue
                code = self._run_worker()
            except Exception:
                log.exception("ingest failed")
                continue
            if code == Busy.exit_code:
                time.sleep(self.quiet)  # another venvfs command holds the venv: look again after it
                self.activity.dist_info_changed.set()

    def _settle(self) -> None:
        first = time.monotonic()
        while not self._stopped:
            now = time.monotonic()
            wait = self.activity.last + self.quiet - now
            if wait <= 0 or now - first >= self.max_wait:
                return
            time.sleep(min(wait, self.max_wait - (now - first)) + 0.01)

    def _selected(self) -> set[str]:
        # Records can be large (torch's lists 15,000 files): read again only when the selection changed.
        st = os.stat(self.venv.state_path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._selected_stamp:
            from venvfs.venv.view import indexed_dist_infos

            store = Store.open(self.store_root, create=False)
            state = self.venv.read_state()
            # From the selection's index where the store has one (the daemon maps it anyway): the
            # records would be parsed, and their digests checked, in the daemon's own long-lived heap.
            indexed = indexed_dist_infos(store, state)
            self._selected_cache = (set(indexed) if indexed is not None
                                    else {store.get_dist(key).dist_info for key in state.selection})
            self._selected_stamp = stamp
        return self._selected_cache

    def _baseline(self) -> None:
        """Distributions selected before the seen file knew them are settled as they are now: from
        here on a rewrite of their RECORD (a reinstall) shows as a change."""
        from venvfs.venv import pending

        seen = pending.read_seen(self.venv)
        unseen = {name: sig for name, sig in pending.upper_dist_infos(self.venv).items() if name not in seen}
        if not unseen:
            return  # the usual case: reading the selection's records is not needed
        selected = self._selected()
        new = {name: {"sig": sig, "result": pending.SETTLED} for name, sig in unseen.items()
               if name in selected and not pending.reinstalled(self.venv, name)}
        if new:
            pending.write_seen(self.venv, {**seen, **new})

    def _pending(self) -> bool:
        from venvfs.venv import pending

        seen = pending.read_seen(self.venv)
        present = pending.upper_dist_infos(self.venv)
        if any(name not in present for name in seen) or pending.expect_path(self.venv).exists():
            return True  # uninstalled (the worker deselects it), or a killed worker's check to finish
        if all(seen.get(name, {}).get("sig") == sig for name, sig in present.items()):
            return False  # every RECORD as the last ingest left it (at a mount: ~1 ms, no record read)
        return any(p.reason is None for p in pending.pending(self.venv, self._selected()))

    def _run_worker(self) -> int:
        argv = [sys.executable, "-m", "venvfs.mount.ingest", "--venv", str(self.venv.root), "--store",
                str(self.store_root)]
        started = time.monotonic()
        # Its output goes to the daemon's log (our stdout and stderr).
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False).returncode
        log.info("ingest worker exited %d after %.2fs", code, time.monotonic() - started)
        return code


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m venvfs.mount.ingest")
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True)
    args = parser.parse_args(argv)
    log_to_stderr()
    try:
        venv = Venv.open(args.venv)
        store = Store.open(args.store, create=False)
        report = ingest_mounted(venv, store, automatic=True)
    except VenvfsError as e:
        log.warning("ingest of %s: %s", args.venv, e)
        return e.exit_code
    except OSError as e:
        log.warning("ingest of %s: %s", args.venv, e)
        return 74
    if report.added or report.removed or report.dropped or report.skipped:
        log.info("ingested %s; deselected %s; %d upper copies queued to drop; left %s", report.added or "nothing",
                 report.removed or "nothing", report.dropped, report.skipped or "nothing")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
