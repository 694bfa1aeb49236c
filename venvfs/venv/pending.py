"""What pip or uv installed into a mounted venv that the store does not serve yet: "pending ingest".

Read from the upper layer alone (no mount, no daemon, no lock), so ``venvfs status`` can say it and
the daemon can decide cheaply whether an ingest is worth starting.

A distribution is a candidate when its top-level ``*.dist-info`` in the upper layer holds a
``RECORD``: installers write RECORD last (pip by a temp file and a rename, uv after every other
file), and the RECORD of a stored distribution stays the venv's own, so every distribution of a
mounted venv has one there. What tells them apart is ``VENV/.venvfs/ingest-seen.json``: the ingest
records there the RECORD it last settled for each dist-info (inode, size, mtime: an installer
writes a new file, so any reinstall changes it) and how it ended. A RECORD not seen before, or
changed since, is pending; one the last ingest could not take (files missing or differing from
their RECORD hash: edited after the install) stays pending with that reason until it changes or
``venvfs commit`` takes it. Editable installs (PEP 660, said in PEP 610's ``direct_url.json``) are
never candidates: their files point at a source tree of this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from venvfs.fsutil import atomic_write_json, read_json
from venvfs.venv.upper import OPAQUE
from venvfs.venv.venv import Venv, VenvState

SEEN_FILE = "ingest-seen.json"
INGESTED = "ingested"  # stored and selected; the upper copies were queued to drop
SETTLED = "settled"  # already what the selection serves (an adopted dist, or nothing new)
EDITABLE = "editable"  # the venv's own, never ingested


@dataclass
class PendingDist:
    dist_info: str
    reason: str | None = None  # None: waits for the next ingest; else why the last one left it


def seen_path(venv: Venv) -> Path:
    return venv.state_dir / SEEN_FILE


def record_signature(dist_info: Path) -> list[int] | None:
    """Identity of ``dist_info/RECORD`` as written: a rewrite is a new inode or a new mtime."""
    try:
        st = os.stat(dist_info / "RECORD", follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def upper_dist_infos(venv: Venv) -> dict[str, list[int]]:
    """Top-level dist-info directories of the upper layer that hold a RECORD, with its signature."""
    out: dict[str, list[int]] = {}
    try:
        entries = list(os.scandir(venv.upper_dir))
    except OSError:
        return out
    for entry in entries:
        # A project name starts with a letter or digit: "~umpy-2.3.5.dist-info" is pip's stash of an
        # old version while it upgrades (renamed back if the upgrade fails), not a distribution.
        if (entry.name.endswith(".dist-info") and entry.name[:1].isalnum()
                and entry.is_dir(follow_symlinks=False)):
            sig = record_signature(Path(entry.path))
            if sig is not None:
                out[entry.name] = sig
    return out


def read_seen(venv: Venv) -> dict[str, dict[str, Any]]:
    try:
        data = read_json(seen_path(venv))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def write_seen(venv: Venv, seen: dict[str, dict[str, Any]]) -> None:
    # A cache of work done: losing it costs one more check, never a file, so no fsync.
    atomic_write_json(seen_path(venv), seen, durable=False)


def is_editable(dist_info: Path) -> bool:
    """PEP 660 editable installs say so in PEP 610's direct_url.json."""
    try:
        data = json.loads((dist_info / "direct_url.json").read_text())
    except (OSError, ValueError):
        return False
    dir_info = data.get("dir_info") if isinstance(data, dict) else None
    return isinstance(dir_info, dict) and dir_info.get("editable") is True


