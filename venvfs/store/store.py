"""The content-addressed store: immutable objects, distribution records, bytecode, and the venv registry.

Layout under the store root::

    format.json                   {"format": 1}
    objects/ab/<sha256>           file contents, mode 0444 (0555 with the suffix ``.x``)
    chunks/ab/<sha256>            sha256 of each 256 KiB of an object larger than that (``chunks.py``)
    dists/<key>.json              one DistRecord per distribution build
    bytecode/<cache_tag>/ab/<sha256>.pyc   timestamp .pyc of a .py object, for one Python version
    venvs/<id>.json               registry of venvs using the store: last path and a copy of the state
                                  (for gc, ``mount --all``, and repairing a damaged state)
    repaired                      "<digest> <time_ns>" per line: objects republished after damage, for
                                  running mounts to drop what they cached of them (``repairlog.py``)
    tmp/                          staging: everything is written here and renamed into place
    lock                          shared by writers, exclusive for gc
    gc-epoch                      a token gc changes before it removes bytecode (``gc_epoch``, ``warm.py``)
    lowers.json                   the read-only stores below this one, if any (``layers.py``)
    shared.json                   in a store ``venvfs store publish`` wrote to: other nodes use it (gc)

Every object and record appears by ``rename`` (or ``link``) of a fully written file (a temp file,
or a venv's own file that adopt hands over: ``take_inode``), so a crash leaves nothing half-visible;
a record is written only after all its objects exist and one syncfs has made them durable, and is
itself durable before anything names it.

A store may lie over read-only lower stores (``lowers``, see ``layers.py``): ``object_path``,
``bytecode_path``, ``dist_path``, ``get_dist`` and ``dist_keys`` look through them; everything that
writes uses the ``local_*`` paths, so a lower is never written, and the local store's records name only
its own objects (its gc, verify and repair need no lower).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from venvfs import fsflags
from venvfs.errors import Busy, StoreError
from venvfs.fsutil import (
    atomic_write_bytes,
    atomic_write_json,
    describe_oserror,
    exists,
    flock,
    io_failure,
    link_fd,
    read_json,
    syncfs,
)
from venvfs.store import STORE_ENV as STORE_ENV
from venvfs.store import layers
from venvfs.store.chunks import CHUNK, chunk_digests, chunks_path, needs_chunks, write_chunks
from venvfs.store.records import DistRecord
from venvfs.store.repairlog import log_repaired

STORE_FORMAT = 1
REGISTRY_FORMAT = 2

# Store files show this mtime everywhere (object inode, materialized copies, the FUSE view), so one
# timestamp .pyc per (content, Python version) is valid in every venv. 1980-01-01 is the oldest
# time a zip file can hold, so tools that zip site-packages keep working.
SOURCE_EPOCH = 315532800


class Placer(Protocol):
    """What ``put_placed`` needs of the venv layer's ``linkmode.Linker``: the store knows no venv, so
    the caller passes the machine that decides between reflink, hardlink and copy."""

    def place(self, src: Path, dst: Path, *, mode_bits: int | None = None) -> object: ...


log = logging.getLogger(__name__)

# Store root -> the objects this process published inside its outermost ``writing()`` block so far.
_PUBLISHED: dict[str, list[str]] = {}

_CHUNK = 1 << 20

_STORE_DIRS = ("objects", "dists", "bytecode", "venvs", "tmp")
GC_EPOCH = "gc-epoch"  # gc_epoch()


def default_store_path() -> Path:
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("venvfs")) / "store"


@dataclass(frozen=True)
class PutResult:
    digest: str
    size: int
    new: bool  # False when the object was already stored
    repaired: bool = False  # the stored object was damaged and has been replaced by this content


@dataclass(frozen=True)
class RegistryEntry:
    """What the store remembers of one venv that uses it (``venvs/<id>.json``)."""

    id: str
    path: Path  # where the venv was last seen
    state: dict[str, Any] | None  # the state last written (``VenvState.registry_copy``); None in old entries
    file: Path
    checksum: str | None = None  # the checksum of the venv's full state when that was written


class Store:
    """A store rooted at ``root``. Cheap to construct; ``open`` checks or creates its format."""

    def __init__(self, root: Path, *, lowers: Sequence[Path] = ()) -> None:
        self.root = root.absolute()
        self.lowers: tuple[Path, ...] = tuple(Path(p).absolute() for p in lowers)
        # Objects this Store object republished after finding them damaged (``_publish``,
        # ``repairs.repair_object``); the caller tells running mounts (``daemon.invalidate_repaired``).
        self.repaired: list[str] = []
        # Records read inside ``keeping_records``, with the identity of the file each was read from.
        self._records: dict[str, tuple[tuple[int, int, int, int], DistRecord]] | None = None
        # Sources found compiled, per cache tag, by ``bytecode.look_ahead`` (under ``writing()``).
        self.compiled_seen: dict[str, set[str]] = {}

    @classmethod
    def open(cls, root: Path | None = None, *, create: bool = True, lowers: Sequence[Path] | None = None) -> Store:
        """The store at ``root`` (default: ``$VENVFS_STORE``, else the user data directory).

        With ``create``, a missing or empty directory becomes a new store; never a directory that
        holds anything else (``--store ~/src`` must not scatter objects/ and dists/ among a user's
        files), and without ``create`` nothing is ever made. ``lowers`` (named by the user) are
        checked and recorded in the store; None: the ones it recorded (``layers.py``).
        """
        store = cls._open(root, create)
        if lowers is not None:
            layers.record(store.root, lowers)
            store.lowers = tuple(lowers)
        else:
            store.lowers = tuple(layers.recorded(store.root))
        return store

    @classmethod
    def _open(cls, root: Path | None, create: bool) -> Store:
        store = cls(root if root is not None else default_store_path())
        fmt = store.root / "format.json"
        try:
            is_store = fmt.exists()
        except OSError as e:  # e.g. ENOTDIR below a file named as the store, EACCES on a parent
            raise StoreError(f"{store.root}: not usable as a store ({describe_oserror(e)})") from None
        if is_store:
            try:
                version = read_json(fmt).get("format")
            except (OSError, ValueError, AttributeError) as e:
                raise StoreError(f"{store.root}: unreadable format.json ({e})") from e
            if version != STORE_FORMAT:
                raise StoreError(f"{store.root}: store format {version!r}, this venvfs reads {STORE_FORMAT}")
            return store
        _check_new_store_place(store, create)
        try:
            # A new store is closed to other users: what they may see of it goes through a mount its
            # owner serves. (An existing empty directory keeps the mode its owner gave it.)
            store.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for sub in _STORE_DIRS:
                (store.root / sub).mkdir(exist_ok=True)
            atomic_write_json(fmt, {"format": STORE_FORMAT})
        except OSError as e:
            raise io_failure(e, f"cannot create a store at {store.root}", where=store.root.parent) from None
        return store

    # -- locking -----------------------------------------------------------------------------------

    @functools.cached_property
    def _key(self) -> str:
        # Two spellings of one store (a symlink, a bind mount) must count as one, as they do for flock,
        # or an inner block would take itself for the outermost and wait on its own shared lock.
        try:
            st = os.stat(self.root)
        except OSError:
            return os.path.realpath(self.root)
        return f"{st.st_dev}:{st.st_ino}"

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Held (shared) while adding objects and records, so gc never deletes what is being written.

        A run that fails inside it (a full disk, an interrupt) takes back the objects it published
        itself and no record refers to: see ``_ingest``.
        """
        return self._ingest()

    @contextlib.contextmanager
    def _ingest(self) -> Iterator[None]:
        # Nested blocks (``venvfs add`` ingesting a wheel inside its own block, another Store object
        # for the same root) share one list per root: only the outermost block, the one whose lock
        # release ends this process's shared hold, may take the exclusive lock for the rollback;
        # an inner one would wait forever on the outer's shared lock (flock locks are per open file).
        key = self._key
        outermost = key not in _PUBLISHED
        published = _PUBLISHED.setdefault(key, [])
        try:
            with contextlib.ExitStack() as held:
                try:
                    held.enter_context(flock(self.root / "lock", exclusive=False, what=f"store {self.root}"))
                except OSError as e:
                    raise io_failure(e, f"cannot write to the store {self.root}") from None
                yield
        except BaseException:
            if outermost:
                _take_back(self, published)
            raise
        finally:
            if outermost:
                del _PUBLISHED[key]

    @contextlib.contextmanager
    def collecting(self, *, wait: bool = False, compiles: bool = False) -> Iterator[None]:
        """Exclusive: no writer is inside ``writing()``. With ``compiles`` (gc), no background bytecode
        compile runs either (``compiling()``)."""
        with flock(self.root / "lock", exclusive=True, wait=wait, what=f"store {self.root}"):
            if not compiles or not (self.root / "compile.lock").exists():
                # No compile has ever run here (its first one makes the file): none to wait for, and
                # a `gc --dry-run` must leave the store as it found it.
                yield
                return
            with flock(self.root / "compile.lock", exclusive=True, wait=wait,
                       what=f"the bytecode compile of store {self.root}"):
                yield

    def compiling(self) -> contextlib.AbstractContextManager[None]:
        """Held (shared) by a background bytecode compile: a lock of its own, which only gc waits for.
        Under the store lock a compile of minutes kept a failed ingest from taking back its objects
        (it waits for every shared holder) and so from saying why it failed; a compile reads only
        objects that records name and publishes only bytecode, which no take-back touches."""
        return flock(self.root / "compile.lock", exclusive=False, what=f"store {self.root}")

    # -- layers ------------------------------------------------------------------------------------

    @property
    def layers(self) -> tuple[Path, ...]:
        """The roots lookups search, the local store first."""
        return (self.root, *self.lowers)

    def local_only(self) -> Store:
        """This store without its lowers: what gc, verify and repair work on."""
        return Store(self.root) if self.lowers else self

    def check_lowers(self) -> None:
        """Raise ``StoreError`` naming a lower that is unreachable or the local store itself."""
        for lower in self.lowers:
            layers.check(lower, self.root)

    def layer_of(self, path: Path) -> Path:
        """The root of the layer ``path`` (found by a lookup) lies in."""
        return next((root for root in self.lowers if path.is_relative_to(root)), self.root)

    def _lookup(self, own: Path, rel: str) -> Path:
        if not self.lowers or own.exists():
            return own
        return layers.find(self.lowers, rel) or own

    # -- objects -----------------------------------------------------------------------------------

    def local_object_path(self, digest: str, executable: bool = False) -> Path:
        # One parse of one string, not three joins: adopt asks this ~6 times per file (pathlib's
        # joins were an eighth of a 24k-file adopt).
        return Path(f"{self.root}/objects/{digest[:2]}/{digest}{'.x' if executable else ''}")

    def local_object_name(self, digest: str, executable: bool = False) -> str:
        """``local_object_path`` as a string, for loops over every file of a venv: building a Path
        costs more than the stat it is made for (pathlib was a sixth of a first adopt)."""
        return f"{self.root}/objects/{digest[:2]}/{digest}{'.x' if executable else ''}"

    def has_local_object(self, digest: str, executable: bool = False) -> bool:
        return exists(self.local_object_name(digest, executable))

    def object_path(self, digest: str, executable: bool = False) -> Path:
        """Where object ``digest`` is, in whichever layer holds it (the local path if none does)."""
        own = self.local_object_path(digest, executable)
        if not self.lowers:
            return own
        return self._lookup(own, f"objects/{digest[:2]}/{digest}{'.x' if executable else ''}")

    def tmpfile(self) -> tuple[IO[bytes], str]:
        import tempfile

        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix="obj.")
        return os.fdopen(fd, "wb"), tmp

    def put_stream(self, stream: BinaryIO, *, executable: bool = False, durable: bool = True) -> PutResult:
        """Store the content of ``stream``; returns its digest. Idempotent and safe to race."""
        f, tmp = self.tmpfile()
        try:
            h = hashlib.sha256()
            size = 0
            with f:
                while chunk := stream.read(_CHUNK):
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            return self._publish(tmp, h.hexdigest(), size, executable)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put_file(self, path: Path, *, executable: bool = False, expected_digest: str | None = None) -> PutResult:
        """Store a copy of the file at ``path``, cloning its extents where the filesystem can.

        With ``expected_digest`` and the object already present, nothing is read twice: the caller
        has verified the content against that digest.
        """
        if expected_digest is not None:
            existing = self.local_object_path(expected_digest, executable)
            if existing.exists():
                return PutResult(expected_digest, existing.stat().st_size, new=False)
        with open(path, "rb") as src:
            return self.put_stream(src, executable=executable)

    def put_placed(self, path: Path, digest: str, size: int, executable: bool, linker: Placer, *,
                   chunk_list: bytes | None = None) -> PutResult:
        """Store the file at ``path``, whose content the caller has hashed to ``digest``, by the
        linker's mode: a hardlink or reflink costs no data copy (adopting a torch venv writes
        700 MB less), and a hardlink makes ``path`` itself the store object. ``chunk_list``: what
        ``hash_fd`` gave for it, so a large file is not read again for its chunk list.
        """
        if self.local_object_path(digest, executable).exists():
            return PutResult(digest, size, new=False)
        import tempfile

        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix="obj.")
        os.close(fd)
        try:
            linker.place(path, Path(tmp), mode_bits=0o555 if executable else 0o444)
            return self._publish(tmp, digest, size, executable, chunk_list=chunk_list)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _publish(self, tmp: str, digest: str, size: int, executable: bool, *,
                 chunk_list: bytes | None = None) -> PutResult:
        final = self.local_object_path(digest, executable)
        if final.exists():
            # The caller holds these bytes under this digest (a wheel, a hashed file): the one moment a
            # damaged object can be put right for the price of one read, so the stored one is checked.
            problem = check_object(self.root, final, digest)
            if problem is None:
                return PutResult(digest, size, new=False)
            replace_object(self, None if problem == "chunk list damaged" else tmp, digest, size, executable, problem)
            return PutResult(digest, size, new=False, repaired=True)
        if needs_chunks(size):
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _write_chunk_list(self, digest, fd, size, chunk_list)
            finally:
                os.close(fd)
        try:
            return _seal_and_link(self, tmp, final, digest, size, executable)
        except FileExistsError:
            return PutResult(digest, size, new=False)

    def sync_objects(self) -> None:
        """Make objects written without fsync (content and names) durable before a record refers to
        them: after a power loss a record must never point at an empty or missing object."""
        syncfs(self.root / "objects")

    # -- distribution records ----------------------------------------------------------------------

    def local_dist_path(self, key: str) -> Path:
        return self.root / "dists" / f"{key}.json"

    def dist_path(self, key: str) -> Path:
        return self._lookup(self.local_dist_path(key), f"dists/{key}.json")

    def add_dist(self, record: DistRecord) -> bool:
        """Publish ``record``; its objects must already be stored. Returns False if it was already
        there (in a lower store too: a build present below is never copied up)."""
        return self.add_dists([record])[0]

    def add_dists(self, records: list[DistRecord], *, objects_checked: bool = False) -> list[bool]:
        """Publish each of ``records`` (False for one already there): one flush of the filesystem
        for them all, before and after, instead of one syncfs and two fsyncs per record (adopt
        publishes dozens at once, and each syncfs also waits for every other writer's data).

        ``objects_checked``: the caller found or put every object the records name in this
        ``writing()`` block (which keeps gc away), so they are not looked up again."""
        todo = []
        for record in records:
            for f in record.files:
                if objects_checked:
                    break
                if f.digest is not None and not exists(self.local_object_name(f.digest, f.executable)):
                    raise StoreError(f"{record.key}: object {f.digest} for {f.path} is not in the store")
            todo.append(not self.dist_path(record.key).exists())
        if not any(todo):
            return todo
        self.sync_objects()
        for record, new in zip(records, todo, strict=True):
            if new:
                # Staged in tmp/, which gc clears: a writer killed before the rename leaves nothing in dists/.
                # Compact: json's C encoder writes it (an indented record takes the pure-Python one,
                # several times slower for a record of thousands of files).
                atomic_write_json(self.local_dist_path(record.key), record.to_json(), tmp_dir=self.root / "tmp",
                                  durable=False, indent=None)
        # Before the caller writes what names them (a venv's state): a record is never lost once named.
        syncfs(self.root / "dists")
        return todo

    def get_dist(self, key: str) -> DistRecord:
        path = self.dist_path(key)
        try:
            if self._records is None:
                return DistRecord.from_json(read_json(path))
            st = os.stat(path)
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            known = self._records.get(key)
            if known is None or known[0] != ident:
                known = self._records[key] = (ident, DistRecord.from_json(read_json(path)))
            return known[1]
        except FileNotFoundError:
            if self.lowers:
                raise StoreError(f"distribution {key} is in no layer of the store {self.root} (lower stores: "
                                 f"{', '.join(map(str, self.lowers))}; is one unreachable?)") from None
            raise StoreError(f"distribution {key} is not in the store {self.root}") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{path}: unreadable record ({e})") from e

    def keep_records(self) -> None:
        """From now on ``get_dist`` parses each record once, as inside ``keeping_records``: for a
        command that reads records ahead of knowing which it needs (``venvfs uv``, while uv plans)."""
        if self._records is None:
            self._records = dict(WARM_RECORDS.get(self.root, {}))

    def has_dist(self, key: str) -> bool:
        return self.dist_path(key).exists()

    def dist_keys(self) -> list[str]:
        if self.lowers:
            return layers.dist_keys(self.layers)
        return sorted(p.name[: -len(".json")] for p in (self.root / "dists").glob("*.json"))

    def iter_dists(self) -> Iterator[DistRecord]:
        for key in self.dist_keys():
            yield self.get_dist(key)

    def view_cache_path(self, key: str) -> Path:
        """The index of one selection's tree (``venvfs.venv.viewindex``): a cache, rebuilt when missing."""
        return self.root / "views" / f"{key}.index"

    # -- bytecode ----------------------------------------------------------------------------------

    def local_bytecode_path(self, cache_tag: str, digest: str) -> Path:
        return Path(f"{self.root}/bytecode/{cache_tag}/{digest[:2]}/{digest}.pyc")

    def bytecode_path(self, cache_tag: str, digest: str) -> Path:
        own = self.local_bytecode_path(cache_tag, digest)
        if not self.lowers:
            return own
        return self._lookup(own, f"bytecode/{cache_tag}/{digest[:2]}/{digest}.pyc")

    def put_bytecode(self, cache_tag: str, digest: str, pyc: Path) -> None:
        """Publish the compiled ``pyc`` (a file in ``tmp/``) for source object ``digest``."""
        final = self.local_bytecode_path(cache_tag, digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(pyc, 0o444)
        with contextlib.suppress(FileExistsError):
            os.link(pyc, final)
        os.unlink(pyc)

    # -- venv registry -----------------------------------------------------------------------------

    @staticmethod
    def _venv_id(venv: Path) -> str:
        """The name of a venv's registry entry before venvs had ids of their own (and of its daemon log)."""
        return hashlib.sha256(os.fsencode(venv.absolute())).hexdigest()[:20]

    def registry_path(self, venv_id: str) -> Path:
        return self.root / "venvs" / f"{venv_id}.json"

    def register_venv(self, venv_id: str, venv: Path, state: dict[str, Any], *, checksum: str,
                      durable: bool = True) -> None:
        """Record (or update) the venv ``venv_id``: where it was last seen, and a copy of its state.

        The copy is what keeps its distributions alive in gc while the venv cannot be read (moved,
        on an unplugged disk, its state damaged), and what ``venvfs mount`` restores a damaged state
        from. The entry written before venvs had ids (named by a hash of the path) goes. ``durable``
        False: no fsync (see ``Venv.write_state``)."""
        # Staged beside the entry, not in tmp/: a venv command writes it without the store lock, and gc
        # clears tmp/ under that lock.
        atomic_write_json(self.registry_path(venv_id),
                          {"format": REGISTRY_FORMAT, "id": venv_id, "path": str(venv.absolute()), "state": state,
                           "checksum": checksum}, durable=durable)
        legacy = self._venv_id(venv)
        if legacy != venv_id:
            self.registry_path(legacy).unlink(missing_ok=True)

    def unregister_venv(self, venv: Path) -> None:
        """Forget every entry recorded for the path ``venv`` (eject)."""
        for entry in self.registry():
            if entry.path == venv.absolute():
                entry.file.unlink(missing_ok=True)

    def forget_venv(self, entry: RegistryEntry) -> None:
        entry.file.unlink(missing_ok=True)

    def registry(self) -> list[RegistryEntry]:
        """Every readable registry entry. An unreadable one is skipped (and left for a human)."""
        entries = (registry_entry(self, file.stem) for file in sorted((self.root / "venvs").glob("*.json")))
        return [e for e in entries if e is not None]

    def registry_entries_at(self, venv: Path) -> list[RegistryEntry]:
        """The entries whose venv was last seen at ``venv``, those with a state copy first."""
        found = [e for e in self.registry() if e.path == venv.absolute()]
        return sorted(found, key=lambda e: e.state is None)

    def registered_venvs(self) -> list[Path]:
        """Where the registered venvs were last seen (each path once)."""
        return list(dict.fromkeys(e.path for e in self.registry()))

    # -- accounting, verification, collection ------------------------------------------------------

    def iter_objects(self) -> Iterator[tuple[str, bool, Path]]:
        for sub in sorted((self.root / "objects").iterdir()):
            for obj in sorted(sub.iterdir()):
                name = obj.name
                executable = name.endswith(".x")
                yield (name[:-2] if executable else name), executable, obj


def disk_usage(path: Path) -> int:
    """Bytes the file at ``path`` really occupies (allocated blocks, not its length)."""
    return path.stat().st_blocks * 512


def _check_new_store_place(store: Store, create: bool) -> None:
    """Refuse to make a store where one must not be made (see ``open``)."""
    try:
        st = store.root.stat()
    except FileNotFoundError:
        if not create:
            raise StoreError(f"no venvfs store at {store.root} (`venvfs store add` or `venvfs adopt` "
                             "makes one)") from None
        return
    except OSError as e:
        raise StoreError(f"{store.root}: not usable as a store ({describe_oserror(e)})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{store.root} is not a directory, so not a venvfs store")
    try:
        names = os.listdir(store.root)
    except OSError as e:
        raise StoreError(f"{store.root}: not usable as a store ({describe_oserror(e)})") from None
    # What a creation killed before format.json was written leaves behind: still ours to finish.
    foreign = [n for n in names
               if n not in (*_STORE_DIRS, "views", "lock", "compile.lock") and not n.startswith(".format.json.")]
    if foreign:
        raise StoreError(f"{store.root} is not a venvfs store (no format.json) and not empty "
                         f"({len(foreign)} entries, e.g. {sorted(foreign)[0]!r}): refusing to turn it into one")
    if not create:
        raise StoreError(f"no venvfs store at {store.root} (an empty directory)")


def _take_back(store: Store, published: list[str]) -> None:
    """Remove the objects this run published that no record refers to, after a failure.

    Why this is safe against a concurrent ingest that found one of them already stored and
    counts on it: every writer decides "already stored" and publishes the record that refers to
    the object under the shared lock, so once this run holds the exclusive lock (as gc does)
    each such writer has either published its record, which the scan below sees, or ended
    without one. What no record names at that moment is referenced by nobody: the same rule gc
    applies to every object, applied here only to this run's own, so gc is never needed after
    a failed ingest. The shared lock is released first: flock would deadlock this process's
    exclusive request against its own shared one.
    """
    if not published:
        return
    try:
        with store.collecting(wait=True):
            referenced: set[tuple[str, bool]] = set()
            for path in (store.root / "dists").glob("*.json"):
                referenced |= digests_in_raw_record(path)
            for name in published:
                obj = Path(name)
                executable = obj.name.endswith(".x")
                digest = obj.name.removesuffix(".x")
                if (digest, executable) not in referenced:
                    obj.unlink(missing_ok=True)
                    if not store.local_object_path(digest, not executable).exists():
                        chunks_path(store.root, digest).unlink(missing_ok=True)
    except (OSError, Busy) as e:
        # Unlinking frees space, so this rarely fails; what stays is what gc removes anyway.
        log.warning("could not take back the %d object(s) this run stored in %s (%s); "
                    "`venvfs store gc` removes them", len(published), store.root, e)


# Records this process parsed before the command it runs began, per store root: the mount service
# parses the registered venvs' records while idle (``warm.py``), and the commands it forks start with
# them. Each is checked against its file's identity at use, as any record ``keeping_records`` keeps.
WARM_RECORDS: dict[Path, dict[str, tuple[tuple[int, int, int, int], DistRecord]]] = {}


@contextlib.contextmanager
def keeping_records(store: Store) -> Iterator[None]:
    """Inside the block, ``store.get_dist`` parses each record once: the parse checks the key against
    the whole manifest (~3 ms for scipy), and selecting asks for one several times. A record is kept
    while its file is the one read (records are never rewritten; gc unlinks). Only for a command's
    span: a daemon's Store must not hold every record it ever read."""
    if store._records is not None:
        yield
        return
    store._records = dict(WARM_RECORDS.get(store.root, {}))
    try:
        yield
    finally:
        store._records = None


def gc_epoch(store: Store) -> str:
    """A token that changes whenever gc removes bytecode (``bump_gc_epoch``): facts about what
    is compiled, learnt earlier by a long-lived process (``warm.py``), hold while it is unchanged.
    Read it under the store's shared lock (``writing()``, ``compiling()``), which gc excludes."""
    try:
        return (store.root / GC_EPOCH).read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def bump_gc_epoch(store: Store) -> None:
    """Under ``collecting()``, before gc removes any bytecode: a gc killed half way has bumped it already.
    Not durable: the processes whose facts it voids do not outlive the machine's page cache."""
    atomic_write_bytes(store.root / GC_EPOCH, os.urandom(8).hex().encode(), durable=False, tmp_dir=store.root / "tmp")


def check_object(root: Path, path: Path, digest: str) -> str | None:
    """What is wrong with the object at ``path`` (stored as ``digest`` in the store at ``root``), None
    if nothing: "missing", "not a regular file", "modified", "chunk list damaged", "writable"."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    whole = hashlib.sha256()
    pieces = bytearray()
    with open(path, "rb") as f:
        while piece := f.read(CHUNK):
            whole.update(piece)
            pieces += hashlib.sha256(piece).digest()
    if whole.hexdigest() != digest:
        return "modified"
    if needs_chunks(st.st_size):
        listed = chunks_path(root, digest)
        try:
            if listed.read_bytes() != pieces:
                return "chunk list damaged"
        except FileNotFoundError:
            # Stored before chunk lists existed: the object is good, so its list can be made now
            # (a mount checks such an object whole on its first read until then).
            with contextlib.suppress(OSError):
                atomic_write_bytes(listed, bytes(pieces), mode=0o444, tmp_dir=root / "tmp")
    if st.st_mode & 0o222:
        return "writable"
    return None


def digests_in_raw_record(path: Path) -> set[tuple[str, bool]]:
    """The objects a record names, read leniently from a record that does not parse as one: gc and
    verify keep and count them."""
    try:
        data = read_json(path)
        return {(f["digest"], bool(f.get("executable"))) for f in data.get("files", []) if "digest" in f}
    except (OSError, ValueError, TypeError, KeyError):
        return set()


def replace_object(store: Store, tmp: str | None, digest: str, size: int, executable: bool, problem: str) -> None:
    """Publish the good bytes in ``tmp`` as object ``digest`` in place of a damaged one (``tmp``
    None: the object is right and only its chunk list is not).

    By rename, never by writing into the damaged file: its inode may be hardlinked into venvs (the
    hardlink fallback, or how it got damaged), and writing through it would change them under a
    running program. Those names keep the damaged inode; the store's name gets a fresh one.
    """
    final = store.local_object_path(digest, executable)
    fd = os.open(final if tmp is None else tmp, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if needs_chunks(size):
            atomic_write_bytes(chunks_path(store.root, digest), chunk_digests(fd, size), mode=0o444,
                               tmp_dir=store.root / "tmp", durable=False)
        if tmp is not None:
            # Renamed over a name records already use: never an empty object after a crash.
            os.fsync(fd)
    finally:
        os.close(fd)
    if tmp is not None:
        os.chmod(tmp, 0o555 if executable else 0o444)
        os.utime(tmp, (SOURCE_EPOCH, SOURCE_EPOCH))
        # A damaged immutable object (a disk error) cannot be renamed over until the flag is off.
        fsflags.set_immutable(final, False)
        os.replace(tmp, final)
    log.info("repaired object %s (%s)", digest, problem)
    store.repaired.append(digest)
    log_repaired(store.root, [digest])


def take_inode(store: Store, fd: int, digest: str, size: int, executable: bool, *,
               chunk_list: bytes | None = None) -> PutResult | None:
    """Publish the open file ``fd`` itself (its inode: no data copied, no temporary name) as the
    object ``digest``, which the caller read from that fd; None where the kernel cannot link it
    here (no ``/proc``, another filesystem, the file unlinked meanwhile): the caller then stores
    it another way. A file the store did not take keeps its own mode and mtime.

    Only for a file every name of which the caller owns and gives up to the store (adopt's
    hardlink mode, see docs/design.md "Whose inodes the store may take"): it becomes mode 0444
    (0555) and mtime ``SOURCE_EPOCH`` before it gets the store's name. The name is made from
    the fd, not from a path, so the inode published is the one that was hashed and chmodded
    even if the caller's path now names another file.
    """
    final = store.local_object_name(digest, executable)
    if exists(final):
        # Checked first: the file must keep its mode and mtime (and so not pass for a placed copy)
        # when the store already has these bytes in another inode.
        return PutResult(digest, size, new=False)
    if needs_chunks(size):
        _write_chunk_list(store, digest, fd, size, chunk_list)
    before = os.fstat(fd)
    try:
        put = _seal_and_link(store, fd, final, digest, size, executable)
    except FileExistsError:
        # A racing writer published these bytes between the check above and the link: another thread
        # or process of the same adopt, with a file of equal content (pip and setuptools vendor the
        # same packaging modules). The file is not the store's, so it gets its mode and mtime back:
        # with the store's it passed for a placed copy, and was never linked to the object.
        _unseal(fd, before)
        return PutResult(digest, size, new=False)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.EOPNOTSUPP,
                       errno.ENOENT):
            _unseal(fd, before)
            return None
        raise
    return put


def _unseal(fd: int, before: os.stat_result) -> None:
    with contextlib.suppress(OSError):
        os.chmod(fd, stat.S_IMODE(before.st_mode))
        os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))


def registry_entry(store: Store, venv_id: str) -> RegistryEntry | None:
    """The store's registry entry of the venv ``venv_id`` (``Store.register_venv``), None if it has
    none or it cannot be read."""
    file = store.registry_path(venv_id)
    try:
        data = read_json(file)
        state = data.get("state") if data.get("format") == REGISTRY_FORMAT else None
        return RegistryEntry(id=venv_id, path=Path(data["path"]),
                             state=state if isinstance(state, dict) else None, file=file,
                             checksum=data.get("checksum"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def published(store: Store) -> list[str]:
    """The objects this process published inside its outermost ``writing()`` block of ``store`` so
    far: the live list, which a take-back after a failure works through (adopt adds the objects of
    the process it forked, so that they are taken back too)."""
    return _PUBLISHED[store._key]


def _seal_and_link(store: Store, src: str | int, final: str | Path, digest: str, size: int,
                   executable: bool) -> PutResult:
    """Give ``src`` (a temp file's path, or the fd of a file adopt hands over) the store's mode and
    mtime, then its name (FileExistsError: a racing writer published it first); the object counts as
    this run's own for a take-back after a failure."""
    os.chmod(src, 0o555 if executable else 0o444)
    os.utime(src, (SOURCE_EPOCH, SOURCE_EPOCH))
    # Counted before the link, so that an interrupt between the two cannot leave an object no
    # take-back knows of; a name this run did not publish (EEXIST) is not its own to take back.
    name = os.fspath(final)
    names = _PUBLISHED.get(store._key)
    if names is not None:
        names.append(name)
    try:
        _link_object(store, src, final)
    except OSError:
        # Not linked (EEXIST: a racing writer's). An interrupt keeps the name: it may have been linked,
        # and a take-back removes only what no record names, under gc's lock.
        if names is not None:
            names.remove(name)  # threads may hold equal names: any one of them is ours
        raise
    return PutResult(digest, size, new=True)


def _link_object(store: Store, src: str | int, final: str | Path) -> None:
    """Name the file ``src`` (a path, or an open fd) ``final``.

    link, unlike rename, fails when a racing writer already published the same object, which
    leaves that object's inode (perhaps already hardlinked into a venv) untouched. The 256
    fan-out directories are made on the first ENOENT instead of by a mkdir per object, and the link
    is then tried once more whatever mkdir found: a racing writer may have made the directory
    between our ENOENT and our look (three concurrent ingests of one wheel failed so, 1 run in 5)."""
    for attempt in range(2):
        try:
            if isinstance(src, int):
                link_fd(src, final)
            else:
                os.link(src, final)
            return
        except FileNotFoundError:
            if attempt:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(os.path.dirname(final))


def _write_chunk_list(store: Store, digest: str, fd: int, size: int, chunk_list: bytes | None) -> None:
    # Before the object: a mount never meets a large object it cannot check as it reads.
    # (An object stored before chunk lists existed gets its list when it is added again.)
    path = chunks_path(store.root, digest)
    if path.exists():
        return
    if chunk_list is None:
        write_chunks(store.root, digest, fd, size, store.root / "tmp")
    else:
        # Not fsynced here: the store's syncfs before a record is published covers it.
        atomic_write_bytes(path, chunk_list, mode=0o444, tmp_dir=store.root / "tmp", durable=False)
