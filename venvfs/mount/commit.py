"""``venvfs commit``: distributions that pip or uv installed into a mounted venv move into the store.

A new ``*.dist-info`` with a RECORD in the upper layer is ingested through its RECORD (as adopt does,
read through the mount), compiled, and selected; then the daemon reloads its view and drops the
upper copies the store now serves. Upper files win over the store while both exist, so what the
venv shows never changes during the commit (store files do show the store's 1980 mtime afterwards).
Selected distributions whose dist-info is gone from the venv (uninstalled) are deselected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from venvfs.errors import VenvError
from venvfs.fsutil import crash_point
from venvfs.store.store import Store
from venvfs.venv.linkmode import Linker, LinkMode
from venvfs.venv.venv import Venv


@dataclass
class CommitReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    dropped: int = 0


def commit(venv: Venv, store: Store) -> CommitReport:
    """Commit ``venv``'s new distributions. An unmounted venv is mounted for the duration: commit
    reads the files through the mount and the daemon drops the upper copies."""
    from venvfs.mount import daemon

    if venv.read_state().layout != "mounted":
        raise VenvError(f"{venv.root} is materialized (real files, no upper layer): `venvfs adopt` stores "
                        "what pip or uv installed there")
    temporary = daemon.mount_state(venv) != "mounted"
    if temporary:
        daemon.mount(venv.root, store, mode="fuse")
    try:
        return _commit_mounted(venv, store)
    finally:
        if temporary:
            daemon.umount(venv.root, store)


def _commit_mounted(venv: Venv, store: Store) -> CommitReport:
    from venvfs.mount import daemon
    from venvfs.progress import Progress
    from venvfs.store.bytecode import ensure_bytecode, pyc_relpath
    from venvfs.venv.adopt import _DistAdopter

    report = CommitReport()
    with venv.locked(wait=True):
        state = venv.read_state()
        if state.layout != "mounted" or daemon.mount_state(venv) != "mounted":
            raise VenvError(f"{venv.root} was unmounted during the commit; nothing was changed")
        assert state.interpreter is not None
        sp = venv.site_packages
        upper = venv.upper_dir
        records = {key: store.get_dist(key) for key in state.selection}
        by_dist_info = {r.dist_info: key for key, r in records.items()}
        for key, record in records.items():
            if not (sp / record.dist_info).is_dir():
                report.removed.append(key)
        new_records = []
        with store.writing():
            for info in sorted(sp.glob("*.dist-info")):
                if info.name in by_dist_info or not (upper / info.name / "RECORD").is_file():
                    continue
                # Read through the mount: a link from a FUSE mount into the store cannot work.
                adopter = _DistAdopter(venv, store, info, Progress(f"committing {info.name}", 0), Linker(LinkMode.COPY))
                record = adopter.adopt()
                store.add_dist(record)
                new_records.append(record)
            if new_records:
                ensure_bytecode(store, new_records, state.interpreter, venv.python, show_progress=False)
        new_names = {r.name for r in new_records}
        # A dist upgraded in place by pip: its old build leaves the selection with the new one's arrival.
        report.removed += [k for k, r in records.items() if r.name in new_names and k not in report.removed]
        report.added = [r.key for r in new_records]
        state.selection = [k for k in state.selection if k not in report.removed]
        state.selection += [k for k in report.added if k not in state.selection]
        drop: list[str] = []
        for record in new_records:
            for f in record.site_files():
                drop.append(f.path)
                if f.path.endswith(".py"):
                    drop.append(pyc_relpath(f.path, state.interpreter.cache_tag))
        # Queued before the state names the new records: a commit killed from here on leaves the
        # upper copies to the next reload or daemon start, which drops them (only where they still
        # match the store), instead of to nobody.
        daemon.queue_drop_upper(venv, drop)
        venv.write_state(state)
        crash_point("commit:selected")
        daemon.reload(venv)
    return report
