"""Adopt an existing venv: every installed distribution goes into the store through its RECORD, and
the venv's copies are replaced by links to the stored objects.

Only content that matches its RECORD hash is shared. A file a user edited, a file missing, and every
file no RECORD owns (hand-written ``.pth`` files, ``.egg-link``, editable installs) stay in the venv
exactly as they are. Each replacement is an atomic rename of identical content, so adopt can be
killed at any point and simply run again.

A file whose inode has names outside the venv (uv and pip hardlink from their caches, so uv's cache
and every plain venv made from it share it) is never made a store object and never chmodded or
touched: the store gets a reflink or copy of it, and the report counts what that cost. Made a store
object, that inode would be mode 0444 and 1980 in uv's cache, later plain venvs would hardlink the
store, and an edit in one of them would damage the store for every mounted venv. Files outside
site-packages (scripts, headers, data) stay the venv's own real files after adopt, so they never
become store objects either.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import functools
import hashlib
import io
import logging
import os
import re
import stat
from collections import deque
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, cast

from installer.utils import parse_entrypoints
from packaging.utils import canonicalize_name

from venvfs.errors import VenvError
from venvfs.fsutil import io_failure, is_enospc, symlink_stays_inside
from venvfs.progress import Progress
from venvfs.store.bytecode import compilable, compile_in_background, ensure_bytecode, pyc_relpath
from venvfs.store.chunks import FileDigests
from venvfs.store.records import (
    INSTALLER_NAME,
    SITE_SCHEMES,
    DistRecord,
    EntryPoint,
    Scheme,
    StoredFile,
    is_install_metadata,
)
from venvfs.store.store import PutResult, Store, take_inode
from venvfs.store.store import published as published_objects
from venvfs.venv import adoptsplit, layout
from venvfs.venv import automount as hooks
from venvfs.venv.adoptfile import FileReader, Job, Outcome, Read, close_outcomes, read_file
from venvfs.venv.linkmode import Linker, LinkMode, hardlink_warning
from venvfs.venv.materialize import materialize
from venvfs.venv.ownpyc import Stamp, restamp
from venvfs.venv.pending import is_editable
from venvfs.venv.venv import InterpreterInfo, Venv, VenvState

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Executor, Future

log = logging.getLogger(__name__)


@dataclass
class AdoptReport:
    selection: list[str] = field(default_factory=list)
    new_dists: list[str] = field(default_factory=list)
    new_objects: int = 0
    new_bytes: int = 0
    shared_bytes: int = 0
    kept_in_venv: dict[str, list[str]] = field(default_factory=dict)  # dist -> files left as they are
    skipped: dict[str, str] = field(default_factory=dict)  # dist-info dir -> why it was not adopted
    link_summary: str = ""
    link_mode: str | None = None
    compiled: int = 0
    compiling_pid: int | None = None  # the background process compiling the store's bytecode
    restamped: int = 0  # the venv's own .pyc files kept valid (see venvfs.venv.ownpyc)
    # Files whose inode other names share (a tool's cache, another venv): stored as a reflink or copy,
    # their inode left alone. Bytes are what the copies cost (reflinks cost none).
    shared_inode_files: int = 0
    shared_inode_copied_bytes: int = 0
    hardlink_warning: str | None = None  # the venv's files that are now store inodes, and what that exposes


def _record_digest(hash_field: str) -> tuple[str, str] | None:
    """RECORD's ``algo=urlsafe-b64`` as (algo, hex); None when absent."""
    if not hash_field or "=" not in hash_field:
        return None
    algo, _, b64 = hash_field.partition("=")
    try:
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except ValueError:
        return None
    return algo, raw.hex()


# Files this large are read and hashed by a worker (hashlib and read(2) release the GIL: both cores
# hash); smaller ones here, where handing one over costs more than its read, and where they do not
# contend with this thread for the GIL (a worker given them too spent a fifth more CPU on it).
_PARALLEL_MIN = 64 * 1024
_MAX_PENDING = 16  # large files out at once (a file the adopting thread must store stays open)


