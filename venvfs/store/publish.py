"""``venvfs store publish``: copy distributions, with their objects, chunk lists and bytecode, from a
store into a shared one that other machines use as a lower store (``layers.py``).

Safe on a network filesystem, where ``flock`` cannot be relied on (NFS locks are emulated, lost on a
server reboot, and absent from many exports), so the shared store's lock is never taken: every file is
written under a temporary name unique to this host and process, fsynced, and published with ``link``
(``rename`` where the filesystem has no hard links), which is atomic on NFS as on a local filesystem;
a file already published is never replaced. Objects (their chunk lists first) and bytecode go before
the record that names them, and the record is written after a ``syncfs``, so a node reading the shared
store never finds a record whose objects are missing. Two publishers of one distribution write the
same bytes under the same names: whichever link lands first wins, the other finds it there, and both
end with one copy. Run again, publishing adds nothing.

Each object is re-hashed as it is copied: a damaged local object is refused (exit 5, ``venvfs store
verify --repair`` fixes it) rather than spread to every node.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from venvfs.errors import NoMatchingDistribution, StoreError, UsageError
from venvfs.fsutil import io_failure
from venvfs.store import layers
from venvfs.store.chunks import chunk_digests, chunks_path, needs_chunks
from venvfs.store.records import DistRecord, canonicalize_name
from venvfs.store.store import SOURCE_EPOCH, Store

_COPY = 1 << 20


@dataclass
class PublishReport:
    target: str
    added: list[str] = field(default_factory=list)  # distributions this run published
    present: list[str] = field(default_factory=list)  # already there (published before, or by another node)
    objects_added: int = 0
    objects_present: int = 0
    bytes_added: int = 0
    bytecode_added: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def select_keys(source: Store, names: Iterable[str], *, everything: bool) -> list[str]:
    """The keys of the builds to publish: every build of the source's own layer (``everything``), or
    each name as a key, a project name (all its stored builds) or ``name==version``."""
    own = source.local_only()
    if everything:
        return own.dist_keys()
    keys: list[str] = []
    records: list[DistRecord] | None = None
    for name in names:
        if own.has_dist(name):
            keys.append(name)
            continue
        if records is None:
            records = list(own.iter_dists())
        project, _, version = name.partition("==")
        found = [r.key for r in records
                 if r.name == canonicalize_name(project.strip()) and (not version or r.version == version.strip())]
        if not found:
            raise NoMatchingDistribution(f"{name}: no such distribution in the store {source.root} "
                                         "(`venvfs store list`)")
        keys.extend(found)
    return list(dict.fromkeys(keys))


def publish(source: Store, keys: list[str], target_root: Path) -> PublishReport:
    """Copy the builds ``keys`` of ``source`` into the store at ``target_root`` (made if missing or empty)."""
    fresh = not (target_root / "format.json").exists()
    target = Store.open(target_root, create=True)
    if fresh:
        # Made for other users and nodes to read (Store.open makes a user's own store 0700).
        target.root.chmod(0o755)
    layers.mark_shared(target.root)
    with contextlib.suppress(OSError):
        if os.path.samestat(os.stat(source.root), os.stat(target.root)):
            raise UsageError(f"{target.root} is the store being published from")
    report = PublishReport(target=str(target.root))
    writer = _Writer(target)
    with source.writing():  # the source's lock (local): its gc must not remove what is being copied
        for key in keys:
            if target.local_dist_path(key).exists():
                report.present.append(key)
                continue
            record = source.get_dist(key)
            writer.objects(source, record, report)
            writer.bytecode(source, record, report)
            target.sync_objects()
            # Last: once this name exists, every object it names is there (and durable).
            writer.put(source.dist_path(key).read_bytes(), target.local_dist_path(key), 0o444)
            report.added.append(key)
    return report


class _Writer:
    """Publishes files into the target by temporary name and link, without its lock."""

    def __init__(self, target: Store) -> None:
        self.target = target
        self._prefix = f".pub.{socket.gethostname()}.{os.getpid()}."

    def objects(self, source: Store, record: DistRecord, report: PublishReport) -> None:
        done: set[tuple[str, bool]] = set()
        for f in record.files:
            if f.digest is None or (f.digest, f.executable) in done:
                continue
            done.add((f.digest, f.executable))
            dst = self.target.local_object_path(f.digest, f.executable)
            if dst.exists():
                report.objects_present += 1
                continue
            if self._object(source.object_path(f.digest, f.executable), dst, f.digest, f.executable):
                report.objects_added += 1
                report.bytes_added += f.size
            else:
                report.objects_present += 1

    def _object(self, src: Path, dst: Path, digest: str, executable: bool) -> bool:
        tmp = self._tmp()
        try:
            h = hashlib.sha256()
            size = 0
            with open(src, "rb") as fin, open(tmp, "xb") as fout:
                while piece := fin.read(_COPY):
                    h.update(piece)
                    fout.write(piece)
                    size += len(piece)
                fout.flush()
                os.fsync(fout.fileno())
            if h.hexdigest() != digest:
                raise StoreError(f"object {digest} ({src}) does not match its name: not published "
                                 "(`venvfs store verify --repair` repairs it)")
            if needs_chunks(size):
                listed = chunks_path(self.target.root, digest)
                if not listed.exists():
                    fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        data = chunk_digests(fd, size)
                    finally:
                        os.close(fd)
                    self.put(data, listed, 0o444)
            os.chmod(tmp, 0o555 if executable else 0o444)
            os.utime(tmp, (SOURCE_EPOCH, SOURCE_EPOCH))
            return self._link(tmp, dst)
        except FileNotFoundError as e:
            if e.filename == str(src):
                raise StoreError(f"object {digest} is missing from {src.parent.parent.parent} "
                                 "(`venvfs store verify`)") from None
            raise io_failure(e, f"publishing into {self.target.root}") from None
        except OSError as e:
            raise io_failure(e, f"publishing into {self.target.root}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def bytecode(self, source: Store, record: DistRecord, report: PublishReport) -> None:
        tags = self._tags(source)
        for f in record.site_files():
            if f.digest is None or not f.path.endswith(".py"):
                continue
            for tag in tags:
                dst = self.target.local_bytecode_path(tag, f.digest)
                src = source.bytecode_path(tag, f.digest)
                if dst.exists() or not src.exists():
                    continue
                try:
                    if self.put(src.read_bytes(), dst, 0o444):
                        report.bytecode_added += 1
                except OSError as e:
                    raise io_failure(e, f"publishing into {self.target.root}") from None

    @staticmethod
    def _tags(source: Store) -> list[str]:
        tags: set[str] = set()
        for root in source.layers:
            with contextlib.suppress(OSError):
                tags.update(p.name for p in (root / "bytecode").iterdir() if p.is_dir())
        return sorted(tags)

    def put(self, data: bytes, dst: Path, mode: int) -> bool:
        """Publish ``data`` as ``dst`` unless it exists; False if it did."""
        tmp = self._tmp()
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            return self._link(tmp, dst)
        except OSError as e:
            raise io_failure(e, f"publishing into {self.target.root}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _tmp(self) -> Path:
        # Unique across nodes sharing the export: the host, this process, and a random part.
        return self.target.root / "tmp" / f"{self._prefix}{secrets.token_hex(6)}"

    @staticmethod
    def _link(tmp: Path, dst: Path) -> bool:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(tmp, dst)
        except FileExistsError:
            return False  # another publisher's identical file: it stays, untouched
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # No hard links here (some network and FUSE filesystems): rename, which replaces at
            # worst an identical file a racing publisher renamed a moment before.
            if dst.exists():
                return False
            os.rename(tmp, dst)
        return True
