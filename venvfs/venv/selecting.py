"""An add or remove in progress: the marker it leaves while the venv's files match neither the old
selection nor the new one, and how to finish one that a killed command left half done.

Apart from ``select`` so that ``layout.resume`` can finish it without importing ``select`` (which
adopts, and so imports the layout itself).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from venvfs.errors import VenvfsError
from venvfs.fsutil import read_json
from venvfs.store.records import DistRecord
from venvfs.store.store import Store
from venvfs.venv import mountinfo
from venvfs.venv.upper import WHITEOUT_PREFIX, Upper
from venvfs.venv.venv import Venv, VenvState

if TYPE_CHECKING:
    from venvfs.venv.linkmode import Linker, LinkMode

# The materializer and the linker are imported where a change is finished: ``layout.interrupted``
# reads SELECTING on every `venvfs mount`, and almost never finds one to finish.

# Present from the first file an add/remove changes until the venv's files match the new selection:
# {"remove": [keys whose files go], "place": [keys whose files come], "selection": [the new one]}.
# (layout.interrupted looks for it.)
SELECTING = "changing-selection"


def finish_interrupted(venv: Venv, store: Store, state: VenvState) -> str | None:
    """Finish an add/remove a killed command left half done (caller holds the venv lock; nothing is
    mounted in the materialized layout). Returns what was done, None if nothing was pending.
    Idempotent: removing absent files and placing present ones change nothing."""
    from venvfs.venv.linkmode import LinkMode
    from venvfs.venv.materialize import materialize, remove_files

    marker = venv.state_dir / SELECTING
    try:
        pending = read_json(marker)
        removed, place, selection = list(pending["remove"]), list(pending["place"]), list(pending["selection"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        removed, place, selection = [], [], list(state.selection)  # unreadable: the state decides
    if state.interpreter is None:
        state.interpreter = venv.probe_interpreter()
    site_packages = state.layout == "materialized"
    dropped = []
    for key in removed:
        # A record gc took meanwhile leaves nothing to look up: its files stay (the venv's own then).
        with contextlib.suppress(VenvfsError):
            dropped.append(store.get_dist(key))
            remove_files(venv, state.interpreter, dropped[-1], site_packages=site_packages)
    if not site_packages:
        kept = [store.get_dist(k) for k in selection if k not in place and store.has_dist(k)]
        clear_upper(venv, state, dropped, kept)
    state.selection = [k for k in selection if store.has_dist(k)]
    venv.write_state(state)
    # Only what the add was placing: the rest of the venv may hold files the user edited.
    records = [store.get_dist(k) for k in place if k in state.selection]
    materialize(venv, store, state, linker_for(LinkMode(state.link_mode or "auto"), state), records=records,
                site_packages=site_packages)
    if state.layout == "mounted":
        mountinfo.reload(venv, store=store)
    marker.unlink()
    return f"finished the interrupted change of the selection of {venv.root}"


def clear_upper(venv: Venv, state: VenvState, dropped: Sequence[DistRecord], kept: Sequence[DistRecord]) -> None:
    """The mounted layout's ``remove_files``: what the upper layer holds at the paths of ``dropped``
    distributions goes (the venv's copies of installer metadata, RECORD above all, which the view
    stops rendering; edited or recompiled copies; whiteouts), as a plain uninstall leaves nothing of
    them. Paths ``kept`` distributions provide are left alone; paths the build replacing a dropped one
    provides are not (an edit of the old version's file goes, as a plain upgrade overwrites it and
    ``remove_files`` deletes it in the materialized layout). ``state`` names the selection so far
    (the caller writes the new one after).

    A running daemon caches which names are upper: the removal then goes through the mount, after
    a reload to the selection without ``dropped`` (and without what is being added) so that no lower
    entry is there to whiteout, and the reload itself drops the whiteouts that hide nothing any more.
    """
    from venvfs.venv.materialize import remove_paths, site_leftovers

    if not dropped:
        return
    interp = state.interpreter
    assert interp is not None
    provided = {f.path for r in kept for f in r.site_files()} | {f"{r.dist_info}/RECORD" for r in kept}
    paths = sorted({p for r in dropped for p in (*(f.path for f in r.site_files()), *site_leftovers(interp, r))}
                   - provided)
    upper = venv.upper_dir
    dirs: dict[str, bool] = {"": upper.is_dir()}
    present = [p for p in paths if _in_upper(upper, p, dirs)]
    # A whiteout of a whole package directory (an installer deleted and recreated it) hides what
    # a later build puts there as surely as one of a file does.
    kept_dirs = {d for p in provided for d in _parents(p)}
    hidden_dirs = [d for d in sorted({d for p in paths for d in _parents(p)} - kept_dirs)
                   if _whiteout_in_upper(upper, d, dirs)]
    if not present and not hidden_dirs:
        return  # nothing of theirs is the venv's own: the next view shows none of them
    if mountinfo.daemon_pid(venv) is None:
        targets = [(upper, p) for p in present]
        targets += [(upper, _whiteout_of(p)) for p in [*present, *hidden_dirs]]
        remove_paths(venv, targets)
        _drop_bare_opaque(venv, {posixpath.dirname(p) for p in present})
        return
    # The reload reconciles only directories the daemon has loaded: list the ones that hold what
    # goes, or a whiteout in one never visited since the daemon started would outlive its dist and
    # hide the file of a later build at that path. (Listing through the mount only reads.)
    for parent in sorted({posixpath.dirname(p) for p in [*present, *hidden_dirs]}):
        with contextlib.suppress(OSError):
            os.listdir(venv.site_packages / parent)
    kept_keys = {r.key for r in kept}
    state.selection = [k for k in state.selection if k in kept_keys]
    venv.write_state(state)
    mountinfo.reload(venv)
    # tidy: a directory that held only a whiteout the reload dropped is empty now, and a plain
    # uninstall leaves no empty package directory.
    remove_paths(venv, [(venv.site_packages, p) for p in present], tidy=True)


def _drop_bare_opaque(venv: Venv, dirs: set[str]) -> None:
    """Remove the upper directories (deepest first, and their parents) left holding nothing but an
    opaque marker: a package directory an installer replaced (finding 1) whose files just went.
    Left, it would show as an empty directory, and hide the package of a later build at that path.
    (No daemon runs: the upper layer is only ours. Each step is relative to a directory fd reached
    without following a link, like every upper-layer change.)"""
    layer = Upper(venv.upper_dir, venv.state_dir / "work")
    try:
        for rel in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
            parts = rel.split("/") if rel else []
            while parts:
                try:
                    listing = layer.listdir(parts)
                    if listing.entries or listing.whiteouts:
                        break
                    layer.clear_markers(parts)
                    with layer.dirfd(parts[:-1]) as pfd:
                        os.rmdir(parts[-1], dir_fd=pfd)
                except OSError:
                    break
                parts = parts[:-1]
    finally:
        layer.close()


def _parents(rel: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _whiteout_of(rel: str) -> str:
    return posixpath.join(posixpath.dirname(rel), WHITEOUT_PREFIX + posixpath.basename(rel))


def _whiteout_in_upper(upper: Path, rel: str, dirs: dict[str, bool]) -> bool:
    return _upper_dir(upper, posixpath.dirname(rel), dirs) and os.path.lexists(upper / _whiteout_of(rel))


def _in_upper(upper: Path, rel: str, dirs: dict[str, bool]) -> bool:
    """Whether the upper layer has an entry or a whiteout at ``rel``, read without following links (a
    symlinked upper directory is the venv's own entry, never a way elsewhere). ``dirs`` caches which
    directories are real ones: a large dist has thousands of files in a few hundred directories."""
    parent, _, name = rel.rpartition("/")
    if not _upper_dir(upper, parent, dirs):
        return False
    here = upper / parent
    return os.path.lexists(here / name) or os.path.lexists(here / (WHITEOUT_PREFIX + name))


def _upper_dir(upper: Path, rel: str, dirs: dict[str, bool]) -> bool:
    found = dirs.get(rel)
    if found is None:
        parent = rel.rpartition("/")[0]
        path = upper / rel
        found = dirs[rel] = _upper_dir(upper, parent, dirs) and path.is_dir() and not path.is_symlink()
    return found


def linker_for(link_mode: LinkMode, state: VenvState) -> Linker:
    """In the mounted layout only scripts, headers and data are placed, files a user or tool may write
    in place: never as hardlinks of store objects (few and small, so a copy costs little)."""
    from venvfs.venv.linkmode import Linker, LinkMode

    if state.layout == "mounted":
        return Linker(LinkMode.AUTO if link_mode == LinkMode.HARDLINK else link_mode, allow_hardlink=False)
    return Linker(link_mode)