@functools.cache
def _known_algorithm(algo: str) -> bool:
    try:
        hashlib.new(algo)
    except ValueError:
        return False
    return True


class _Pending(NamedTuple):
    """A file read in this thread, and what storing it needs."""

    scheme: Scheme
    rel: str
    path: str
    want: str | None  # RECORD's digest
    executable: bool
    stored: bool | None  # the store has the object (None: not known until the sha256 is)


class _DistAdopter:
    """Reads one .dist-info and stores what its RECORD vouches for."""

    def __init__(self, venv: Venv, store: Store, dist_info: Path, progress: Progress, linker: Linker,
                 *, safe_linker: Linker | None = None, venv_links: VenvLinks | None = None,
                 pool: Executor | None = None, interpreter: InterpreterInfo | None = None) -> None:
        self.venv = venv
        self.store = store
        self.pool = pool  # reads, hashes and takes files while this thread parses RECORD and stores the rest
        self._pending: deque[Future[Outcome]] = deque()
        # With ``interpreter``, the venv's valid .pyc files are kept valid (venvfs.venv.ownpyc).
        self._cache_tag = interpreter.cache_tag if interpreter is not None else None
        self.pyc_stamps: list[Stamp] = []  # .pyc files to restamp once their sources are store files
        self.restamped = 0
        self.linker = linker  # venv file -> store: by hardlink or reflink, adopting copies no data
        # For files the store must not share an inode with: reflink, else copy.
        self.safe_linker = safe_linker or Linker(LinkMode.AUTO, allow_hardlink=False)
        self.venv_links = venv_links or VenvLinks(None)
        self._store_dev: int | None = None
        # classify() runs for every RECORD row: plain strings, not pathlib (a sixth of a first adopt).
        roots: tuple[tuple[Scheme, Path], ...] = (
            ("purelib", venv.site_packages), ("scripts", venv.bin_dir), ("data", venv.root))
        self._roots = tuple((scheme, str(root), str(root).rstrip("/") + "/") for scheme, root in roots)
        self.shared_inode_files = 0
        self.shared_inode_copied_bytes = 0
        self.store_inodes_outside = 0  # files outside site-packages that are store objects' inodes
        self.in_place: list[str] = []  # site-packages files that are their store object's inode now
        self.taken = 0  # of those, the ones whose inode this run gave the store
        self.dist_info = dist_info
        self.progress = progress
        self.files: list[StoredFile] = []
        self.kept: list[str] = []
        self.new_objects = 0
        self.new_bytes = 0
        self.shared_bytes = 0
        self.site_scheme: Scheme = "purelib"
        self._reader = FileReader(store, linker, self._store_device,
                                  bytes.fromhex(interpreter.magic) if interpreter is not None else None)
        self._shebang = re.compile(rb"^#!" + re.escape(os.fsencode(venv.bin_dir)) + rb"/python[0-9.]*(?=[\s])")

    def metadata(self) -> tuple[str, str, tuple[str, ...], tuple[EntryPoint, ...]]:
        try:
            meta = Parser().parsestr((self.dist_info / "METADATA").read_text(errors="replace"), headersonly=True)
        except OSError as e:
            raise VenvError(f"{self.dist_info.name}: unreadable METADATA ({e})") from e
        name, version = meta.get("Name"), meta.get("Version")
        if not name or not version:
            raise VenvError(f"{self.dist_info.name}: METADATA lacks Name or Version")
        tags: tuple[str, ...] = ()
        wheel = self.dist_info / "WHEEL"
        if wheel.exists():
            parsed = Parser().parsestr(wheel.read_text(errors="replace"))
            tags = tuple(parsed.get_all("Tag") or ())
            # The scheme wheel ingest gives site-packages files, so the wheel's file and its install
            # are one build (both are site-packages in a venv).
            if parsed.get("Root-Is-Purelib", "true").strip().lower() != "true":
                self.site_scheme = "platlib"
        eps: list[EntryPoint] = []
        ep_file = self.dist_info / "entry_points.txt"
        if ep_file.exists():
            for ep_name, module, attr, section in parse_entrypoints(ep_file.read_text(errors="replace")):
                eps.append(EntryPoint(ep_name, module, attr, section))
        return canonicalize_name(name), version, tags, tuple(sorted(eps, key=lambda e: e.name))

    def classify(self, record_path: str, name: str = "") -> tuple[Scheme, str] | None:
        absolute = os.path.normpath(f"{self._roots[0][1]}/{record_path}")
        for scheme, root, prefix in self._roots:
            if absolute == root or absolute.startswith(prefix):
                rel = "." if absolute == root else absolute[len(prefix):]
                parts = rel.split("/")
                # include/site/pythonX.Y/<name>/... is the headers scheme (as materialize writes it), so a
                # materialized venv adopted again gives the same record as the wheel it came from.
                if (scheme == "data" and len(parts) > 4 and parts[:2] == ["include", "site"]
                        and parts[2].startswith("python") and canonicalize_name(parts[3]) == name):
                    return "headers", "/".join(parts[4:])
                return scheme, rel
        return None  # outside the venv: not ours to share

    def rows(self) -> list[tuple[str, str, str]]:
        try:
            text = (self.dist_info / "RECORD").read_text(errors="replace")
        except FileNotFoundError:
            raise VenvError(f"{self.dist_info.name} has no RECORD") from None
        return [([*r, "", "", ""])[:3] for r in csv.reader(io.StringIO(text)) if r]  # type: ignore[misc]

    def adopt(self) -> DistRecord:
        name, version, tags, entry_points = self.metadata()
        script_names = {ep.name for ep in entry_points}
        record_file = f"{self.dist_info.name}/RECORD"
        try:
            for path_field, hash_field, size_field in self.rows():
                self.progress.advance(note=path_field)
                where = self.classify(path_field, name)
                if where is None:
                    continue
                scheme, rel = where
                parts = rel.split("/")
                if rel == record_file or (parts[-1].endswith(".pyc") and "__pycache__" in parts):
                    continue  # RECORD stays the venv's own; bytecode is compiled per Python version
                if scheme == "scripts" and rel in script_names:
                    continue  # generated from the entry point for each venv's interpreter
                if scheme == "purelib" and is_install_metadata(self.dist_info.name, rel):
                    # About this install, not the build (records.INSTALLER_NAME): it stays the venv's own.
                    continue
                if scheme == "purelib":
                    scheme = self.site_scheme
                self._adopt_file(scheme, rel, f"{self._roots[0][1]}/{path_field}", _record_digest(hash_field),
                                 int(size_field) if size_field.isdigit() else 0)
            self._settle(block=True)
        finally:
            self._discard_pending()
        put = self.store.put_stream(io.BytesIO(INSTALLER_NAME), durable=False)
        self._add(self.site_scheme, f"{self.dist_info.name}/INSTALLER", put.digest, put.size, False, new=put.new)
        return DistRecord(
            name=name, version=version, dist_info=self.dist_info.name, tags=tags,
            files=tuple(sorted(self.files, key=lambda f: (f.scheme, f.path))),
            entry_points=entry_points, source=f"adopted:{self.venv.root}",
            omitted=tuple(sorted(self.kept)),
        )

    def _adopt_file(self, scheme: Scheme, rel: str, path: str, expected: tuple[str, str] | None,
                    size_hint: int = 0) -> None:
        """Store one file RECORD lists (``size_hint``: RECORD's size, only to share out the work)."""
        algo, want = expected if expected is not None else ("sha256", None)
        if scheme == "scripts" or not _known_algorithm(algo):
            self._adopt_by_path(scheme, rel, path, expected)
            return
        pyc = None
        if self._cache_tag is not None and scheme in SITE_SCHEMES and compilable(rel):
            pyc = f"{self._roots[0][1]}/{pyc_relpath(rel, self._cache_tag)}"
        job = Job(scheme, rel, path, algo, want, pyc)
        if self.pool is None or size_hint < _PARALLEL_MIN:
            self._apply(self._reader.run(job))
            return
        self._pending.append(self.pool.submit(self._reader.run, job))
        self._settle(block=False)

    def _settle(self, *, block: bool) -> None:
        """Store the files the workers are done with, in the order they were handed out (waiting for
        the oldest while too many are out); with ``block``, all of them."""
        while self._pending and (block or self._pending[0].done() or len(self._pending) > _MAX_PENDING):
            self._apply(self._pending.popleft().result())

    def _discard_pending(self) -> None:
        """After an error: wait for the files still out and close what they opened."""
        while self._pending:
            with contextlib.suppress(Exception):
                close_outcomes([self._pending.popleft().result()])

    def _apply(self, o: Outcome) -> None:
        """Bookkeeping for a file a ``FileReader`` ran (and storing it, where that was left to here)."""
        job = o.job
        if o.stamp is not None:
            self.pyc_stamps.append(o.stamp)
        self.restamped += o.restamped
        if o.kind == "other":
            self._adopt_by_path(job.scheme, job.rel, job.path, (job.algo, job.want) if job.want else None)
        elif o.kind in ("gone", "edited"):
            self.kept.append(job.rel)  # gone, or edited since install: the user's version stays, unshared
        elif o.kind in ("in_place", "taken"):
            assert o.digest is not None
            self._add(job.scheme, job.rel, o.digest, o.size, o.executable, new=o.kind == "taken")
            if job.scheme not in SITE_SCHEMES:
                self.store_inodes_outside += 1  # materialize, which counts the rest, leaves these
            else:
                self.in_place.append(job.rel)
            self.taken += o.kind == "taken"
        else:
            assert o.read is not None
            self._complete(_Pending(job.scheme, job.rel, job.path, job.want, o.executable, o.stored), o.read)

    def _adopt_by_path(self, scheme: Scheme, rel: str, path: str, expected: tuple[str, str] | None) -> None:
        """``_adopt_file`` in this thread, from an lstat of ``path``: bin/ files, files RECORD hashes
        by an algorithm hashlib lacks, and what was no regular file when a ``FileReader`` opened it."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.kept.append(rel)
            return
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if scheme in SITE_SCHEMES and symlink_stays_inside(rel, target):
                self.files.append(StoredFile(rel, scheme, None, len(target.encode()), symlink=target))
            else:
                self.kept.append(rel)
            return
        if not stat.S_ISREG(st.st_mode):
            self.kept.append(rel)
            return
        executable = bool(st.st_mode & 0o111)
        algo, want = expected if expected is not None else ("sha256", None)
        stored: bool | None = None  # whether the store has the object: known here only by RECORD's sha256
        if algo == "sha256" and want is not None:
            try:
                ost = os.stat(self.store.local_object_name(want, executable))
            except FileNotFoundError:
                stored = False
            else:
                if (ost.st_ino, ost.st_dev) == (st.st_ino, st.st_dev):
                    # Already hardlinked by an earlier (perhaps interrupted) adopt.
                    self._add(scheme, rel, want, st.st_size, executable, new=False)
                    if scheme not in SITE_SCHEMES:
                        self.store_inodes_outside += 1  # materialize, which counts the rest, leaves these
                    else:
                        self.in_place.append(rel)
                    return
                stored = True
        if scheme == "scripts":
            self._adopt_script(rel, path, expected, executable)
            return
        if not _known_algorithm(algo):
            self.kept.append(rel)  # unknown hash algorithm in RECORD: nothing can vouch for the file
            return
        self._complete(_Pending(scheme, rel, path, want, executable, stored), read_file(path, algo))

    def _complete(self, p: _Pending, read: Read | None) -> None:
        if read is None:
            self.kept.append(p.rel)  # gone, or no regular file any more
            return
        try:
            digests = read.digests
            if p.want is not None and (digests.other or digests.sha256) != p.want:
                self.kept.append(p.rel)  # edited since install: the user's version stays, unshared
                return
            stored = p.stored if p.stored is not None else self.store.has_local_object(digests.sha256, p.executable)
            put, taken = self._put(p.scheme, p.path, read.fd, read.st, digests, p.executable, stored=stored)
        finally:
            os.close(read.fd)
        if put.digest != digests.sha256:
            self.kept.append(p.rel)  # written to while it was being stored: the venv's own, unshared
            return
        if taken:
            self.in_place.append(p.rel)
            self.taken += 1
        self._add(p.scheme, p.rel, put.digest, put.size, p.executable, new=put.new)

    def _put(self, scheme: Scheme, path: str, fd: int, st: os.stat_result, digests: FileDigests, executable: bool,
             *, stored: bool) -> tuple[PutResult, bool]:
        """Store the file read on ``fd``; and whether the store took its inode (it is in place)."""
        digest, size = digests.sha256, digests.size
        if stored:
            return PutResult(digest, size, new=False), False  # materialize links the venv's name to it
        shared = self._shared_inode(st)
        # A file outside site-packages stays the venv's own after adopt (materialize leaves it), so
        # making it the store object would leave a writable name of the store in bin/ or share/.
        linker = self.safe_linker if shared or scheme not in SITE_SCHEMES else self.linker
        if linker is self.linker and self.linker.settled_mode(st.st_dev, self._store_device()) == LinkMode.HARDLINK:
            # The mode is settled to be hardlink (the first file probed it): the store takes the inode
            # through the fd that was hashed, without a temporary name or a second path lookup.
            put = take_inode(self.store, fd, digest, size, executable, chunk_list=digests.chunk_list)
            if put is not None:
                return put, put.new
            # Not linkable (the file was deleted or replaced meanwhile): a copy of the bytes the fd
            # reads, never of whatever the path names now.
            os.lseek(fd, 0, os.SEEK_SET)
            with open(os.dup(fd), "rb") as f:
                return self.store.put_stream(f, executable=executable, durable=False), False
        copies_before = linker.counts.get(LinkMode.COPY, 0)
        hardlinks_before = linker.counts.get(LinkMode.HARDLINK, 0)
        put = self.store.put_placed(Path(path), digest, size, executable, linker, chunk_list=digests.chunk_list)
        if shared and put.new:
            self.shared_inode_files += 1
            if linker.counts.get(LinkMode.COPY, 0) > copies_before:
                self.shared_inode_copied_bytes += size
        # The file that settles the mode is placed by its path: the store took its inode if the path
        # still named the file that was read.
        taken = (linker is self.linker and put.new and linker.counts.get(LinkMode.HARDLINK, 0) > hardlinks_before
                 and _same_file(self.store.local_object_name(digest, executable), st))
        return put, taken

    def _store_device(self) -> int:
        if self._store_dev is None:
            self._store_dev = os.stat(self.store.root / "tmp").st_dev  # where put_placed links to
        return self._store_dev

    def _adopt_script(self, rel: str, path: str, expected: tuple[str, str] | None, executable: bool) -> None:
        """A file of bin/: stored with ``#!python`` for the venv's own interpreter line, so one
        object serves every venv; it stays the venv's own real file (never a store inode)."""
        with open(path, "rb") as f:
            head = f.read()
        if expected is not None:
            algo, want = expected
            try:
                if hashlib.new(algo, head).hexdigest() != want:
                    self.kept.append(rel)  # edited since install: the user's version stays, unshared
                    return
            except ValueError:  # unknown hash algorithm in RECORD
                self.kept.append(rel)
                return
        normalized = self._shebang.sub(b"#!python", head, count=1)
        if normalized != head:
            put = self.store.put_stream(io.BytesIO(normalized), executable=executable, durable=False)
        else:
            st = os.lstat(path)
            put = self._put_copy_of_script(path, st, head, executable)
        self._add("scripts", rel, put.digest, put.size, executable, new=put.new)

    def _put_copy_of_script(self, path: str, st: os.stat_result, data: bytes, executable: bool) -> PutResult:
        digest = hashlib.sha256(data).hexdigest()
        shared = self._shared_inode(st)
        copies_before = self.safe_linker.counts.get(LinkMode.COPY, 0)
        put = self.store.put_placed(Path(path), digest, len(data), executable, self.safe_linker)
        if shared and put.new:
            self.shared_inode_files += 1
            if self.safe_linker.counts.get(LinkMode.COPY, 0) > copies_before:
                self.shared_inode_copied_bytes += len(data)
        return put

    def _shared_inode(self, st: os.stat_result) -> bool:
        """Whether the file's inode has names outside the venv (a cache, another venv, a backup)."""
        return st.st_nlink > 1 and st.st_nlink > self.venv_links.names(st.st_dev, st.st_ino)

    def _add(self, scheme: Scheme, rel: str, digest: str, size: int, executable: bool, *, new: bool) -> None:
        self.files.append(StoredFile(rel, scheme, digest, size, executable=executable))
        if new:
            self.new_objects += 1
            self.new_bytes += size
        else:
            self.shared_bytes += size


