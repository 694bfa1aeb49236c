"""The inode's immutable flag (``chattr +i``): the one protection that holds against root.

Mode 0444 stops no root and no owner with ``chmod``. ``FS_IMMUTABLE_FL`` makes the kernel refuse
every change to the inode (writes, truncate, chmod, chown, utime, xattrs, new hard links, unlink)
for every process, root included, until a process with ``CAP_LINUX_IMMUTABLE`` clears it. ext4,
XFS, btrfs and tmpfs (Linux >= 6.0) support it; others answer ``ENOTTY`` or ``EOPNOTSUPP``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

# _IOR('f', 1, long) and _IOW('f', 2, long) on 64-bit Linux; the kernel reads and writes an int.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010
CAP_LINUX_IMMUTABLE = 9


def can_set_immutable() -> bool:
    """Whether this process holds ``CAP_LINUX_IMMUTABLE`` (root usually does; a container may not)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_LINUX_IMMUTABLE & 1)
    except (OSError, ValueError):
        pass
    return False


def _flags(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))[0])


def is_immutable(path: Path | str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return bool(_flags(fd) & FS_IMMUTABLE_FL)
    except OSError:
        return False
    finally:
        os.close(fd)


def set_immutable(path: Path | str, on: bool = True) -> bool:
    """Set (or clear) the flag on the regular file at ``path``; False where the filesystem or the
    process's capabilities do not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        flags = _flags(fd)
        if bool(flags & FS_IMMUTABLE_FL) == on:
            return True
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags ^ FS_IMMUTABLE_FL))
        return True
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES, errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    finally:
        os.close(fd)


def unlink(path: Path) -> None:
    """Remove a store file that may carry the flag (which forbids unlinking it too)."""
    try:
        path.unlink()
    except PermissionError:
        set_immutable(path, False)
        path.unlink()
    except FileNotFoundError:
        pass
