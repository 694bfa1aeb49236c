"""``UpperAdopter``: a distribution pip or uv installed into a mounted venv, stored through its
RECORD from the files in the upper layer (for ``commit.ingest_mounted``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
from pathlib import Path

from venvfs.errors import VenvError
from venvfs.progress import Progress
from venvfs.store.records import DistRecord, Scheme
from venvfs.store.store import PutResult, Store
from venvfs.venv.adopt import _DistAdopter
from venvfs.venv.linkmode import Linker, LinkMode
from venvfs.venv.upper import clone_or_copy
from venvfs.venv.venv import Venv

_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIRPATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_STAMP_AGE_NS = 100_000_000  # far above the kernel's timestamp granularity (a jiffy, 1-10 ms)


class Incomplete(VenvError):
    """A distribution whose files are not all there as its RECORD says (still being written, or edited)."""


class _Move:
    """Places a file the store already owns (a snapshot in ``STORE/tmp``) by renaming it."""

    def place(self, src: Path, dst: Path, *, mode_bits: int | None = None) -> object:
        os.replace(src, dst)
        return None


class UpperAdopter(_DistAdopter):
    """``_DistAdopter`` reading site-packages files from the upper layer, where pip and uv wrote them.

    A file is copied (reflinked where the filesystem can) into ``STORE/tmp`` first and that copy is
    hashed: the upper file stays writable through the mount, and an edit racing the ingest must
    not end in the store under the RECORD's digest. With ``strict``, any file missing or differing
    from its RECORD hash raises ``Incomplete`` before the record is made.
    """

    def __init__(self, venv: Venv, store: Store, dist_info: Path, progress: Progress, *, strict: bool = False) -> None:
        # The linker serves only files outside site-packages (scripts, data), which stay the venv's
        # own real files: copies, never hardlinks.
        super().__init__(venv, store, dist_info, progress, Linker(LinkMode.COPY))
        self.strict = strict
        self.upper_root = venv.upper_dir
        # rel -> (st_ino, st_size, st_mtime_ns, st_ctime_ns) of upper files seen equal to their object
        self.stamps: dict[str, tuple[int, int, int, int]] = {}

    def precheck(self) -> None:
        """Cheap completeness check before anything is stored: every file there, of its RECORD size."""
        name = self.metadata()[0]
        record_file = f"{self.dist_info.name}/RECORD"
        for path_field, hash_field, size_field in self.rows():
            where = self.classify(path_field, name)
            if where is None or not hash_field:
                continue
            scheme, rel = where
            if rel == record_file or ("__pycache__" in rel.split("/") and rel.endswith(".pyc")):
                continue
            try:
                st = os.lstat(self.venv.site_packages / path_field)
            except OSError:
                raise Incomplete(f"{path_field} is missing") from None
            if size_field.isdigit() and stat.S_ISREG(st.st_mode) and st.st_size != int(size_field) \
                    and scheme != "scripts":
                raise Incomplete(f"{path_field} differs from its RECORD size")

    def adopt(self) -> DistRecord:
        record = super().adopt()
        if self.strict and self.kept:
            raise Incomplete(f"{len(self.kept)} file(s) missing or differing from RECORD, e.g. {self.kept[0]}")
        return record

    def _adopt_file(self, scheme: Scheme, rel: str, path: str, expected: tuple[str, str] | None,
                    size_hint: int = 0) -> None:
        fd = self._open_upper(rel) if scheme == "purelib" and expected and expected[0] == "sha256" else None
        if fd is None:
            super()._adopt_file(scheme, rel, path, expected, size_hint)
            return
        assert expected is not None
        try:
            st = os.fstat(fd)
            executable = bool(st.st_mode & 0o111)
            want = expected[1]
            if self.store.local_object_path(want, executable).exists():
                put: PutResult | None = PutResult(want, st.st_size, new=False) if _hash_fd(fd) == want else None
            else:
                put = self._put_snapshot(fd, st.st_size, want, executable)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if put is None:
            self.kept.append(rel)  # edited since the install: the user's version stays, unshared
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        # Unchanged while it was read, and its last change older than the filesystem clock's coarse
        # tick (a write within the same tick would not move ctime): what was read is what it holds.
        if stamp == (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) \
                and time.time_ns() - st.st_ctime_ns > _STAMP_AGE_NS:
            self.stamps[rel] = stamp
        self._add(scheme, rel, put.digest, put.size, executable, new=put.new)

    def _open_upper(self, rel: str) -> int | None:
        """An fd of the regular file ``rel`` in the upper layer, reached without following a link;
        None where the upper layer has no regular file there (the mount then shows the lower one)."""
        parts = rel.split("/")
        try:
            dfd = os.open(self.upper_root, _DIRPATH)
        except OSError:
            return None
        try:
            for part in parts[:-1]:
                nfd = os.open(part, _DIRPATH, dir_fd=dfd)
                os.close(dfd)
                dfd = nfd
            fd = os.open(parts[-1], _OPEN, dir_fd=dfd)
        except OSError:
            return None
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def _put_snapshot(self, fd: int, size: int, digest: str, executable: bool) -> PutResult | None:
        tfd, tmp = tempfile.mkstemp(dir=self.store.root / "tmp", prefix="ingest.")
        try:
            clone_or_copy(fd, tfd, size)
            if os.fstat(tfd).st_size != size or _hash_fd(tfd) != digest:
                return None
            return self.store.put_placed(Path(tmp), digest, size, executable, _Move())
        finally:
            os.close(tfd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _hash_fd(fd: int) -> str:
    h = hashlib.sha256()
    off = 0
    while chunk := os.pread(fd, 1 << 20, off):
        h.update(chunk)
        off += len(chunk)
    return h.hexdigest()