class _Adopted(NamedTuple):
    """What adopting one distribution gave (picklable: a forked helper sends it back)."""

    record: DistRecord
    pyc_stamps: list[Stamp]
    restamped: int
    new_objects: int
    new_bytes: int
    shared_bytes: int
    shared_inode_files: int
    shared_inode_copied_bytes: int
    store_inodes_outside: int
    in_place: list[str]
    taken: int
    kept: list[str]

    @classmethod
    def of(cls, a: _DistAdopter, record: DistRecord) -> _Adopted:
        return cls(record, a.pyc_stamps, a.restamped, a.new_objects, a.new_bytes, a.shared_bytes,
                   a.shared_inode_files, a.shared_inode_copied_bytes, a.store_inodes_outside, a.in_place,
                   a.taken, a.kept)


# A venv with at least this much to adopt (bytes, each file counted as ``_FILE_WEIGHT`` more) is
# adopted by two processes, each storing whole distributions (``adoptsplit``): below it, the fork
# and the pickled results cost more than the second core gives.
_SPLIT_MIN = 32 << 20
# What storing one file costs beyond its bytes, in bytes: ~100 us of system calls and Python against
# ~1 ns a byte to read and hash (a first adopt of the scientific set: 7,300 files, 491 MB).
_FILE_WEIGHT = 100_000


