"""``venvfs store verify``: re-hash every object a record refers to, check the compiled bytecode, and
name the venvs that use what is damaged (repairing is ``repairs`` and ``venvfs.venv.repair``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import marshal
import os
import stat
import struct
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from venvfs.errors import StoreError
from venvfs.fsutil import atomic_write_bytes
from venvfs.store.chunks import CHUNK, chunks_path, needs_chunks
from venvfs.store.records import DistRecord
from venvfs.store.store import SOURCE_EPOCH, Store, check_object, digests_in_raw_record, disk_usage


@dataclass
class VerifyReport:
    objects_checked: int = 0
    # digest -> problem ("missing", "modified", "writable")
    problems: dict[str, str] = field(default_factory=dict)
    # digest -> venvs whose selection uses it
    affected_venvs: dict[str, list[str]] = field(default_factory=dict)
    bad_records: list[str] = field(default_factory=list)
    bytecode_checked: int = 0
    # "<cache tag>/<source digest>" -> problem; the venvs using that source are in affected_venvs
    bad_bytecode: dict[str, str] = field(default_factory=dict)
    # Objects no record refers to (left by a crash, or by an ingest still running): no damage, and
    # nothing any venv reads; space that `store gc` frees.
    orphans: int = 0
    orphan_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad_records and not self.bad_bytecode


def verify(store: Store, venv_selections: dict[str, list[str]], *, progress: Callable[[int, int], None] | None = None
           ) -> VerifyReport:
    """Re-hash every object referenced by a record; name the venvs that use a damaged one.

    ``venv_selections`` maps venv path to the dist keys it selects. Only the store's own layer is
    checked, never its lowers: its records name only its own objects, and a shared store is verified
    where it is, by naming it as the store (``venvfs store verify --store SHARED``), from any node.
    """
    layered, store = store, store.local_only()
    report = VerifyReport()
    users: dict[str, set[str]] = {}
    for venv, keys in venv_selections.items():
        for key in keys:
            users.setdefault(key, set()).add(venv)
    wanted: dict[tuple[str, bool], set[str]] = {}
    unreadable_refs: set[tuple[str, bool]] = set()
    for key in store.dist_keys():
        try:
            record = store.get_dist(key)
        except StoreError:
            report.bad_records.append(key)
            unreadable_refs |= digests_in_raw_record(store.dist_path(key))
            continue
        for f in record.files:
            if f.digest is not None:
                wanted.setdefault((f.digest, f.executable), set()).update(users.get(key, ()))
    for digest, executable, path in store.iter_objects():
        if (digest, executable) not in wanted and (digest, executable) not in unreadable_refs:
            with contextlib.suppress(FileNotFoundError):
                report.orphan_bytes += disk_usage(path)
                report.orphans += 1
    total = len(wanted)
    for i, ((digest, executable), venvs) in enumerate(sorted(wanted.items())):
        if progress:
            progress(i, total)
        path = store.object_path(digest, executable)
        problem = check_object(store.root, path, digest)
        report.objects_checked += 1
        if problem:
            report.problems[digest] = problem
            report.affected_venvs[digest] = sorted(venvs)
    sources = {digest: venvs for (digest, _), venvs in wanted.items()}
    for pyc in sorted((store.root / "bytecode").glob("*/*/*.pyc")):
        tag, digest = pyc.parent.parent.name, pyc.name[:-4]
        # The source may live below (bytecode this store compiled for a lower's build).
        source_size = next((p.stat().st_size for p in (layered.object_path(digest), layered.object_path(digest, True))
                            if p.exists()), None)
        problem = _check_bytecode(pyc, source_size, tag == sys.implementation.cache_tag)
        report.bytecode_checked += 1
        if problem:
            report.bad_bytecode[f"{tag}/{digest}"] = problem
            report.affected_venvs[digest] = sorted(sources.get(digest, ()))
    return report


def _check_bytecode(path: Path, source_size: int | None, loadable_here: bool) -> str | None:
    """A .pyc is named by its source, not by its own hash, and marshal output is not stable enough to
    compare with a recompile. What is checked: read-only (mounts show it through a symlink), a
    timestamp header for ``SOURCE_EPOCH`` and the source's size, and for this interpreter's cache tag
    a payload that loads as a code object."""
    try:
        st = path.lstat()
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_mode & 0o222:
        return "writable"
    if len(data) < 16:
        return "truncated"
    flags, mtime, size = struct.unpack("<III", data[4:16])
    if flags != 0 or mtime != SOURCE_EPOCH or (source_size is not None and size != source_size & 0xFFFFFFFF):
        return "modified"
    if loadable_here:
        if data[:4] != importlib.util.MAGIC_NUMBER:
            return "modified"
        try:
            if not isinstance(marshal.loads(data[16:]), types.CodeType):
                return "modified"
        except (ValueError, EOFError, TypeError):
            return "modified"
    return None


def vouch_lower(store: Store, records: Iterable[DistRecord]) -> int:
    """Give each large object ``records`` take from a lower store a chunk list in the local store,
    made from its bytes here and only if they match its name; returns how many were made.

    A mount checks large objects chunk by chunk against the local store's lists alone (a lower's
    lists could be forged along with its objects): this is the one whole read, per node and object,
    that lets it, done when a venv selects the build rather than on the mount's first read, which
    would hold up every other request while it hashes. A mismatching object gets no list: the mount
    then checks it whole, and gives EIO."""
    made = 0
    if not store.lowers:
        return made
    done: set[str] = set()
    for record in records:
        for f in record.files:
            digest = f.digest
            if digest is None or not needs_chunks(f.size) or digest in done:
                continue
            done.add(digest)
            listed = chunks_path(store.root, digest)
            path = store.object_path(digest, f.executable)
            if listed.exists() or str(path).startswith(f"{store.root}/"):
                continue
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    whole, pieces = hashlib.sha256(), bytearray()
                    while piece := os.read(fd, CHUNK):
                        whole.update(piece)
                        pieces += hashlib.sha256(piece).digest()
                finally:
                    os.close(fd)
                if whole.hexdigest() == digest:
                    atomic_write_bytes(listed, bytes(pieces), mode=0o444, tmp_dir=store.root / "tmp", durable=False)
                    made += 1
    return made
