"""The store's registry of venvs held against the venvs themselves: what gc keeps, how a moved or
copied venv is recognised, and how a damaged state is detected and restored.

Every write of a venv's state (``Venv.write_state``) first writes its copy into the registry entry
``STORE/venvs/<id>.json``, with the path the venv was at. So the store always knows each venv's
selection, whether or not the venv can be read:

- gc keeps the selection of every registered venv that is missing (moved, deleted, on a disk not
  mounted), whose state is damaged, or whose path now holds another venv, from the registry's copy,
  until ``store gc --forget-missing``. Only a venv that now names another store is forgotten unasked.
- A state file is trusted when it parses, has the current format and its checksum matches (a wheel's
  ``.data/data/.venvfs/state.json``, an editor or ``pip uninstall`` cannot keep it matching by
  accident). A trusted state wins over the registry copy, which is then refreshed: the copy is a
  backup, and a command killed between the two writes leaves the state the newer of the two only
  when the copy was written first and the state not at all, which the next command's write repairs.
- A state that is not trusted, or is missing from a venv whose ``.venvfs/`` still holds venvfs's
  files, is "damaged": every command but ``umount`` and ``status`` refuses it with exit 4, and
  ``mount`` restores it from the registry entry recorded for the venv's path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from venvfs.errors import Busy, StateDamaged, VenvError
from venvfs.fsutil import read_json
from venvfs.store import gc
from venvfs.store.gc import GcReport
from venvfs.store.store import RegistryEntry, Store, registry_entry
from venvfs.venv.venv import Venv, VenvState, new_venv_id, state_problem

Condition = Literal["live", "missing", "damaged", "replaced", "elsewhere"]

_WHY = {
    "missing": "not found (moved, deleted, or on a disk that is not mounted)",
    "damaged": "its venvfs state is damaged or unreadable",
    "replaced": "another venv is at that path now (this one was moved or deleted)",
    "elsewhere": "it uses another store now",
}


@dataclass
class RegisteredVenv:
    entry: RegistryEntry
    condition: Condition
    state: VenvState | None  # live: as the venv has it; otherwise the registry's copy (None: no copy)

    @property
    def path(self) -> Path:
        return self.entry.path

    @property
    def why(self) -> str:
        return "in use" if self.condition == "live" else _WHY[self.condition]

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "id": self.entry.id, "condition": self.condition, "why": self.why,
                "distributions": list(self.state.selection) if self.state else None}


def registry_copy(entry: RegistryEntry) -> VenvState | None:
    if entry.state is None:
        return None
    try:
        return VenvState.from_json(entry.state)
    except (ValueError, KeyError, TypeError):
        return None


def _has_venvfs_files(venv: Venv) -> bool:
    """Whether ``.venvfs/`` holds more than the lock any command creates: then a missing state.json was
    lost (``pip uninstall`` of a wheel that shipped one deletes it), not never written."""
    with contextlib.suppress(OSError):
        return any(p.name != "lock" for p in venv.state_dir.iterdir())
    return False


def registered(store: Store) -> list[RegisteredVenv]:
    """Every venv in the store's registry, and whether it can be read where it was last seen."""
    out = []
    for entry in store.registry():
        venv = Venv(entry.path)
        copy = registry_copy(entry)
        condition: Condition
        state: VenvState | None = copy
        if not (venv.root / "pyvenv.cfg").is_file():
            condition = "missing"
        else:
            try:
                read = venv.read_state()
            except StateDamaged:
                condition = "damaged"
            except (VenvError, OSError):
                condition = "damaged" if _has_venvfs_files(venv) else "replaced"
            else:
                # An entry from before ids has no copy and matches the id-less state of its venv.
                if read.id == entry.id or (read.id is None and entry.state is None):
                    condition = "live" if Path(read.store) == store.root else "elsewhere"
                    state = read
                else:
                    condition = "replaced"
        out.append(RegisteredVenv(entry, condition, state))
    return out


