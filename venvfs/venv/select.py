"""``venvfs add`` and ``venvfs remove``: change which stored distributions a venv uses.

A requirement is matched against stored builds with packaging: the specifier decides the versions,
the venv's own interpreter tags (most preferred first) decide between builds of one version.
Builds that still tie are one build if their content is the same (``DistRecord.content_digest``:
the installer's own metadata aside), and any of them serves; builds of different content are never
chosen between silently (a wheel that claims a stored name would win by key order): ``AmbiguousBuild``
names them, and a store key given to ``venvfs add`` selects one. A key counts only as the user's
argument, never in a Requires-Dist, where it would let a wheel's metadata pick a build.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.parser import Parser
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import parse_tag
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from venvfs.errors import AmbiguousBuild, NoMatchingDistribution, UsageError, VenvError, VenvfsError
from venvfs.fsutil import atomic_write_json, crash_point
from venvfs.store.bytecode import ensure_bytecode
from venvfs.store.limits import IngestLimits
from venvfs.store.records import INSTALLER_NAME, DistRecord, Scheme, StoredFile
from venvfs.store.store import Store, keeping_records
from venvfs.store.verify import vouch_lower
from venvfs.store.wheel import ingest_wheel
from venvfs.venv import layout, mountinfo
from venvfs.venv.adopt import adopt
from venvfs.venv.linkmode import LinkMode
from venvfs.venv.materialize import check_placeable, materialize, remove_files
from venvfs.venv.selecting import SELECTING, clear_upper, linker_for
from venvfs.venv.venv import InterpreterInfo, Venv, VenvState


@dataclass
class SelectReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    link_summary: str = ""
    hardlink_warning: str | None = None


# A store key (records.DistRecord.key): the canonical name, the version, 16 hex digits of the manifest.
_KEY = re.compile(r"[a-z0-9][a-z0-9.-]*-[^/\s]+-[0-9a-f]{16}")


def looks_like_key(spec: str) -> bool:
    """Whether ``spec`` has the form of a store key (whether one is stored is another question)."""
    return _KEY.fullmatch(spec) is not None


def tag_rank(record: DistRecord, interp: InterpreterInfo) -> int | None:
    """Position of the record's best tag in the interpreter's preference list (lower is better)."""
    ranks = _ranks(interp.tags)
    best = [ranks[str(t)] for tag in record.tags for t in parse_tag(tag) if str(t) in ranks]
    return min(best) if best else None


@functools.lru_cache(maxsize=4)
def _ranks(tags: tuple[str, ...]) -> dict[str, int]:
    # Asked twice per record a selection reads; the dict of ~900 tags was 0.2 ms to build each time.
    return {t: i for i, t in enumerate(tags)}


def _expanded_tags(record: DistRecord) -> set[str]:
    return {str(t) for tag in record.tags for t in parse_tag(tag)}


def describe_build(store: Store, record: DistRecord) -> str:
    """``KEY (from wheel F, sha256 …, stored DATE)``: enough to tell builds apart and choose one."""
    kind, _, where = record.source.partition(":")
    if kind == "wheel":
        origin = f"wheel {where}" + (f" sha256 {record.source_sha256[:12]}…" if record.source_sha256 else "")
    elif kind == "adopted":
        origin = f"adopted from {where}"
    elif kind == "installed":  # ingested from a mounted venv: "installed:<installer>:<venv>"
        installer, _, venv = where.partition(":")
        origin = f"installed by {installer} in {venv}"
    else:
        origin = "origin not recorded"
    when = record.stored_at.replace("T", " ").removesuffix("Z")[:16]
    if not when:
        with contextlib.suppress(OSError):  # a record from before stored_at: its file's mtime says when
            when = datetime.fromtimestamp(store.dist_path(record.key).stat().st_mtime, timezone.utc).strftime(
                "%Y-%m-%d %H:%M")
    return f"{record.key} ({origin}{', stored ' + when + ' UTC' if when else ''})"


def describe_builds(store: Store, records: Iterable[DistRecord]) -> str:
    """Each build described, those of one content joined by `` = ``, different contents by ``; ``."""
    groups: dict[str, list[DistRecord]] = {}
    for record in sorted(records, key=lambda r: r.key):
        groups.setdefault(record.content_digest, []).append(record)
    return "; ".join(" = ".join(describe_build(store, r) for r in g) for g in groups.values())


def _one_build(store: Store, tied: list[DistRecord], tag: str, selected: Collection[str],
               venv: Path | None) -> DistRecord:
    """One of builds that fit equally well: builds of one content are one build (an installer's own
    metadata aside), so any of them serves; builds of different content are never chosen between
    silently, a malicious or mistaken wheel that claims a name would win by key order."""
    if len(tied) == 1:
        return tied[0]  # no choice to make (a content digest hashes the whole manifest)
    groups: dict[str, list[DistRecord]] = {}
    for record in tied:
        groups.setdefault(record.content_digest, []).append(record)
    if len(groups) > 1:
        # The venv's own earlier choice stands (what `add KEY` made); a re-resolve never moves it.
        mine = [g for g in groups.values() if any(r.key in selected for r in g)]
        if len(mine) != 1:
            first = tied[0]
            raise AmbiguousBuild(
                f"{first.name} {first.version}: {len(groups)} stored builds with different content fit "
                f"{venv or 'this venv'} equally (tag {tag}): {describe_builds(store, tied)}; choose one by its key: "
                f"`venvfs add {venv or 'VENV'} KEY`")
        group = mine[0]
    else:
        (group,) = groups.values()
    # Same content: the venv's own, else one whose only installer file is venvfs's (a record adopted
    # before keys left the installer out carries pip's or uv's REQUESTED, INSTALLER), else a wheel's
    # (its metadata names no other venv), else key order.
    return min(group, key=lambda r: (r.key not in selected, not r.is_normalized, not r.source.startswith("wheel:"),
                                     r.key))


def rival_builds(store: Store, record: DistRecord) -> list[DistRecord]:
    """Complete stored builds of ``record``'s name and version with other content and a tag in
    common: a venv that takes that tag cannot be given either without being told which."""
    name, tags = canonicalize_name(record.name), _expanded_tags(record)
    rivals = []
    for key in store.dist_keys():
        if not key.startswith(name + "-") or key == record.key:
            continue
        with contextlib.suppress(VenvfsError):
            other = store.get_dist(key)
            if (canonicalize_name(other.name) == name and _same_version(other.version, record.version)
                    and other.is_complete and other.content_digest != record.content_digest
                    and tags & _expanded_tags(other)):
                rivals.append(other)
    return rivals


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def by_key(store: Store, interp: InterpreterInfo, spec: str) -> DistRecord | None:
    """The stored build whose key ``spec`` is (how a user names one of builds that tie), else None."""
    if not _KEY.fullmatch(spec) or not store.has_dist(spec):
        return None
    record = store.get_dist(spec)
    if not record.is_complete:
        raise NoMatchingDistribution(f"{spec} is an incomplete adopted build (files were edited or missing)")
    if tag_rank(record, interp) is None:
        raise NoMatchingDistribution(f"{spec} is built for {', '.join(record.tags) or 'no tags'}, not for "
                                     f"Python {interp.version} on {interp.platform}")
    return record


def resolve(store: Store, interp: InterpreterInfo, requirement: str, *, selected: Collection[str] = (),
            venv: Path | None = None, keys: Sequence[str] | None = None) -> DistRecord:
    """The newest stored build that satisfies ``requirement`` with the best tag for ``interp``;
    ``AmbiguousBuild`` if builds of different content tie (see ``_one_build``). ``keys``: the store's
    ``dist_keys()``, when the caller resolves many requirements at once."""
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
    for key in store.dist_keys() if keys is None else keys:
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
    version, rank, _ = candidates[-1]
    tied = [r for v, k, r in candidates if (v, k) == (version, rank)]
    return _one_build(store, tied, interp.tags[-rank], selected, venv)


def requires_dist(store: Store, record: DistRecord) -> list[Requirement]:
    """The record's ``Requires-Dist`` (from its stored METADATA); unparsable lines are skipped."""
    meta_path = f"{record.dist_info}/METADATA"
    meta = next((f for f in record.site_files() if f.path == meta_path and f.digest), None)
    if meta is None or meta.digest is None:
        return []
    text = store.object_path(meta.digest, meta.executable).read_text(errors="replace")
    requirements = []
    for line in Parser().parsestr(text, headersonly=True).get_all("Requires-Dist") or ():
        with contextlib.suppress(InvalidRequirement):
            requirements.append(Requirement(line))
    return requirements


