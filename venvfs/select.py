"""``venvfs add`` and ``venvfs remove``: change which stored distributions a venv uses.

A requirement is matched against stored builds with packaging: the specifier decides the versions,
the venv's own interpreter tags (most preferred first) decide between builds of one version.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import parse_tag
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from venvfs import daemon
from venvfs.adopt import adopt
from venvfs.bytecode import ensure_bytecode
from venvfs.errors import NoMatchingDistribution, VenvError
from venvfs.linkmode import Linker, LinkMode
from venvfs.materialize import materialize, remove_files
from venvfs.records import DistRecord
from venvfs.store import Store
from venvfs.venv import InterpreterInfo, Venv, VenvState
from venvfs.wheel import ingest_wheel


@dataclass
class SelectReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    link_summary: str = ""


def tag_rank(record: DistRecord, interp: InterpreterInfo) -> int | None:
    """Position of the record's best tag in the interpreter's preference list (lower is better)."""
    ranks = {t: i for i, t in enumerate(interp.tags)}
    best = [ranks[str(t)] for tag in record.tags for t in parse_tag(tag) if str(t) in ranks]
    return min(best) if best else None


def resolve(store: Store, interp: InterpreterInfo, requirement: str) -> DistRecord:
    try:
        req = Requirement(requirement)
    except InvalidRequirement as e:
        # packaging's message spans lines (it draws a caret under the error); keep its first.
        first = str(e).splitlines()[0] if str(e) else "invalid"
        raise NoMatchingDistribution(f"{requirement!r} is neither a wheel file nor a requirement ({first})") from None
    if req.marker is not None and interp.markers and not req.marker.evaluate(interp.markers):
        raise NoMatchingDistribution(f"{requirement}: its marker does not apply to this venv's Python")
    name = canonicalize_name(req.name)
    candidates: list[tuple[Version, int, DistRecord]] = []
    seen: list[str] = []
    # Keys start with the canonical name: read only the records that can match (a store holds thousands).
    for key in store.dist_keys():
        if not key.startswith(name + "-"):
            continue
        record = store.get_dist(key)
        if canonicalize_name(record.name) != name:
            continue  # "foo" matched the start of "foo-bar-..."
        seen.append(f"{record.version} ({', '.join(record.tags) or 'no tags'})")
        try:
            version = Version(record.version)
        except InvalidVersion:
            continue
        if not req.specifier.contains(version, prereleases=True) or not record.is_complete:
            continue
        rank = tag_rank(record, interp)
        if rank is not None:
            candidates.append((version, -rank, record))
    if not candidates:
        have = "; stored: " + ", ".join(seen) if seen else "; nothing of that name is stored"
        raise NoMatchingDistribution(f"no stored build of {requirement} fits Python {interp.version} on "
                                     f"{interp.platform}{have}")
    candidates.sort(key=lambda c: (c[0], c[1]))
    return candidates[-1][2]


def _selected_records(store: Store, state: VenvState) -> list[DistRecord]:
    return [store.get_dist(k) for k in state.selection]


def change_selection(venv: Venv, store: Store, *, add: Sequence[str] = (), remove: Iterable[str] = (),
                     link_mode: LinkMode = LinkMode.AUTO) -> SelectReport:
    """Add wheels/requirements and remove names; the venv's files follow its layout."""
    with venv.locked():
        if not venv.is_managed:
            # A fresh venv (``uv venv``): adopting its few files makes it managed, then it selects.
            adopt(venv, store, already_locked=True)
        state = venv.read_state()
        if Path(state.store) != store.root:
            raise VenvError(f"{venv.root} uses the store {state.store}, not {store.root}")
        if state.interpreter is None:
            state.interpreter = venv.probe_interpreter()
        interp = state.interpreter
        with store.writing():
            # Held until the state names the new records, so a concurrent gc cannot collect them.
            wanted: list[DistRecord] = []
            for spec in add:
                path = Path(spec)
                if spec.endswith(".whl") and path.exists():
                    wanted.append(ingest_wheel(store, path)[0])
                else:
                    wanted.append(resolve(store, interp, spec))
            report = _apply(venv, store, state, interp, wanted, remove, link_mode)
    return report


def _apply(venv: Venv, store: Store, state: VenvState, interp: InterpreterInfo, wanted: list[DistRecord],
           remove: Iterable[str], link_mode: LinkMode) -> SelectReport:
    report = SelectReport()
    drop = {canonicalize_name(n) for n in remove} | {canonicalize_name(r.name) for r in wanted}
    current = _selected_records(store, state)
    unknown = {canonicalize_name(n) for n in remove} - {canonicalize_name(r.name) for r in current}
    if unknown:
        raise NoMatchingDistribution(f"not selected in {venv.root}: {', '.join(sorted(unknown))}")
    dropped = [r for r in current if canonicalize_name(r.name) in drop and r.key not in {w.key for w in wanted}]
    kept = [r for r in current if r not in dropped]
    for record in dropped:
        remove_files(venv, interp, record, site_packages=state.layout == "materialized")
        report.removed.append(record.key)
    new = [w for w in wanted if w.key not in {k.key for k in kept}]
    state.selection = [r.key for r in kept] + [r.key for r in new]
    venv.write_state(state)
    ensure_bytecode(store, wanted, interp, venv.python)
    linker = Linker(link_mode)
    # All of ``wanted``, not only what is new to the selection: an add killed after the state was
    # written finishes when run again (files already in place are kept).
    if state.layout == "materialized":
        materialize(venv, store, state, linker, records=wanted)
    else:
        materialize(venv, store, state, linker, records=wanted, site_packages=False)
        # The view renders each distribution's RECORD for this venv: nothing to write here.
        daemon.reload(venv)
    report.added = [r.key for r in new]
    report.link_summary = linker.summary()
    if linker.used:
        state.link_mode = linker.used.value
        venv.write_state(state)
    return report
