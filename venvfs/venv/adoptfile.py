"""One file of an adopted distribution read, checked and, where it may be, taken by the store, in
one open (see ``venvfs.venv.adopt``, which runs large files in worker threads).

Every step works on the inode the first open(2) found: it is what is hashed, checked against RECORD
and perhaps taken, whatever the path names by then. The store takes an inode here only when nothing
needs deciding about it (see docs/design.md, "Whose inodes the store may take"): a site-packages file
with no other name, its hash equal to RECORD's, the hardlink mode already settled for its
filesystem by an earlier file, and no object of these bytes in the store. Every other case goes
back to the adopting thread with the file still open, which stores it as before.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Literal, NamedTuple

from venvfs.store.chunks import FileDigests, digest_fd
from venvfs.store.records import SITE_SCHEMES, Scheme
from venvfs.store.store import PutResult, Store, take_inode
from venvfs.venv.linkmode import Linker, LinkMode
from venvfs.venv.ownpyc import OpenPyc, Stamp, open_valid_pyc

_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Read(NamedTuple):
    fd: int  # open on the file that was read: the inode the store may take
    st: os.stat_result
    digests: FileDigests


def read_file(path: str, algo: str) -> Read | None:
    """Open, stat and hash one file; None if it is gone or no regular file (any more)."""
    try:
        fd = os.open(path, _OPEN)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        # What is read, hashed and perhaps taken by the store is this inode, whatever the path names
        # by then: every later check is of it, not of an earlier lstat.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return Read(fd, st, digest_fd(fd, st.st_size, algo))
    except BaseException:
        os.close(fd)
        raise


class Job(NamedTuple):
    scheme: Scheme
    rel: str
    path: str
    algo: str
    want: str | None  # RECORD's digest (by ``algo``)
    pyc: str | None  # the venv's own bytecode of this module, kept valid if it is (``ownpyc``)


Kind = Literal["other", "gone", "in_place", "edited", "taken", "read"]


class Outcome(NamedTuple):
    """What became of a ``Job``. ``other``: no regular file when opened (a symlink, a socket, an
    error): the adopting thread looks at it by its path. ``read``: the file is open in ``read`` for
    the adopting thread to store (and close). ``taken`` and ``in_place``: the file is its store
    object's inode (``put``: taken by this run)."""

    job: Job
    kind: Kind
    executable: bool = False
    size: int = 0
    digest: str | None = None
    read: Read | None = None
    put: PutResult | None = None
    stored: bool | None = None  # whether the store has the object (None: not known)
    stamp: Stamp | None = None  # a valid .pyc of the module, to restamp once it is a store file
    restamped: bool = False  # its .pyc was restamped here (the file was taken)


class FileReader:
    """Runs ``Job``s; shared by the adopting thread and the workers (it keeps no state of its own)."""

    def __init__(self, store: Store, linker: Linker, store_dev: Callable[[], int], magic: bytes | None) -> None:
        self.store = store
        self.linker = linker  # only asked which mode it settled: a worker never probes one
        self.store_dev = store_dev
        self.magic = magic

    def run(self, job: Job) -> Outcome:
        try:
            fd = os.open(job.path, _OPEN)
        except (FileNotFoundError, NotADirectoryError):
            return Outcome(job, "gone")
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENXIO, errno.EACCES, errno.EPERM):
                return Outcome(job, "other")  # a symlink, a socket, unreadable: looked at by path
            raise
        pyc: OpenPyc | None = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return Outcome(job, "other")
            executable = bool(st.st_mode & 0o111)
            stored: bool | None = None
            # A file with one name cannot be its store object already (that has a name in the store
            # too): whether the store has its bytes is asked once, by take_inode or after the hash.
            if job.algo == "sha256" and job.want is not None and st.st_nlink > 1:
                try:
                    ost = os.stat(self.store.local_object_name(job.want, executable))
                except FileNotFoundError:
                    stored = False
                else:
                    stored = True
                    if (ost.st_ino, ost.st_dev) == (st.st_ino, st.st_dev):
                        # Already hardlinked by an earlier (perhaps interrupted) adopt.
                        os.close(fd)
                        pyc = self._pyc(job, st)
                        return Outcome(job, "in_place", executable, st.st_size, job.want, stored=True,
                                       stamp=pyc.release() if pyc is not None else None)
            # Before the store gives the source its mtime: the header is checked against the old one.
            pyc = self._pyc(job, st)
            digests = digest_fd(fd, st.st_size, job.algo)
            if job.want is not None and (digests.other or digests.sha256) != job.want:
                os.close(fd)
                if pyc is not None:
                    pyc.close()
                return Outcome(job, "edited")
            read = Read(fd, st, digests)
            if stored is None:
                stored = self.store.has_local_object(digests.sha256, executable)
            if (not stored and job.scheme in SITE_SCHEMES and st.st_nlink == 1
                    and self.linker.settled_mode(st.st_dev, self.store_dev()) == LinkMode.HARDLINK):
                put = take_inode(self.store, fd, digests.sha256, digests.size, executable,
                                 chunk_list=digests.chunk_list)
                if put is not None and put.new:
                    os.close(fd)
                    restamped = pyc is not None and pyc.restamp()
                    return Outcome(job, "taken", executable, put.size, put.digest, put=put, restamped=restamped)
                stored = put is not None  # a racing writer published it first (None: not linkable here)
            return Outcome(job, "read", executable, digests.size, digests.sha256, read=read, stored=stored,
                           stamp=pyc.release() if pyc is not None else None)
        except BaseException:
            os.close(fd)
            if pyc is not None:
                pyc.close()
            raise

    def _pyc(self, job: Job, st: os.stat_result) -> OpenPyc | None:
        if job.pyc is None or self.magic is None:
            return None
        return open_valid_pyc(job.path, job.pyc, st, self.magic)


def close_outcomes(outcomes: list[Outcome]) -> None:
    """Close what ``outcomes`` hold open (after an error)."""
    for outcome in outcomes:
        if outcome.read is not None:
            os.close(outcome.read.fd)
