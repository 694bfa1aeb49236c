"""``venvfs commit`` and the automatic ingest: distributions that pip or uv installed into a mounted
venv move into the store.

A ``*.dist-info`` in the upper layer with a RECORD that ``venv.pending`` reports (new, or rewritten
by a reinstall) is ingested through its RECORD, reading the files from the upper layer
(``upper_adopter.UpperAdopter``), compiled, and selected; then the daemon reloads its view and
drops the upper copies the store now serves, where they still match it. Upper files win over the store while
both exist, so what the venv shows never changes during the commit (store files do show the
store's 1980 mtime afterwards). Selected distributions whose dist-info is gone from the venv
(uninstalled) are deselected. Editable installs (PEP 660) and files no RECORD owns stay the venv's
own. The automatic ingest (``ingest.py``) takes only distributions whose every file matches its
RECORD hash; ``venvfs commit`` also takes one with files edited since, leaving those in the venv.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from venvfs.errors import VenvError
from venvfs.mount.ingest import CommitReport, ingest_mounted
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

__all__ = ["CommitReport", "commit", "ingest_mounted"]


def commit(venv: Venv, store: Store) -> CommitReport:
    """Commit ``venv``'s new distributions. An unmounted venv is mounted for the duration: the daemon
    drops the upper copies."""
    from venvfs.mount import daemon

    if venv.read_state().layout != "mounted":
        raise VenvError(f"{venv.root} is materialized (real files, no upper layer): `venvfs adopt` stores "
                        "what pip or uv installed there")
    temporary = daemon.mount_state(venv) != "mounted"
    if temporary:
        daemon.mount(venv.root, store, mode="fuse")
    try:
        report = ingest_mounted(venv, store)
        if report.dropped:
            _wait_for_freed(venv.state_dir / "work")
        return report
    finally:
        if temporary:
            daemon.umount(venv.root, store)


def _wait_for_freed(work: Path, timeout: float = 30.0) -> None:
    """Until the daemon has removed the copies it dropped: it renames them into the work dir on its
    request loop and unlinks them on a thread of its own (an unlink of a large file frees its blocks
    then and there), so ``commit`` returning means the disk is settled. Copy-ups in flight pass
    through the same directory: after ``timeout`` seconds the commit returns all the same."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with os.scandir(work) as entries:
                if next(entries, None) is None:
                    return
        except OSError:
            return
        time.sleep(0.02)
