"""What the store knows about one distribution build: its files, entry points and identity.

A ``DistRecord`` is immutable and content-addressed: its key ends in a digest of the manifest, so the
same build adopted from two venvs, or ingested from the same wheel twice, has one key and one record.
The manifest holds no installer's name: see ``INSTALLER_NAME``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import posixpath
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

RECORD_FORMAT = 1

Scheme = Literal["purelib", "platlib", "scripts", "headers", "data"]
SCHEMES: tuple[Scheme, ...] = ("purelib", "platlib", "scripts", "headers", "data")
SITE_SCHEMES: frozenset[str] = frozenset({"purelib", "platlib"})

# Installers rewrite these in place (pip writes RECORD and INSTALLER, uv direct_url.json), so a
# materialized venv gets real copies: a hardlink would let the rewrite reach the shared store object.
REWRITTEN_METADATA: frozenset[str] = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})

# What an installer writes into a dist-info directory about the install rather than the build: its
# name, pip's REQUESTED, PEP 610's direct_url.json (where it installed from), uv's cache keys. One
# wheel installed by pip, by uv and by venvfs differs only in these, so they are no part of its content.
INSTALL_METADATA: frozenset[str] = REWRITTEN_METADATA | {"uv_cache.json", "uv_build.json"}


def canonicalize_name(name: str) -> str:
    """packaging's, imported when first used: ``packaging.utils`` loads ``packaging.tags`` (and with
    it ``platform`` and ``subprocess``), which commands that only read records never need."""
    from packaging.utils import canonicalize_name as canonical

    return canonical(name)


# The one installer file a record holds: every record stored since builds were keyed without the
# installer (wheel ingest, adopt, commit) has ``INSTALLER`` with these bytes and none of the rest of
# ``INSTALL_METADATA``, so one wheel gives one manifest, hence one key, whoever installed it. A venv
# where pip or uv installed the dist keeps what they wrote as its own files; where venvfs placed it,
# it says venvfs, which is the truth there.
INSTALLER_NAME = b"venvfs\n"
INSTALLER_DIGEST = hashlib.sha256(INSTALLER_NAME).hexdigest()


def is_install_metadata(dist_info: str, path: str) -> bool:
    """Whether ``path`` (relative to site-packages) is installer-written metadata of ``dist_info``."""
    return posixpath.dirname(path) == dist_info and posixpath.basename(path) in INSTALL_METADATA


@dataclass(frozen=True)
class StoredFile:
    """One file of a distribution, relative to its scheme's root (site-packages for purelib/platlib)."""

    path: str
    scheme: Scheme
    digest: str | None  # sha256 hex of the content; None for a symlink
    size: int
    executable: bool = False
    symlink: str | None = None

    @property
    def in_site_packages(self) -> bool:
        return self.scheme in SITE_SCHEMES

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "scheme": self.scheme, "size": self.size}
        if self.digest is not None:
            data["digest"] = self.digest
        if self.executable:
            data["executable"] = True
        if self.symlink is not None:
            data["symlink"] = self.symlink
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredFile:
        scheme = data["scheme"]
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}")
        return cls(
            path=str(data["path"]),
            scheme=scheme,
            digest=data.get("digest"),
            size=int(data["size"]),
            executable=bool(data.get("executable", False)),
            symlink=data.get("symlink"),
        )