def pending(venv: Venv, selected_dist_infos: Collection[str]) -> list[PendingDist]:
    """Distributions installed in the upper layer that an ingest would look at, in name order.

    ``selected_dist_infos``: the dist-info names of the selection. One of those with no entry in the
    seen file is a distribution stored before this venv was ever ingested automatically (adopted,
    committed): settled, not pending, unless ``reinstalled``.
    """
    seen = read_seen(venv)
    out = []
    for name, sig in sorted(upper_dist_infos(venv).items()):
        entry = seen.get(name)
        if entry is None and name in selected_dist_infos and not reinstalled(venv, name):
            continue
        if entry is not None and entry.get("sig") == sig:
            result = str(entry.get("result", ""))
            if result not in (INGESTED, SETTLED, EDITABLE):
                out.append(PendingDist(name, result))
            continue
        if is_editable(venv.upper_dir / name):
            continue
        out.append(PendingDist(name))
    return out


def reinstalled(venv: Venv, dist_info: str) -> bool:
    """Whether an installer replaced the whole ``dist_info`` directory over what the store served:
    pip and uv delete a distribution's directories before they write it again, which leaves them
    opaque in the upper layer. A distribution selected while the venv was mounted (``venvfs add``,
    ``venvfs uv``/``pip``) has no RECORD of its own there for the seen file to know it by, so its
    reinstall is an unseen, selected dist-info like an adopted one, told apart only by this."""
    return os.path.lexists(venv.upper_dir / dist_info / OPAQUE)


def mark_seen(venv: Venv, results: dict[str, tuple[list[int] | None, str]]) -> None:
    """Record how the ingest left each dist-info (``result`` as in ``PendingDist.reason``); entries of
    dist-infos no longer in the upper layer go."""
    seen = read_seen(venv)
    before = {name: dict(entry) for name, entry in seen.items()}
    for name, (sig, result) in results.items():
        if sig is not None:
            seen[name] = {"sig": sig, "result": result}
    present = set(upper_dist_infos(venv))
    for name in list(seen):
        if name not in present:
            del seen[name]
    if seen != before:  # an ingest that found nothing new writes nothing
        with contextlib.suppress(OSError):
            write_seen(venv, seen)


STASH_MAX_AGE = 600.0  # seconds: a stash older than this was left by an installer that died


def installer_busy(venv: Venv) -> str | None:
    """The name of a fresh ``~``-prefixed entry at the top of the upper layer: pip stashes what it
    uninstalls under such names until the whole install succeeded (and renames them back if it
    fails), so while one exists an install is half done."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(venv.upper_dir) as it:
        for entry in it:
            if entry.name.startswith("~"):
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_ctime < STASH_MAX_AGE:
                        return entry.name
    return None


EXPECT_FILE = "ingest-expect.json"


def expect_path(venv: Venv) -> Path:
    return venv.state_dir / EXPECT_FILE


def unconfirmed(venv: Venv) -> set[str]:
    """Keys an ingest is selecting whose RECORD in the upper layer is no longer the one it stored
    (``ingest-expect.json``: key -> [dist-info, RECORD signature]).

    The worker reads a distribution, then selects it; an installer may remove or replace it in
    between (``pip install demo==1.0`` right after ``demo==2.0``). Selected anyway, its store files
    would show where the installer just deleted them, with no whiteout to hide them (they were upper
    files then). The daemon leaves such keys out of the view it switches to, on its request loop,
    so no request sees them; the worker then takes them out of the selection."""
    return {key for key, (name, sig) in expected(venv).items() if record_signature(venv.upper_dir / name) != sig}


def leave_out_unconfirmed(venv: Venv, state: VenvState) -> set[str]:
    """Take the ``unconfirmed`` keys out of ``state``'s selection (the selection a daemon serves);
    returns them."""
    gone = unconfirmed(venv)
    if gone:
        state.selection = [k for k in state.selection if k not in gone]
    return gone


def expected(venv: Venv) -> dict[str, tuple[str, list[int] | None]]:
    """``ingest-expect.json``: key -> (dist-info, the RECORD signature the ingest read)."""
    try:
        data = read_json(expect_path(venv))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): (str(v[0]), v[1]) for k, v in data.items() if isinstance(v, list) and len(v) == 2}