def _applies(req: Requirement, interp: InterpreterInfo, extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    if not interp.markers:
        return True  # an interpreter probed before markers were recorded: take the dependency
    return any(req.marker.evaluate({**interp.markers, "extra": extra}) for extra in ("", *extras))


def with_dependencies(store: Store, interp: InterpreterInfo, roots: list[tuple[DistRecord, set[str]]],
                      selected: Iterable[DistRecord], venv: Path | None = None) -> list[DistRecord]:
    """``roots`` plus what they require, transitively, from the store (greedy, newest fitting build;
    what the venv already selects is kept when it satisfies the requirement)."""
    chosen = {canonicalize_name(r.name): r for r, _ in roots}
    have = {canonicalize_name(r.name): r for r in selected}
    have_keys = {r.key for r in have.values()}
    result = [r for r, _ in roots]
    queue = list(roots)
    missing: list[str] = []
    while queue:
        record, extras = queue.pop()
        for req in requires_dist(store, record):
            if not _applies(req, interp, extras):
                continue
            name = canonicalize_name(req.name)
            present = chosen.get(name) or have.get(name)
            if present is not None and req.specifier.contains(Version(present.version), prereleases=True):
                continue
            if name in chosen:
                missing.append(f"{record.name} needs {req.name}{req.specifier}, {present.version} was chosen"
                               if present else str(req))
                continue
            bare = f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}"
            try:
                dep = resolve(store, interp, bare, selected=have_keys, venv=venv)
            except NoMatchingDistribution:
                missing.append(f"{record.name} requires {bare}")
                continue
            chosen[name] = dep
            result.append(dep)
            queue.append((dep, set(req.extras)))
    if missing:
        raise NoMatchingDistribution(
            "dependencies not in the store: " + "; ".join(sorted(set(missing)))
            + " (`venvfs store add` their wheels, or pass --no-deps)")
    return result