def _ingest_shared_out(todo: list[Path], store: Store, linker: Linker, progress: Progress,
                       ingest: Callable[[list[Path], Progress], list[_Adopted | str]]) -> list[_Adopted | str]:
    """``ingest(todo)``, the work shared out between this process and a forked one where there is
    enough of it and a second core to run it."""
    weights = [_weight(d) for d in todo]
    if len(todo) < 2 or sum(weights) < _SPLIT_MIN or (os.cpu_count() or 1) < 2 or not hasattr(os, "fork"):
        return ingest(todo, progress)
    mine, theirs = adoptsplit.share_out(weights)
    published = published_objects(store)

    def child() -> list[_Adopted | str]:
        del published[:]  # the parent has these: the child reports only its own
        return ingest([todo[i] for i in theirs], Progress("", enabled=False))

    def child_state() -> tuple[list[str], str | None]:
        return published, linker.fallback_reason

    def merge(state: object) -> None:
        names, fallback = cast("tuple[list[str], str | None]", state)
        published.extend(names)
        linker.fallback_reason = linker.fallback_reason or fallback

    ours, others = adoptsplit.in_two(lambda: ingest([todo[i] for i in mine], progress), child, child_state, merge)
    progress.advance(sum(len(_lines(todo[i] / "RECORD")) for i in theirs))
    done: list[_Adopted | str] = [""] * len(todo)
    for indices, results in ((mine, ours), (theirs, others)):
        for i, result in zip(indices, results, strict=True):
            done[i] = result
    return done


def _weight(dist_info: Path) -> int:
    """What adopting the distribution costs, by its RECORD (sizes, files), in bytes."""
    total = 0
    for line in _lines(dist_info / "RECORD"):
        if ".pyc," in line:
            continue  # bytecode stays the venv's own: not read (its source's valid .pyc is restamped)
        size = line.rpartition(",")[2]
        total += _FILE_WEIGHT + (int(size) if size.isdigit() else 0)
    return total


Bytecode = Literal["now", "background", "none"]


def adopt(venv: Venv, store: Store, *, link_mode: LinkMode = LinkMode.AUTO, bytecode: Bytecode = "now",
          install_hooks: bool | None = None, already_locked: bool = False) -> AdoptReport:
    """Store every distribution installed in ``venv`` and link the venv's files to the store.

    ``bytecode``: compile the store's bytecode for this venv's Python before returning ("now"), in a
    detached low-priority process ("background": compiling is most of a first adopt's time, and
    the venv's own valid ``.pyc`` files serve its imports meanwhile), or not at all ("none").

    Idempotent: run again after pip or uv changed the venv, it adopts what is new and forgets what
    was uninstalled.
    """
    try:
        if already_locked:
            return _adopt(venv, store, link_mode, bytecode, install_hooks)
        with venv.locked():
            return _adopt(venv, store, link_mode, bytecode, install_hooks)
    except OSError as e:
        # The store's writing() has taken back the objects of the distribution it was storing by now.
        need = _payload(list(venv.dist_info_dirs())) if is_enospc(e) else None
        raise io_failure(e, f"adopting {venv.root} into the store {store.root}", need=need) from None


