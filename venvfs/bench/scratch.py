"""Dedicated filesystems for the run, so that statfs deltas count only what a strategy wrote.

As root, every strategy works on a loop-mounted ext4 image (and reflink ones on a loop-mounted XFS
image made with ``-m reflink=1``): nothing else writes there, so the change in used blocks and inodes
around the creation of a venv is its true cost, hardlinks and shared extents included, which ``du``
gets wrong. Without root the run uses a directory on a shared filesystem and says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from venvfs.bench.system import fs_type

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


@dataclass(frozen=True)
class Usage:
    bytes: int
    inodes: int


def usage(path: Path) -> Usage:
    """Used bytes and inodes of the filesystem holding ``path``, after flushing dirty data.

    sync first: delayed allocation would otherwise leave blocks of just-written files uncounted.
    """
    os.sync()
    st = os.statvfs(path)
    return Usage((st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree)


def can_reflink(directory: Path) -> str | None:
    """None when FICLONE works in ``directory``, else why not."""
    try:
        fd, src = tempfile.mkstemp(dir=directory, prefix=".reflink-probe.")
    except OSError as e:
        return f"cannot write in {directory}: {e}"
    dst = src + ".clone"
    try:
        os.write(fd, b"x" * 4096)
        os.fsync(fd)
        with open(dst, "wb") as out:
            fcntl.ioctl(out.fileno(), FICLONE, fd)
        return None
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV):
            return f"{fs_type(directory)} at {directory} does not support reflinks (FICLONE: {e.strerror})"
        return f"FICLONE failed in {directory}: {e}"
    finally:
        os.close(fd)
        for p in (src, dst):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


@dataclass
class Filesystem:
    kind: str
    root: Path  # an empty directory on it, for this run
    description: str
    dedicated: bool  # nothing but this run writes to it, so statfs deltas are clean

    def to_json(self) -> dict[str, object]:
        return {"type": self.kind, "path": str(self.root), "description": self.description,
                "dedicated": self.dedicated}


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv[:2])} failed: {(proc.stderr or proc.stdout).strip()[:300]}")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (for unmounting in a safe order)."""
    prefix = str(path.resolve())
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            mnt = line.split()[1].replace("\\040", " ")
            if mnt == prefix or mnt.startswith(prefix.rstrip("/") + "/"):
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


def force_unmount(mountpoint: str) -> None:
    """Unmount whatever is there, however it was mounted (FUSE, overlay, loop); lazily if busy."""
    for argv in (["umount", mountpoint], ["fusermount3", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]):
        if shutil.which(argv[0]) is None:
            continue
        if subprocess.run(argv, capture_output=True).returncode == 0:
            return


class Scratch:
    """The run's working area: a base directory and, as root, loop-mounted dedicated filesystems.

    ``close`` always unmounts and deletes everything it made, also after an error or Ctrl-C.
    """

    def __init__(self, scratch: Path | None, *, loop: bool = True) -> None:
        parent = scratch if scratch is not None else Path(os.environ.get("TMPDIR", "/var/tmp"))  # noqa: S108 - big loop images: not tmpfs
        parent.mkdir(parents=True, exist_ok=True)
        self.user_dir = scratch
        self.base = Path(tempfile.mkdtemp(prefix="venvfs-bench-", dir=parent))
        self.loop = loop and os.geteuid() == 0 and shutil.which("losetup") is not None

    def _loop_image(self, kind: str, size: int, mkfs: list[str]) -> Filesystem:
        image = self.base / f"{kind}.img"
        mnt = self.base / f"{kind}-mnt"
        mnt.mkdir()
        with open(image, "wb") as f:
            f.truncate(size)  # sparse: only what the run writes takes space on the host
        _run([*mkfs, str(image)])
        _run(["mount", "-o", "loop", str(image), str(mnt)])
        root = mnt / "run"
        root.mkdir()
        return Filesystem(kind, root, f"{kind} on a {size >> 30} GiB loop image (dedicated)", True)

    def ext4(self, size: int) -> tuple[Filesystem, str | None]:
        """The filesystem for every non-reflink strategy; the second value says why it is not dedicated."""
        if self.loop and shutil.which("mkfs.ext4"):
            try:
                # Eager inode-table init: lazy init would keep writing in the background during the run.
                return self._loop_image("ext4", size, ["mkfs.ext4", "-q", "-F", "-E",
                                                       "lazy_itable_init=0,lazy_journal_init=0"]), None
            except OSError as e:
                why = f"loop-mounted ext4 failed ({e})"
        else:
            why = "no loop mounts (needs root and losetup)" if not self.loop else "mkfs.ext4 not installed"
        root = self.base / "fs"
        root.mkdir()
        kind = fs_type(root)
        return Filesystem(kind, root, f"{kind} at {self.base} (shared with other processes)", False), why

    def reflink(self, size: int) -> tuple[Filesystem | None, str | None]:
        """A reflink-capable filesystem: ``--scratch`` if it is one, else a loop XFS image as root."""
        if self.user_dir is not None and can_reflink(self.base) is None:
            root = self.base / "reflink"
            root.mkdir()
            kind = fs_type(root)
            return Filesystem(kind, root, f"{kind} at {self.base} (--scratch, shared)", False), None
        if not self.loop:
            probe = can_reflink(self.base)
            return None, (f"{probe}; give --scratch DIR on a reflink filesystem (XFS, btrfs), "
                          "or run as root for a loop-mounted XFS image")
        if shutil.which("mkfs.xfs") is None:
            return None, "mkfs.xfs not installed (apt-get install xfsprogs) and --scratch is not a reflink filesystem"
        try:
            return self._loop_image("xfs", size, ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"]), None
        except OSError as e:
            return None, f"loop-mounted XFS failed ({e})"

    def close(self) -> None:
        # Deepest first: venv mounts inside the loop filesystems, then the loop filesystems themselves.
        for mountpoint in mounts_under(self.base):
            force_unmount(mountpoint)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
