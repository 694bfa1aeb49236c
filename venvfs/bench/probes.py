"""The timed measurements, and the interleaving that makes their ratios mean something.

A and B (native and the strategy) alternate, A B then B A, so drift in the machine's speed hits both
sides; a warm pair during which anyone dropped the page cache is thrown away and taken again.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from venvfs.bench.system import CacheDropper, drop_pagecache_count

_CHUNK = 1 << 20


class ProbeError(Exception):
    """A measurement failed (the command exited non-zero, a file is missing); ``str()`` says how."""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_", "UV_"))}


def import_time(python: Path, imports: list[str]) -> float:
    code = "import " + ", ".join(imports)
    start = time.perf_counter()
    proc = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, env=_clean_env())
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProbeError(f"import failed in {python.parent.parent.name}: {tail[:300]}")
    return elapsed


def walk_time(root: Path) -> float:
    """os.walk + lstat of every entry: what pip, IDEs and import scanners do to a site-packages."""
    start = time.perf_counter()
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    elapsed = time.perf_counter() - start
    if n == 0:
        raise ProbeError(f"{root} is empty")
    return elapsed


def largest_file(root: Path) -> tuple[str, int]:
    best, size = "", -1
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_size > size and not os.path.islink(path):
                best, size = os.path.relpath(path, root), st.st_size
    if size <= 0:
        raise ProbeError(f"{root} holds no non-empty file")
    return best, size


def read_mbps(path: Path) -> float:
    """Sequential read throughput in MB/s (10^6 bytes), through whatever the venv puts at ``path``."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    elapsed = time.perf_counter() - start
    if total == 0 or elapsed <= 0:
        raise ProbeError(f"read of {path} returned nothing")
    return total / elapsed / 1e6


def pip_install_time(bench_python: str, venv: Path, wheel: Path) -> float:
    """``pip install`` of one small package into the venv, then (untimed) its removal.

    pip runs from the benchmark's interpreter with ``--python``, so venvs made without pip (uv venv)
    are measured the same way as the others.
    """
    target = str(venv / "bin" / "python")
    base = [bench_python, "-m", "pip", "--python", target]
    env = _clean_env()
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    start = time.perf_counter()
    proc = subprocess.run([*base, "install", "-q", "--isolated", "--no-index", "--no-deps", str(wheel)],
                          capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProbeError(f"pip install failed: {tail[:300]}")
    _remove_extra(venv)
    return elapsed


def _remove_extra(venv: Path) -> None:
    """Undo the install by its RECORD (what ``pip uninstall`` does, without a second pip start-up,
    which would double the time this measurement takes)."""
    sites = sorted(venv.glob("lib/python*/site-packages"))
    if len(sites) != 1:
        raise ProbeError(f"{venv}: no single site-packages")
    sp = sites[0]
    dist_infos = list(sp.glob("vfsbench_extra-*.dist-info"))
    if not dist_infos:
        raise ProbeError("pip install left no vfsbench_extra dist-info")
    dirs: set[Path] = set()
    for di in dist_infos:
        for line in (di / "RECORD").read_text().splitlines():
            rel = line.rsplit(",", 2)[0]
            if not rel:
                continue
            path = sp / rel
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            dirs.update(p for p in path.parents if p != sp and sp in p.parents)
            if path.suffix == ".py":
                dirs.add(path.parent / "__pycache__")
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if d.is_dir():
            for leftover in d.glob("*.pyc"):
                leftover.unlink()
            with contextlib.suppress(OSError):
                d.rmdir()
    for di in dist_infos:
        if di.exists():
            raise ProbeError(f"could not remove {di}")


def process_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError) as e:
        raise ProbeError(f"cannot read /proc/{pid}/status: {e}") from e
    if "VmRSS" not in values:
        raise ProbeError(f"process {pid} has no VmRSS (a kernel thread or gone)")
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


@dataclass(frozen=True)
class SharedMemory:
    """A process's memory as ``/proc/PID/smaps_rollup`` counts it, in bytes. ``rss`` counts every
    resident page; ``pss`` divides each shared page among the processes mapping it; ``uss`` (its
    private pages, clean and dirty) is what the process alone costs: what ending it frees. A daemon
    forked from the mount service shares the service's pages until it writes to them, so only USS
    tells what one more mount costs."""

    rss: int
    pss: int
    uss: int


def shared_memory(pid: int) -> SharedMemory:
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError) as e:
        raise ProbeError(f"cannot read /proc/{pid}/smaps_rollup: {e}") from e
    if "Rss" not in values or "Pss" not in values:
        raise ProbeError(f"/proc/{pid}/smaps_rollup has no Rss/Pss (a kernel thread, or a kernel before 4.14)")
    return SharedMemory(values["Rss"], values["Pss"], values.get("Private_Clean", 0) + values.get("Private_Dirty", 0))


@dataclass
class Pair:
    native: float
    other: float


@dataclass
class Pairs:
    pairs: list[Pair]
    retaken: int  # warm pairs thrown away because someone dropped the page cache meanwhile


def paired(native: Callable[[], float], other: Callable[[], float], reps: int, *,
           cold: CacheDropper | None = None, warmup: bool = True) -> Pairs:
    """``reps`` interleaved pairs; cold runs drop the caches before every single run.

    Warm pairs are preceded by one untimed run of each side, and retaken (up to ``reps`` more times)
    when /proc/vmstat shows somebody dropped the page cache meanwhile.
    """
    if warmup and cold is None:
        native()
        other()
    pairs: list[Pair] = []
    attempts = 0
    retaken = 0
    while len(pairs) < reps:
        attempts += 1
        if attempts > 2 * reps + 2:
            raise ProbeError("the page cache was dropped by another process during every attempt; "
                             "run under `flock /tmp/venvfs-perf.lock`")
        before = drop_pagecache_count()
        first_native = len(pairs) % 2 == 0
        results: dict[str, float] = {}
        for side in (("native", "other") if first_native else ("other", "native")):
            if cold is not None:
                cold.drop()
            results[side] = native() if side == "native" else other()
        if cold is None and drop_pagecache_count() != before:
            retaken += 1
            continue
        pairs.append(Pair(results["native"], results["other"]))
    return Pairs(pairs, retaken)