def _adopt(venv: Venv, store: Store, link_mode: LinkMode, bytecode: Bytecode,
           install_hooks: bool | None) -> AdoptReport:
    if venv.is_managed:
        state = venv.read_state()
        if Path(state.store) != store.root:
            raise VenvError(f"{venv.root} uses the store {state.store}, not {store.root}")
        # Half of a killed switch to the mounted layout is in the upper layer: adopting what is left
        # in site-packages would forget the rest.
        layout.resume(venv, store, state)
        if state.layout == "mounted":
            raise VenvError(f"{venv.root} is in the mounted layout: use `venvfs commit` to store new packages")
    else:
        state = VenvState(store=str(store.root))
    if install_hooks is not None:
        state.hooks = install_hooks
    state.interpreter = venv.probe_interpreter()
    report = AdoptReport()
    dist_infos = list(venv.dist_info_dirs())
    total = sum(1 for d in dist_infos for _ in _lines(d / "RECORD"))
    progress = Progress(f"adopting {venv.root.name}", total)
    records: list[DistRecord] = []
    ingest_linker = Linker(link_mode)
    safe_linker = Linker(LinkMode.COPY if link_mode == LinkMode.COPY else LinkMode.AUTO, allow_hardlink=False)
    venv_links = VenvLinks(venv.root)
    stamps: list[Stamp] = []
    store_inodes_outside = 0
    in_place: set[tuple[str, str]] = set()
    restamped = 0  # .pyc files restamped as their sources were taken (the rest: ``stamps``, after materialize)
    taken = 0

    def ingest(dists: list[Path], progress: Progress) -> list[_Adopted | str]:
        done: list[_Adopted | str] = []
        if not dists:
            return done  # a fresh venv (create): no pool, no import of concurrent.futures
        from concurrent.futures import ThreadPoolExecutor

        # Reading and hashing large files is shared out to threads; the rest stays in this one.
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), "venvfs-adopt") as pool:
            for dist_info in dists:
                adopter = _DistAdopter(venv, store, dist_info, progress, ingest_linker, safe_linker=safe_linker,
                                       venv_links=venv_links, pool=pool, interpreter=state.interpreter)
                try:
                    done.append(_Adopted.of(adopter, adopter.adopt()))
                except VenvError as e:
                    done.append(str(e))
        return done

    with store.writing():
        todo = []
        for dist_info in dist_infos:
            if is_editable(dist_info):
                # Its files point at a source tree of this machine: nothing another venv could share.
                report.skipped[dist_info.name] = "editable install: its files stay the venv's own"
            else:
                todo.append(dist_info)
        for dist_info, adopted in zip(todo, _ingest_shared_out(todo, store, ingest_linker, progress, ingest),
                                      strict=True):
            if isinstance(adopted, str):
                report.skipped[dist_info.name] = adopted
                continue
            record = adopted.record
            records.append(record)
            stamps += adopted.pyc_stamps
            restamped += adopted.restamped
            report.new_objects += adopted.new_objects
            report.new_bytes += adopted.new_bytes
            report.shared_bytes += adopted.shared_bytes
            report.shared_inode_files += adopted.shared_inode_files
            report.shared_inode_copied_bytes += adopted.shared_inode_copied_bytes
            store_inodes_outside += adopted.store_inodes_outside
            in_place.update((dist_info.name, rel) for rel in adopted.in_place)
            taken += adopted.taken
            if adopted.kept:
                report.kept_in_venv[record.name] = adopted.kept
        progress.close()
        for record, new in zip(records, store.add_dists(records, objects_checked=True), strict=True):
            if new:
                report.new_dists.append(record.key)
        state.selection = [r.key for r in records]
        if records:
            # The state is written before the venv is touched: from here on a rerun knows the venv is
            # managed. With nothing to place (an empty venv) nothing is touched: the write below does.
            venv.write_state(state)  # and its copy in the store's registry
        if bytecode == "now":
            report.compiled = ensure_bytecode(store, records, state.interpreter, venv.python)
        linker = Linker(link_mode)
        placed = materialize(venv, store, state, linker, records=records, outside_site_packages=False,
                             in_place=in_place)
        # The files the store took as it read them were placed by hardlink too, by the ingest's linker.
        linker.add_placed(LinkMode.HARDLINK, taken, ingest_linker.fallback_reason)
        report.restamped = restamped + restamp(stamps)
    if bytecode == "background":
        report.compiling_pid = compile_in_background(store, [r.key for r in records], state.interpreter.cache_tag,
                                                     venv.python)
    state.link_mode = linker.used.value if linker.used else state.link_mode
    venv.write_state(state)
    if state.hooks:
        hooks.install(venv)
    report.selection = state.selection
    report.link_summary = linker.summary()
    report.link_mode = state.link_mode
    # Counted by materialize, not from the linkers: a file hardlinked while ingesting became the store
    # object in place (materialize then finds it there), and some of those are replaced by copies.
    hardlinked = placed.store_inodes + store_inodes_outside
    if hardlinked:
        why = "as asked" if link_mode == LinkMode.HARDLINK else "this filesystem cannot reflink"
        report.hardlink_warning = hardlink_warning(hardlinked, why)
    return report


def _same_file(path: str, st: os.stat_result) -> bool:
    try:
        other = os.stat(path)
    except FileNotFoundError:
        return False
    return (other.st_ino, other.st_dev) == (st.st_ino, st.st_dev)


class VenvLinks:
    """Names each multiply linked regular file has inside the venv: an inode whose link count is
    higher has names elsewhere, which adopt must leave alone. Counted by one walk of the venv when
    the first such file turns up (a venv pip installed has none: no walk)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._counts: dict[tuple[int, int], int] | None = None

    def names(self, dev: int, ino: int) -> int:
        if self._counts is None:
            self._counts = _venv_link_counts(self.root) if self.root is not None else {}
        return self._counts.get((dev, ino), 0)


def _venv_link_counts(root: Path) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    counts[key] = counts.get(key, 0) + 1
    return counts


def _payload(dist_infos: list[Path]) -> int:
    """Bytes of the files the RECORDs list: the most adopting can copy into the store."""
    total = 0
    for dist_info in dist_infos:
        for row in csv.reader(io.StringIO("\n".join(_lines(dist_info / "RECORD")))):
            if row:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.normpath(dist_info.parent / row[0])).st_size
    return total


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []
