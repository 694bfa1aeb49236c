"""The machine under test: facts for the report, page-cache control, and the shared performance lock.

Engineers (and CI) measure on shared machines; one ``drop_caches`` ruins another's warm numbers, so
every run that drops caches holds ``/tmp/venvfs-perf.lock`` for its whole duration.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import venvfs

PERF_LOCK = Path("/tmp/venvfs-perf.lock")  # noqa: S108 - a well-known path shared by every engineer


def _cmd_version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else None


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _libfuse_version() -> str | None:
    out = _cmd_version(["fusermount3", "--version"])
    if out:
        m = re.search(r"(\d+\.\d+(\.\d+)?)", out)
        return m.group(1) if m else out
    return None


def _strip(text: str | None, prefix: str) -> str | None:
    return text.removeprefix(prefix).split(" (")[0] if text else None


def _fuse_overlayfs_version() -> str | None:
    if shutil.which("fuse-overlayfs") is None:
        return None
    try:
        out = subprocess.run(["fuse-overlayfs", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    # It also prints the versions of fusermount3 and FUSE: keep its own line.
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("fuse-overlayfs"):
            return line.split("version", 1)[-1].strip(" :")
    return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _mem_total() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def fs_type(path: Path) -> str:
    """The filesystem type holding ``path`` (longest mount point prefix in /proc/self/mounts)."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mnt = parts[1].replace("\\040", " ")
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    return kind


def environment(python: str) -> dict[str, Any]:
    uname = platform.uname()
    return {
        "hostname": uname.node,
        "machine": uname.machine,
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_bytes": _mem_total(),
        "kernel": f"{uname.system} {uname.release}",
        "os": _os_release(),
        "root": os.geteuid() == 0,
        "versions": {
            "python": platform.python_version(),
            "python_under_test": python,
            "venvfs": venvfs.__version__,
            "uv": _strip(_cmd_version(["uv", "--version"]), "uv "),
            "pip": _dist_version("pip"),
            "pyfuse3": _dist_version("pyfuse3"),
            "trio": _dist_version("trio"),
            "libfuse": _libfuse_version(),
            "fuse-overlayfs": _fuse_overlayfs_version(),
            "matplotlib": _dist_version("matplotlib"),
        },
    }


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


# -- page cache ------------------------------------------------------------------------------------

def drop_pagecache_count() -> int | None:
    """How many times anyone dropped the caches since boot (a warm pair spanning a change is void)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("drop_pagecache "):
                return int(line.split()[1])
    return None


class CacheDropper:
    """Drops the page cache, dentries and inodes, or says once why it cannot."""

    def __init__(self, enabled: bool, why_disabled: str = "") -> None:
        self.reason: str | None = None if enabled else (why_disabled or "disabled")
        if self.reason is None:
            if os.geteuid() != 0:
                self.reason = "dropping the page cache needs root"
            elif not os.access("/proc/sys/vm/drop_caches", os.W_OK):
                self.reason = "/proc/sys/vm/drop_caches is not writable here"

    @property
    def available(self) -> bool:
        return self.reason is None

    def drop(self) -> None:
        if self.reason is not None:
            raise RuntimeError(self.reason)
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError as e:
            self.reason = f"writing /proc/sys/vm/drop_caches failed: {e}"
            raise RuntimeError(self.reason) from e


# -- the shared performance lock -------------------------------------------------------------------

def _ancestors() -> set[int]:
    pids: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _held_by_ancestor(path: Path) -> bool:
    """Whether an ancestor process (``flock /tmp/venvfs-perf.lock venvfs bench``) holds the lock."""
    try:
        st = path.stat()
        locks = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False
    ancestors = _ancestors()
    for line in locks:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            pid = int(fields[4])
            ino = int(fields[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if ino == st.st_ino and pid in ancestors:
            return True
    return False


@contextlib.contextmanager
def perf_lock(path: Path = PERF_LOCK, *, say: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the machine-wide benchmark lock; wait (saying so) while another measurement runs.

    When the caller already runs under ``flock PATH ...``, the lock is its own and is not taken twice
    (a second flock on a new open file description would wait for the wrapper forever).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if _held_by_ancestor(path):
                yield
                return
            say(f"waiting for {path}: another performance measurement is running")
            start = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            say(f"got {path} after {time.monotonic() - start:.0f} s")
        yield
    finally:
        os.close(fd)


def python_version_of(python: str) -> str:
    out = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or sys.version.split()[0]