def installer_free(store: Store, record: DistRecord) -> DistRecord:
    """``record``, or where it was adopted with pip's or uv's ``INSTALLER``/``REQUESTED`` (before
    records left them out), the same build stored without them: a venv venvfs places it in then
    holds what a plain install holds, and says venvfs installed it. (Caller holds ``store.writing()``.)"""
    if record.is_normalized:
        return record
    put = store.put_stream(io.BytesIO(INSTALLER_NAME), durable=False)
    scheme: Scheme = next((f.scheme for f in record.site_files()), "purelib")
    normalized = record.normalized(StoredFile(f"{record.dist_info}/INSTALLER", scheme, put.digest, put.size))
    store.add_dist(normalized)
    return normalized


def _is_requirement(spec: str) -> bool:
    try:
        Requirement(spec)
    except InvalidRequirement:
        return False
    return True


def _selected_records(store: Store, state: VenvState) -> list[DistRecord]:
    return [store.get_dist(k) for k in state.selection]


def change_selection(venv: Venv, store: Store, *, add: Sequence[str] = (), remove: Iterable[str] = (),
                     link_mode: LinkMode = LinkMode.AUTO, dependencies: bool = True,
                     limits: IngestLimits | None = None) -> SelectReport:
    """Add wheels/requirements (with their dependencies from the store, unless ``dependencies`` is
    False) and remove names; the venv's files follow its layout. ``limits`` apply to wheel files."""
    for spec in add:
        if spec.endswith(".whl") and not Path(spec).exists():
            # A typo in a path, not a project called "x.whl": said before anything is adopted or locked.
            raise UsageError(f"{spec}: no such file")
    # The store's lock before the venv's: a wait for the store (behind gc) then holds nothing that
    # `venvfs umount` of this venv needs. Held until the state names the new records, so a
    # concurrent gc cannot collect them.
    with store.writing(), venv.locked(), keeping_records(store):
        if not venv.is_managed:
            # A fresh venv (``uv venv``): adopting its few files makes it managed, then it selects.
            adopt(venv, store, already_locked=True)
        state = venv.read_state()
        if Path(state.store) != store.root:
            raise VenvError(f"{venv.root} uses the store {state.store}, not {store.root}")
        layout.resume(venv, store, state)  # files follow the layout: it must be whole first
        if state.interpreter is None:
            state.interpreter = venv.probe_interpreter()
        interp = state.interpreter
        roots: list[tuple[DistRecord, set[str]]] = []
        for spec in add:
            path = Path(spec)
            if spec.endswith(".whl"):
                roots.append((ingest_wheel(store, path, limits=limits)[0], set()))
            elif (record := by_key(store, interp, spec)) is not None:
                roots.append((record, set()))
            else:
                extras = set(Requirement(spec).extras) if _is_requirement(spec) else set()
                roots.append((resolve(store, interp, spec, selected=state.selection, venv=venv.root), extras))
        if dependencies:
            wanted = with_dependencies(store, interp, roots, _selected_records(store, state), venv.root)
        else:
            wanted = [r for r, _ in roots]
        wanted = [r if r.key in state.selection else installer_free(store, r) for r in wanted]
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
    wanted_keys = {w.key for w in wanted}
    dropped = [r for r in current if canonicalize_name(r.name) in drop and r.key not in wanted_keys]
    kept = [r for r in current if r not in dropped]
    kept_keys = {k.key for k in kept}
    new = [w for w in wanted if w.key not in kept_keys]
    # The whole new selection, in either layout (bin/ and data files are real files in both, and an
    # eject or `umount --materialize` places the rest): refused here, the venv is left as it was.
    check_placeable(venv, interp, kept + new)
    # Before the first file changes: from here until the files match the new selection, a killed
    # command leaves a venv that matches neither (and a later switch to the mounted layout would
    # whiteout the missing files for good), so the marker says how to finish.
    marker = venv.state_dir / SELECTING
    atomic_write_json(marker, {"remove": [r.key for r in dropped], "place": [r.key for r in wanted],
                               "selection": [r.key for r in kept] + [r.key for r in new]})
    crash_point("select:removing")
    for record in dropped:
        remove_files(venv, interp, record, site_packages=state.layout == "materialized")
        report.removed.append(record.key)
    if state.layout == "mounted":
        clear_upper(venv, state, dropped, kept)
    state.selection = [r.key for r in kept] + [r.key for r in new]
    venv.write_state(state)
    ensure_bytecode(store, wanted, interp, venv.python)
    vouch_lower(store, wanted)
    linker = linker_for(link_mode, state)
    crash_point("select:placing")
    # All of ``wanted``, not only what is new to the selection: an add killed after the state was
    # written finishes when run again (files already in place are kept).
    if state.layout == "materialized":
        materialize(venv, store, state, linker, records=wanted)
    else:
        materialize(venv, store, state, linker, records=wanted, site_packages=False)
        # The view renders each distribution's RECORD for this venv: nothing to write here.
        mountinfo.reload(venv, store=store)
    marker.unlink(missing_ok=True)
    report.added = [r.key for r in new]
    report.link_summary = linker.summary()
    report.hardlink_warning = linker.hardlink_warning()
    if linker.used and state.layout == "materialized":
        # (In the mounted layout the linker refuses hardlinks: its mode says nothing about how
        # site-packages would be materialized.)
        state.link_mode = linker.used.value
        venv.write_state(state)
    return report
