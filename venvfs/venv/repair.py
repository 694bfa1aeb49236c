"""Putting damaged store objects right (``venvfs store verify --repair``).

A wheel is not kept after ingest, so the good bytes of a damaged object must come from somewhere
that still holds them: the object's other variant in the store (``<digest>`` and ``<digest>.x``
hold the same bytes), a venv's real copy (a reflink or copy the fallback, eject or a mounted venv's
``bin/`` placed), or an upper-layer copy. Each candidate is hashed while it is copied into the
store's staging directory; only bytes with the object's digest replace it, by rename (``Store.
repair_object``). A hardlink of the damaged inode is no candidate: it holds the same damaged bytes.
What has no good copy anywhere is named with the distributions to re-add from their wheels
(``venvfs store add`` checks and repairs the objects it meets).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from venvfs.errors import VenvfsError
from venvfs.store.records import DistRecord, StoredFile
from venvfs.store.repairs import object_problem, repair_object
from venvfs.store.store import Store
from venvfs.store.verify import VerifyReport
from venvfs.venv.materialize import destination
from venvfs.venv.venv import Venv, VenvState


@dataclass
class RepairReport:
    repaired: dict[str, str] = field(default_factory=dict)  # digest -> the file its good bytes came from
    # digest -> the distributions whose wheels hold it (re-adding one repairs it)
    unrepairable: dict[str, list[str]] = field(default_factory=dict)
    # digest -> venvs whose files are hardlinks of the damaged inode: the repair gives the store a new
    # inode, and those names keep the damaged bytes until the venv is materialized again
    hardlinked: dict[str, list[str]] = field(default_factory=dict)


def repair(store: Store, report: VerifyReport, states: dict[str, VenvState]) -> RepairReport:
    """Repair every damaged object of ``report`` that a known copy can supply. Caller holds
    ``store.writing()``."""
    out = RepairReport()
    damaged = set(report.problems)
    if not damaged:
        return out
    users: dict[str, list[tuple[DistRecord, StoredFile]]] = {}
    for key in store.dist_keys():
        with contextlib.suppress(VenvfsError):
            record = store.get_dist(key)
            for f in record.files:
                if f.digest in damaged:
                    users.setdefault(f.digest, []).append((record, f))
    for digest in sorted(damaged):
        uses = users.get(digest, [])
        source: str | None = None
        for executable in sorted({f.executable for _, f in uses}):
            if object_problem(store, digest, executable) is None:
                continue
            candidates = _candidates(store, digest, executable, uses, states)
            with contextlib.suppress(OSError):
                damaged_inode = os.stat(store.local_object_path(digest, executable))
                for path, venv in candidates:
                    with contextlib.suppress(OSError):
                        if venv is not None and os.path.samestat(os.stat(path), damaged_inode):
                            out.hardlinked.setdefault(digest, []).append(venv)
            source = _repair_one(store, digest, executable, [path for path, _ in candidates])
            if source is None:
                break
        if source is not None:
            out.repaired[digest] = source
        else:
            out.unrepairable[digest] = sorted({r.key for r, _ in uses})
    return out


def _repair_one(store: Store, digest: str, executable: bool, candidates: list[Path]) -> str | None:
    for candidate in candidates:
        with contextlib.suppress(OSError):
            if repair_object(store, digest, executable, candidate):
                return str(candidate)
    return None


def _candidates(store: Store, digest: str, executable: bool, uses: list[tuple[DistRecord, StoredFile]],
                states: dict[str, VenvState]) -> list[tuple[Path, str | None]]:
    """Files that may hold the object's good bytes, each with the venv it belongs to (None: the store)."""
    found: list[tuple[Path, str | None]] = [
        (store.local_object_path(digest, executable), None),  # itself: a mode or chunk list fix
        (store.local_object_path(digest, not executable), None),
        # A lower store's copy: read only, like any other source.
        *((Path(f"{lower}/objects/{digest[:2]}/{digest}{x}"), None) for lower in store.lowers for x in ("", ".x")),
    ]
    by_key: dict[str, list[tuple[Venv, VenvState]]] = {}
    for path, state in states.items():
        for key in state.selection:
            by_key.setdefault(key, []).append((Venv(Path(path)), state))
    for record, f in uses:
        for venv, state in by_key.get(record.key, []):
            if state.interpreter is None:
                continue
            if f.in_site_packages and state.layout == "mounted":
                # Read through the mount it would be the damaged object itself; a copy-up may be good.
                found.append((venv.upper_dir / f.path, str(venv.root)))
            else:
                found.append((destination(venv, state.interpreter, record, f), str(venv.root)))
    return [(p, v) for p, v in dict.fromkeys(found) if p.is_file()]
