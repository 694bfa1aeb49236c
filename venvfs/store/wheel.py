"""Wheel ingest: a wheel file becomes objects plus one DistRecord in the store.

pypa/installer does the binary distribution format work (RECORD validation, ``.data`` schemes, entry
points) through ``StoreDestination``; this module adds what installer leaves to its caller: path
safety, duplicate and symlink entries, and turning every failure into one ``InvalidWheel`` line
before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from collections.abc import Iterable
from email.parser import Parser
from pathlib import Path
from typing import BinaryIO

import installer
from installer.exceptions import InstallerError
from installer.records import Hash, RecordEntry
from installer.sources import WheelFile
from packaging.tags import Tag, parse_tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from venvfs.errors import InvalidWheel
from venvfs.fsutil import UnsafePath, io_failure, safe_relpath, symlink_stays_inside
from venvfs.progress import Progress, human_bytes
from venvfs.store.limits import RATIO_FLOOR, IngestLimits, name_problem
from venvfs.store.records import INSTALLER_NAME, SCHEMES, DistRecord, EntryPoint, Scheme, StoredFile
from venvfs.store.store import Store


class StoreDestination(installer.destinations.WheelDestination):
    """Receives a wheel's files from installer and stores each as an object.

    With ``store=None`` it is a dry run that only checks names and schemes, reading no content: ingest
    runs installer through one first, so a wheel refused halfway through (an unknown ``.data``
    scheme, an unsafe entry point name) has written nothing.
    """

    def __init__(self, store: Store | None, symlinks: dict[str, str], progress: Progress | None = None) -> None:
        self.store = store
        self.symlinks = symlinks  # archive path (root scheme) -> target
        self.files: list[StoredFile] = []
        self.entry_points: list[EntryPoint] = []
        self.progress = progress

    def write_script(self, name: str, module: str, attr: str, section: str) -> RecordEntry:
        if section not in ("console", "gui"):
            raise InvalidWheel(f"entry point {name!r}: unknown section {section!r}")
        try:
            safe_relpath(name)
        except UnsafePath as e:
            raise InvalidWheel(f"entry point name: {e}") from None
        if "/" in name:
            raise InvalidWheel(f"entry point name {name!r} contains a path separator")
        self.entry_points.append(EntryPoint(name, module, attr, section))  # type: ignore[arg-type]
        return RecordEntry(name, None, None)

    def write_file(self, scheme: str, path: str | os.PathLike[str], stream: BinaryIO, is_executable: bool
                   ) -> RecordEntry:
        if scheme not in SCHEMES:
            raise InvalidWheel(f"{path}: unknown scheme {scheme!r}")
        try:
            rel = safe_relpath(str(path))
        except UnsafePath as e:
            raise InvalidWheel(str(e)) from None
        if scheme == "data" and rel.split("/")[0] == ".venvfs":
            # The data scheme is the venv's root: this would overwrite venvfs's own state and upper layer.
            raise InvalidWheel(f"{path}: data file inside the venv's .venvfs state directory")
        sch: Scheme = scheme
        if rel in self.symlinks and scheme in ("purelib", "platlib"):
            target = self.symlinks[rel]
            self.files.append(StoredFile(rel, sch, None, len(target.encode()), symlink=target))
            return RecordEntry(rel, None, None)
        if self.store is None:
            return RecordEntry(rel, None, None)
        put = self.store.put_stream(stream, executable=is_executable, durable=False)
        self.files.append(StoredFile(rel, sch, put.digest, put.size, executable=is_executable))
        if self.progress:
            self.progress.advance(put.size, note=rel)
        return RecordEntry(rel, Hash("sha256", put.digest), put.size)

    def finalize_installation(self, scheme: str, record_file_path: str,
                              records: Iterable[tuple[str, RecordEntry]]) -> None:
        # RECORD is written per venv by materialize (it lists that venv's generated scripts), not stored.
        return None


def _check_limits(zf: zipfile.ZipFile, limits: IngestLimits, wheel_size: int) -> None:
    """Refuse a wheel that would unpack to more than the limits allow, before a byte is inflated.

    The declared sizes can be trusted as upper bounds: zipfile yields no more than a member's
    ``file_size``, and one that inflates to more fails its CRC check.
    """
    total = 0
    for info in zf.infolist():
        problem = name_problem(info.filename.rstrip("/"), limits.max_name, limits.max_path)
        if problem is not None:
            raise InvalidWheel(problem)
        total += info.file_size
        if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise InvalidWheel(
                f"member {info.filename!r} unpacks to {human_bytes(info.file_size)} from "
                f"{human_bytes(info.compress_size)} ({ratio:.0f}:1, more than the limit of {limits.max_ratio:g}:1: "
                f"a zip bomb?); raise the limit with --max-ratio or $VENVFS_MAX_RATIO")
    if total > limits.max_unpacked:
        raise InvalidWheel(
            f"unpacks to {human_bytes(total)}, more than the limit of {human_bytes(limits.max_unpacked)}; "
            f"raise it with --max-unpacked-size or $VENVFS_MAX_UNPACKED_SIZE")
    if total > RATIO_FLOOR and total > limits.max_ratio * max(wheel_size, 1):
        raise InvalidWheel(
            f"unpacks to {human_bytes(total)} from {human_bytes(wheel_size)} ({total / max(wheel_size, 1):.0f}:1, "
            f"more than the limit of {limits.max_ratio:g}:1: a zip bomb?); raise the limit with --max-ratio "
            f"or $VENVFS_MAX_RATIO")


def _check_archive(zf: zipfile.ZipFile) -> dict[str, str]:
    """Reject unsafe or ambiguous archive members; return the (safe) symlink entries."""
    seen: set[str] = set()
    symlinks: dict[str, str] = {}
    for info in zf.infolist():
        name = info.filename
        if name.endswith("/"):
            continue
        try:
            norm = safe_relpath(name)
        except UnsafePath as e:
            raise InvalidWheel(str(e)) from None
        if norm != name:
            raise InvalidWheel(f"non-canonical member name {name!r}")
        if norm in seen:
            raise InvalidWheel(f"duplicate entry {name!r} (which copy to trust is ambiguous)")
        seen.add(norm)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            if not symlink_stays_inside(norm, target):
                raise InvalidWheel(f"symlink {name!r} points outside the wheel ({target!r})")
            symlinks[norm] = target
    # A member below a symlink member would be written through the link: with chained links
    # (``a -> ..``, ``a/b -> ..``, ...) that climbs out of the destination.
    for member in seen:
        parts = member.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in symlinks:
                raise InvalidWheel(f"entry {member!r} lies below the symlink entry {prefix!r}")
    return symlinks


def _wheel_tags(source: WheelFile) -> tuple[tuple[str, ...], Scheme]:
    try:
        wheel = Parser().parsestr(source.read_dist_info("WHEEL"))
    except (KeyError, UnicodeDecodeError) as e:
        raise InvalidWheel(f"missing or unreadable WHEEL file ({e})") from None
    version = wheel.get("Wheel-Version", "")
    if not version.split(".")[0] == "1":
        raise InvalidWheel(f"unsupported Wheel-Version {version!r}")
    tags = tuple(wheel.get_all("Tag") or ())
    if not tags:
        raise InvalidWheel("WHEEL has no Tag lines")
    purelib = wheel.get("Root-Is-Purelib", "true").strip().lower() == "true"
    return tags, ("purelib" if purelib else "platlib")


def ingest_wheel(store: Store, path: Path, *, progress: Progress | None = None,
                 limits: IngestLimits | None = None) -> tuple[DistRecord, bool]:
    """Validate ``path`` completely, then store it. Returns the record and whether it was new.

    Nothing is written before validation succeeds; a failure raises ``InvalidWheel``. ``limits``
    None: the defaults, or what ``$VENVFS_MAX_UNPACKED_SIZE`` and ``$VENVFS_MAX_RATIO`` say.
    """
    if limits is None:
        limits = IngestLimits.from_env()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidWheel(f"{path}: no such file") from None
    if not stat.S_ISREG(st.st_mode):
        # zipfile would block opening a FIFO until some writer appears.
        raise InvalidWheel(f"{path}: not a regular file")
    try:
        name, version, _build, file_tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as e:
        raise InvalidWheel(f"{path.name}: {e}") from None
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InvalidWheel(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise InvalidWheel(f"{path.name}: not a readable zip archive ({e})") from None
    with zf:
        try:
            _check_limits(zf, limits, st.st_size)
            symlinks = _check_archive(zf)
            source = WheelFile(zf)
            dist_info = source.dist_info_dir
            source.validate_record()
            tags, _root = _wheel_tags(source)
        except InvalidWheel as e:
            raise InvalidWheel(f"{path.name}: {e}") from None
        except Exception as e:  # installer raises ValueError subclasses, zipfile BadZipFile/EOFError/...
            detail = getattr(e, "issues", None)
            msg = detail[0] if detail else str(e) or type(e).__name__
            raise InvalidWheel(f"{path.name}: {msg}") from None
        if canonicalize_name(dist_info.removesuffix(".dist-info").rsplit("-", 1)[0]) != canonicalize_name(name):
            raise InvalidWheel(f"{path.name}: .dist-info directory {dist_info!r} does not match the file name")
        _check_metadata(source, name, str(version), path.name)
        if set(file_tags) != {t for tag in tags for t in _expand(tag)}:
            raise InvalidWheel(f"{path.name}: tags in WHEEL ({', '.join(tags)}) do not match the file name")
        # Dry run first: installer checks schemes and entry points only as it goes.
        _install(source, StoreDestination(None, symlinks), path.name)
        total = sum(i.file_size for i in zf.infolist())
        own_progress = progress or Progress(f"ingesting {path.name}", total, unit="bytes")
        dest = StoreDestination(store, symlinks, own_progress)
        try:
            with store.writing():
                try:
                    _install(source, dest, path.name)
                finally:
                    if progress is None:
                        own_progress.close()
                record = DistRecord(
                    name=canonicalize_name(name),
                    version=str(version),
                    dist_info=dist_info,
                    tags=tags,
                    files=tuple(sorted(dest.files, key=lambda f: (f.scheme, f.path))),
                    entry_points=tuple(sorted(dest.entry_points, key=lambda ep: ep.name)),
                    source=f"wheel:{path.name}",
                    source_sha256=_file_sha256(path),
                )
                new = store.add_dist(record)
        except OSError as e:
            # writing() has taken back this wheel's new objects by now; the wheel's unpacked size
            # is what it may need (less where files are already stored).
            raise io_failure(e, f"storing {path.name} in {store.root}", need=total, where=store.root) from None
    return record, new


def _file_sha256(path: Path) -> str:
    # Provenance only (which wheel file a build came from, for `venvfs add`'s choice between builds).
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _install(source: WheelFile, dest: StoreDestination, wheel_name: str) -> None:
    try:
        installer.install(source, dest, {"INSTALLER": INSTALLER_NAME})
    except InvalidWheel as e:
        raise InvalidWheel(f"{wheel_name}: {e}") from None
    except InstallerError as e:
        # InvalidWheelSource's args are (source, message).
        raise InvalidWheel(f"{wheel_name}: {e.args[-1] if e.args else type(e).__name__}") from None
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise InvalidWheel(f"{wheel_name}: {e}") from None


def _check_metadata(source: WheelFile, name: str, version: str, wheel_name: str) -> None:
    """The spec requires METADATA; its Name and Version must be the file name's."""
    try:
        meta = Parser().parsestr(source.read_dist_info("METADATA"), headersonly=True)
    except (KeyError, UnicodeDecodeError) as e:
        raise InvalidWheel(f"{wheel_name}: missing or unreadable METADATA ({e})") from None
    meta_name, meta_version = meta.get("Name"), meta.get("Version")
    if not meta_name or canonicalize_name(meta_name) != canonicalize_name(name):
        raise InvalidWheel(f"{wheel_name}: METADATA names {meta_name!r}, the file name {name!r}")
    try:
        same_version = meta_version is not None and Version(meta_version) == Version(version)
    except InvalidVersion:
        same_version = False
    if not same_version:
        raise InvalidWheel(f"{wheel_name}: METADATA has version {meta_version!r}, the file name {version!r}")


def _expand(tag: str) -> set[Tag]:
    return set(parse_tag(tag))
