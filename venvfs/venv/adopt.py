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
import hashlib
import io
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path
from typing import Literal

from installer.utils import parse_entrypoints
from packaging.utils import canonicalize_name

from venvfs.errors import VenvError
from venvfs.fsutil import io_failure, is_enospc, symlink_stays_inside
from venvfs.progress import Progress
from venvfs.store.bytecode import compile_in_background, ensure_bytecode
from venvfs.store.records import (
    INSTALLER_NAME,
    SITE_SCHEMES,
    DistRecord,
    EntryPoint,
    Scheme,
    StoredFile,
    is_install_metadata,
)
from venvfs.store.store import Store
from venvfs.venv import automount as hooks
from venvfs.venv import layout
from venvfs.venv.linkmode import Linker, LinkMode, hardlink_warning
from venvfs.venv.materialize import count_store_inodes, materialize, store_inodes
from venvfs.venv.ownpyc import Stamp, restamp, valid_stamps
from venvfs.venv.pending import is_editable
from venvfs.venv.venv import Venv, VenvState

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


def _hash_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _DistAdopter:
    """Reads one .dist-info and stores what its RECORD vouches for."""

    def __init__(self, venv: Venv, store: Store, dist_info: Path, progress: Progress, linker: Linker,
                 *, safe_linker: Linker | None = None, venv_links: dict[tuple[int, int], int] | None = None) -> None:
        self.venv = venv
        self.store = store
        self.linker = linker  # venv file -> store: by hardlink or reflink, adopting copies no data
        # For files the store must not share an inode with: reflink, else copy.
        self.safe_linker = safe_linker or Linker(LinkMode.AUTO, allow_hardlink=False)
        self.venv_links = venv_links if venv_links is not None else {}  # (dev, ino) -> names in the venv
        self.shared_inode_files = 0
        self.shared_inode_copied_bytes = 0
        self.dist_info = dist_info
        self.progress = progress
        self.files: list[StoredFile] = []
        self.kept: list[str] = []
        self.new_objects = 0
        self.new_bytes = 0
        self.shared_bytes = 0
        self.site_scheme: Scheme = "purelib"
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
        absolute = Path(os.path.normpath(self.venv.site_packages / record_path))
        for scheme, root in (("purelib", self.venv.site_packages), ("scripts", self.venv.bin_dir),
                             ("data", self.venv.root)):
            if absolute == root or root in absolute.parents:
                rel = absolute.relative_to(root).as_posix()
                parts = rel.split("/")
                # include/site/pythonX.Y/<name>/... is the headers scheme (as materialize writes it), so a
                # materialized venv adopted again gives the same record as the wheel it came from.
                if (scheme == "data" and len(parts) > 4 and parts[:2] == ["include", "site"]
                        and parts[2].startswith("python") and canonicalize_name(parts[3]) == name):
                    return "headers", "/".join(parts[4:])
                return scheme, rel  # type: ignore[return-value]
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
        for path_field, hash_field, _size in self.rows():
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
            self._adopt_file(scheme, rel, self.venv.site_packages / path_field, _record_digest(hash_field))
        put = self.store.put_stream(io.BytesIO(INSTALLER_NAME), durable=False)
        self._add(self.site_scheme, f"{self.dist_info.name}/INSTALLER", put.digest, put.size, False, new=put.new)
        return DistRecord(
            name=name, version=version, dist_info=self.dist_info.name, tags=tags,
            files=tuple(sorted(self.files, key=lambda f: (f.scheme, f.path))),
            entry_points=entry_points, source=f"adopted:{self.venv.root}",
            omitted=tuple(sorted(self.kept)),
        )

    def _adopt_file(self, scheme: Scheme, rel: str, path: Path, expected: tuple[str, str] | None) -> None:
        try:
            st = path.lstat()
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
        verified: str | None = None  # the file's sha256, once read
        if expected is not None:
            algo, want = expected
            if algo == "sha256":
                obj = self.store.local_object_path(want, executable)
                with contextlib.suppress(FileNotFoundError):
                    ost = obj.stat()
                    if (ost.st_ino, ost.st_dev) == (st.st_ino, st.st_dev):
                        # Already hardlinked by an earlier (perhaps interrupted) adopt.
                        self._add(scheme, rel, want, st.st_size, executable, new=False)
                        return
            try:
                if _hash_file(path, algo) != want:
                    self.kept.append(rel)  # edited since install: the user's version stays, unshared
                    return
            except ValueError:  # unknown hash algorithm in RECORD
                self.kept.append(rel)
                return
            if algo == "sha256":
                verified = want
        data_override: bytes | None = None
        if scheme == "scripts":
            head = path.read_bytes()
            normalized = self._shebang.sub(b"#!python", head, count=1)
            if normalized != head:
                data_override = normalized
        if data_override is not None:
            put = self.store.put_stream(io.BytesIO(data_override), executable=executable, durable=False)
        else:
            digest = verified or _hash_file(path, "sha256")
            shared = self._shared_inode(st)
            # A file outside site-packages stays the venv's own after adopt (materialize leaves it), so
            # making it the store object would leave a writable name of the store in bin/ or share/.
            linker = self.safe_linker if shared or scheme not in SITE_SCHEMES else self.linker
            copies_before = linker.counts.get(LinkMode.COPY, 0)
            put = self.store.put_placed(path, digest, st.st_size, executable, linker)
            if shared and put.new:
                self.shared_inode_files += 1
                if linker.counts.get(LinkMode.COPY, 0) > copies_before:
                    self.shared_inode_copied_bytes += st.st_size
        self._add(scheme, rel, put.digest, put.size, executable, new=put.new)

    def _shared_inode(self, st: os.stat_result) -> bool:
        """Whether the file's inode has names outside the venv (a cache, another venv, a backup)."""
        return st.st_nlink > 1 and st.st_nlink > self.venv_links.get((st.st_dev, st.st_ino), 0)

    def _add(self, scheme: Scheme, rel: str, digest: str, size: int, executable: bool, *, new: bool) -> None:
        self.files.append(StoredFile(rel, scheme, digest, size, executable=executable))
        if new:
            self.new_objects += 1
            self.new_bytes += size
        else:
            self.shared_bytes += size


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
    venv_links = _venv_link_counts(venv.root)
    stamps: list[Stamp] = []
    with store.writing():
        for dist_info in dist_infos:
            if is_editable(dist_info):
                # Its files point at a source tree of this machine: nothing another venv could share.
                report.skipped[dist_info.name] = "editable install: its files stay the venv's own"
                continue
            # Before the sources become store files (and show the store's mtime).
            stamps += valid_stamps(venv.site_packages, _record_paths(dist_info), state.interpreter.cache_tag,
                                   bytes.fromhex(state.interpreter.magic))
            adopter = _DistAdopter(venv, store, dist_info, progress, ingest_linker, safe_linker=safe_linker,
                                   venv_links=venv_links)
            try:
                record = adopter.adopt()
            except VenvError as e:
                report.skipped[dist_info.name] = str(e)
                continue
            if store.add_dist(record):
                report.new_dists.append(record.key)
            records.append(record)
            report.new_objects += adopter.new_objects
            report.new_bytes += adopter.new_bytes
            report.shared_bytes += adopter.shared_bytes
            report.shared_inode_files += adopter.shared_inode_files
            report.shared_inode_copied_bytes += adopter.shared_inode_copied_bytes
            if adopter.kept:
                report.kept_in_venv[record.name] = adopter.kept
        progress.close()
        state.selection = [r.key for r in records]
        # The state is written before the venv is touched: from here on a rerun knows the venv is managed.
        venv.write_state(state)  # and its copy in the store's registry
        if bytecode == "now":
            report.compiled = ensure_bytecode(store, records, state.interpreter, venv.python)
        linker = Linker(link_mode)
        materialize(venv, store, state, linker, records=records, outside_site_packages=False)
        report.restamped = restamp(stamps)
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
    # Counted in the venv, not from the linkers: a file hardlinked while ingesting became the store object
    # in place (materialize then leaves it), and some of those are replaced by copies afterwards.
    hardlinked = count_store_inodes(venv.root, store_inodes(store, records, state.interpreter.cache_tag), skip=None)
    if hardlinked:
        why = "as asked" if link_mode == LinkMode.HARDLINK else "this filesystem cannot reflink"
        report.hardlink_warning = hardlink_warning(hardlinked, why)
    return report


def _venv_link_counts(root: Path) -> dict[tuple[int, int], int]:
    """Names each multiply linked regular file has inside the venv: an inode whose link count is
    higher has names elsewhere, which adopt must leave alone."""
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


def _record_paths(dist_info: Path) -> list[str]:
    """RECORD's paths, relative to site-packages."""
    text = "\n".join(_lines(dist_info / "RECORD"))
    return [row[0] for row in csv.reader(io.StringIO(text)) if row]


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []
