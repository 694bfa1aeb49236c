"""An add or remove in progress: the marker it leaves while the venv's files match neither the old
selection nor the new one, and how to finish one that a killed command left half done.

Apart from ``select`` so that ``layout.resume`` can finish it without importing ``select`` (which
adopts, and so imports the layout itself).
"""

from __future__ import annotations

import contextlib

from venvfs.errors import VenvfsError
from venvfs.fsutil import read_json
from venvfs.store.store import Store
from venvfs.venv import mountinfo
from venvfs.venv.linkmode import Linker, LinkMode
from venvfs.venv.materialize import materialize, remove_files
from venvfs.venv.venv import Venv, VenvState

# Present from the first file an add/remove changes until the venv's files match the new selection:
# {"remove": [keys whose files go], "place": [keys whose files come], "selection": [the new one]}.
# (layout.interrupted looks for it.)
SELECTING = "changing-selection"


def finish_interrupted(venv: Venv, store: Store, state: VenvState) -> str | None:
    """Finish an add/remove a killed command left half done (caller holds the venv lock; nothing is
    mounted in the materialized layout). Returns what was done, None if nothing was pending.
    Idempotent: removing absent files and placing present ones change nothing."""
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
    for key in removed:
        # A record gc took meanwhile leaves nothing to look up: its files stay (the venv's own then).
        with contextlib.suppress(VenvfsError):
            remove_files(venv, state.interpreter, store.get_dist(key), site_packages=site_packages)
    state.selection = [k for k in selection if store.has_dist(k)]
    venv.write_state(state)
    # Only what the add was placing: the rest of the venv may hold files the user edited.
    records = [store.get_dist(k) for k in place if k in state.selection]
    materialize(venv, store, state, linker_for(LinkMode(state.link_mode or "auto"), state), records=records,
                site_packages=site_packages)
    if state.layout == "mounted":
        mountinfo.reload(venv)
    marker.unlink()
    return f"finished the interrupted change of the selection of {venv.root}"


def linker_for(link_mode: LinkMode, state: VenvState) -> Linker:
    """In the mounted layout only scripts, headers and data are placed, files a user or tool may write
    in place: never as hardlinks of store objects (few and small, so a copy costs little)."""
    if state.layout == "mounted":
        return Linker(LinkMode.AUTO if link_mode == LinkMode.HARDLINK else link_mode, allow_hardlink=False)
    return Linker(link_mode)