def kept_selections(venvs: list[RegisteredVenv]) -> dict[str, VenvState]:
    """Path -> state of each venv whose distributions must stay (all but those using another store).
    A venv found at its path counts with its registry copy too: a command killed between writing the
    copy and the state leaves them different, and both must survive until the next write."""
    kept: dict[str, VenvState] = {}
    for rv in venvs:
        if rv.condition == "elsewhere" or rv.state is None:
            continue
        # A damaged venv is still the one at its path; a missing or replaced one is not (another venv
        # may be registered at that path now).
        here = rv.condition in ("live", "damaged") and str(rv.path) not in kept
        name = str(rv.path) if here else f"{rv.path} ({rv.condition}, id {rv.entry.id[:8]})"
        kept[name] = rv.state
        copy = registry_copy(rv.entry) if rv.condition == "live" else None
        if copy is not None and copy.selection != rv.state.selection:
            kept[f"{rv.path} (registry copy)"] = copy
    return kept


# -- the venv's side: called by every command on a venv ---------------------------------------------

def state_store(venv: Venv) -> Path | None:
    """The store a venv's state names, read even from a damaged state when it still says so."""
    with contextlib.suppress(OSError, ValueError):
        data = read_json(venv.state_path)
        if isinstance(data, dict) and isinstance(data.get("store"), str) and data["store"]:
            return Path(data["store"])
    return None


@dataclass
class StateCheck:
    state: VenvState | None  # the venv's state when it can be trusted
    problem: str | None  # why it cannot be (None: fine, or not managed at all)
    backup: RegistryEntry | None  # the registry entry a damaged state can be restored from

    @property
    def backup_state(self) -> VenvState | None:
        return registry_copy(self.backup) if self.backup is not None else None

    def message(self, venv: Venv, store: Store) -> str:
        if self.backup_state is not None:
            return f"{self.problem}; `venvfs mount {venv.root}` restores it from the store's registry"
        return f"{self.problem}; the store {store.root} has no copy to restore it from"


def _backup_for(venv: Venv, store: Store) -> RegistryEntry | None:
    """The newest registry entry with a usable copy for the venv's path."""
    entries = [e for e in store.registry_entries_at(venv.root) if registry_copy(e) is not None]
    if not entries:
        return None
    return max(entries, key=lambda e: e.file.stat().st_mtime if e.file.exists() else 0.0)


def check(venv: Venv, store: Store) -> StateCheck:
    """The venv's state, or why it cannot be trusted: unreadable, not venvfs's, no id while the store
    knows the venv by one, an id the store does not know while it knows another for this path."""
    try:
        state = venv.read_state()
    except StateDamaged as e:
        why = state_problem(e.__cause__) if e.__cause__ is not None else str(e)
        return StateCheck(None, f"{venv.state_path} is damaged ({why})", _backup_for(venv, store))
    except VenvError:
        if _has_venvfs_files(venv):
            backup = _backup_for(venv, store)
            if backup is not None:
                return StateCheck(None, f"{venv.state_path} is missing although {venv.state_dir} holds "
                                  "venvfs's files (a wheel's uninstall may have deleted it)", backup)
        return StateCheck(None, None, None)
    if Path(state.store) != store.root:
        return StateCheck(state, None, None)
    if state.id is None or registry_entry(store, state.id) is None:
        backup = _backup_for(venv, store)
        if backup is not None:
            what = "has no venv id" if state.id is None else f"has the id {state.id}, unknown to the store"
            return StateCheck(None, f"{venv.state_path} {what}, but the store knows {venv.root} as "
                              f"{backup.id}: it was replaced", backup)
    return StateCheck(state, None, None)


def sync(venv: Venv, store: Store, *, damaged_ok: bool = False) -> StateCheck:
    """Bring the registry up to date with a venv a command is about to use: a moved venv's entry gets
    its new path (one entry, not two), a copied venv (its id still names the original, readable where
    it was) gets an id of its own, a state from before ids gets one, a venv gc forgot is registered
    again. A damaged state raises ``StateDamaged`` unless ``damaged_ok``. Call it before taking the
    venv lock: it takes the lock itself when it has something to write."""
    result = check(venv, store)
    if result.problem is not None:
        if damaged_ok:
            return result
        raise StateDamaged(result.message(venv, store))
    if _registration_needed(venv, store, result.state) is None:
        return result
    try:
        with venv.locked():
            # Again under the lock: a command that held it may have changed the state meanwhile.
            result = check(venv, store)
            state = _registration_needed(venv, store, result.state)
            if state is not None:
                venv.write_state(state)
    except Busy:
        pass  # the command holding the lock writes the state, and with it the registry
    return result


def _registration_needed(venv: Venv, store: Store, state: VenvState | None) -> VenvState | None:
    """The state to write for the registry to be right about ``venv``; None when it already is."""
    if state is None or Path(state.store) != store.root:
        return None
    entry = registry_entry(store, state.id) if state.id is not None else None
    if entry is not None and entry.path != venv.root:
        original = Venv(entry.path)
        with contextlib.suppress(VenvError, OSError):
            if (original.root / "pyvenv.cfg").is_file() and original.read_state().id == state.id:
                state.id = new_venv_id()  # a copy: the original keeps its entry
                return state
    if entry is None or entry.path != venv.root or entry.checksum != state.to_json()["checksum"]:
        return state
    return None


def repair(venv: Venv, store: Store) -> str | None:
    """Restore a damaged state from the registry (``venvfs mount``); returns the one line to say so,
    or None when the state was fine."""
    result = check(venv, store)
    if result.problem is None:
        return None
    restored = result.backup_state
    if result.backup is None or restored is None:
        raise StateDamaged(result.message(venv, store))
    restored.id = result.backup.id
    if restored.interpreter is not None:
        # The registry keeps no tags (``VenvState.registry_copy``): ask the interpreter again.
        try:
            restored.interpreter = venv.probe_interpreter()
        except VenvError:
            restored.interpreter = None  # probed again by the next command that needs it
    with venv.locked(wait=True):
        venv.write_state(restored)
    return (f"{venv.state_path} was damaged; restored from the store's registry "
            f"({len(restored.selection)} distribution(s), {restored.layout} layout)")


# -- gc ---------------------------------------------------------------------------------------------

@dataclass
class GcPlan:
    forget: list[RegisteredVenv]  # entries gc removes (listed to the user first)
    kept: list[RegisteredVenv]  # venvs not found as registered whose selections gc keeps
    live: dict[str, VenvState]  # path -> state of everything whose distributions stay


def plan_gc(store: Store, *, forget_missing: bool) -> GcPlan:
    """Which registered venvs gc forgets: those that now name another store, and with
    ``forget_missing`` those missing or replaced by another venv at their path. A damaged venv is
    never forgotten: it is there, and its registry copy is what `venvfs mount` repairs it from."""
    venvs = registered(store)
    forget = [v for v in venvs if v.condition == "elsewhere"
              or (forget_missing and v.condition in ("missing", "replaced"))]
    kept = [v for v in venvs if v.condition != "live" and v not in forget]
    return GcPlan(forget, kept, kept_selections([v for v in venvs if v not in forget]))


def collect(store: Store, plan: GcPlan, *, dry_run: bool, retire: Collection[str] = ()) -> GcReport:
    """Remove what no venv of ``plan.live`` selects, then forget ``plan.forget``. Caller holds
    ``store.collecting()``."""
    from venvfs.venv.view import view_cache_key

    report = gc.collect(store, {p: s.selection for p, s in plan.live.items()}, dry_run=dry_run,
                        live_views={view_cache_key(s) for s in plan.live.values()}, retire=retire)
    if not dry_run:
        for v in plan.forget:
            store.forget_venv(v.entry)
    report.forgotten_venvs = [str(v.path) for v in plan.forget]
    return report