@dataclass(frozen=True)
class EntryPoint:
    """A console or GUI script, generated per venv for that venv's interpreter."""

    name: str
    module: str
    attr: str
    section: Literal["console", "gui"]

    def to_json(self) -> list[str]:
        return [self.name, self.module, self.attr, self.section]

    @classmethod
    def from_json(cls, data: Iterable[str]) -> EntryPoint:
        name, module, attr, section = data
        if section not in ("console", "gui"):
            raise ValueError(f"unknown entry point section {section!r}")
        return cls(name, module, attr, section)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DistRecord:
    """One stored distribution build."""

    name: str  # canonical (PEP 503) name
    version: str
    dist_info: str  # the .dist-info directory name, as installed
    tags: tuple[str, ...]  # from WHEEL's Tag lines, e.g. "cp311-cp311-manylinux_2_17_x86_64"
    files: tuple[StoredFile, ...]
    entry_points: tuple[EntryPoint, ...] = ()
    source: str = ""  # "wheel:<file name>" or "adopted:<venv>"; informational, not part of the key
    omitted: tuple[str, ...] = field(default=())  # adopted files that were modified or missing
    # Provenance of the first store of this key (a later identical build shares the record), not part
    # of the key: the wheel file's sha256, and when (UTC, ISO 8601). Records older than these fields
    # have "" (the record file's mtime then tells the date).
    source_sha256: str = field(default="", compare=False)
    stored_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           compare=False)

    @functools.cached_property
    def key(self) -> str:
        # Cached: it hashes the whole manifest (15,000 files for torch), and callers compare keys in loops.
        # cached_property writes the instance __dict__ directly, which a frozen dataclass allows.
        return f"{canonicalize_name(self.name)}-{self.version}-{self.manifest_digest()[:16]}"

    def manifest_digest(self) -> str:
        manifest = {
            "name": canonicalize_name(self.name),
            "version": self.version,
            "dist_info": self.dist_info,
            "tags": sorted(self.tags),
            "files": sorted((f.to_json() for f in self.files), key=lambda d: (d["scheme"], d["path"])),
            "entry_points": sorted(ep.to_json() for ep in self.entry_points),
            "omitted": sorted(self.omitted),
        }
        return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

    @functools.cached_property
    def content_digest(self) -> str:
        """What the build is, without what its installer wrote about the install (``INSTALL_METADATA``).

        Equal for one wheel stored from the wheel file, adopted from a pip venv and from a uv venv;
        different for two wheels of one name and version whose files differ in any byte.
        """
        # purelib and platlib are one directory in a venv: a wheel stored from its file (its root
        # scheme) and adopted before adopt read the root scheme ("purelib") are one build.
        files = [{**f.to_json(), "scheme": "purelib" if f.in_site_packages else f.scheme} for f in self.files
                 if not (f.in_site_packages and is_install_metadata(self.dist_info, f.path))]
        content = {
            "name": canonicalize_name(self.name),
            "version": self.version,
            "dist_info": self.dist_info,
            "files": sorted(files, key=lambda d: (d["scheme"], d["path"])),
            "entry_points": sorted(ep.to_json() for ep in self.entry_points),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @property
    def is_complete(self) -> bool:
        return not self.omitted

    @functools.cached_property
    def is_normalized(self) -> bool:
        """Whether the record holds no installer's metadata but venvfs's ``INSTALLER`` (see
        ``INSTALLER_NAME``); records adopted before that hold pip's or uv's, under a key of their own."""
        # startswith first: a dirname per file cost ~0.5 ms per scipy-sized record, at every selection.
        prefix = self.dist_info + "/"
        meta = [f for f in self.site_files()
                if f.path.startswith(prefix) and is_install_metadata(self.dist_info, f.path)]
        return [(f.path, f.digest) for f in meta] == [(f"{self.dist_info}/INSTALLER", INSTALLER_DIGEST)]

    def normalized(self, installer: StoredFile) -> DistRecord:
        """This build as stored today: without the installer metadata a record adopted before held,
        with ``installer`` (venvfs's ``INSTALLER``, already stored) instead. Same content, new key."""
        files = [f for f in self.files if not (f.in_site_packages and is_install_metadata(self.dist_info, f.path))]
        return dataclasses.replace(self, files=tuple(sorted([*files, installer], key=lambda f: (f.scheme, f.path))),
                                   stored_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def site_files(self) -> Iterable[StoredFile]:
        return (f for f in self.files if f.in_site_packages)

    @property
    def logical_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "key": self.key,
            "name": self.name,
            "version": self.version,
            "dist_info": self.dist_info,
            "tags": list(self.tags),
            "source": self.source,
            **({"source_sha256": self.source_sha256} if self.source_sha256 else {}),
            **({"stored_at": self.stored_at} if self.stored_at else {}),
            "files": [f.to_json() for f in self.files],
            "entry_points": [ep.to_json() for ep in self.entry_points],
            "omitted": list(self.omitted),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DistRecord:
        if data.get("format") != RECORD_FORMAT:
            raise ValueError(f"unsupported record format {data.get('format')!r}")
        record = cls(
            name=str(data["name"]),
            version=str(data["version"]),
            dist_info=str(data["dist_info"]),
            tags=tuple(data["tags"]),
            files=tuple(StoredFile.from_json(f) for f in data["files"]),
            entry_points=tuple(EntryPoint.from_json(ep) for ep in data["entry_points"]),
            source=str(data.get("source", "")),
            omitted=tuple(data.get("omitted", ())),
            source_sha256=str(data.get("source_sha256", "")),
            stored_at=str(data.get("stored_at", "")),
        )
        if record.key != data.get("key"):
            raise ValueError(f"record key {data.get('key')!r} does not match its content")
        return record
