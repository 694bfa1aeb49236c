#!/usr/bin/env python3
"""A short, focused A/B of a venvfs mount against a native ext4 venv (issue 3, point 6).

    scripts/perf_mount.py setup             build the venvs (untimed, no lock): a native uv venv of the
                                            scientific set with bytecode, the same set adopted and mounted,
                                            and a 20,000-file synthetic venv, mounted
    scripts/perf_mount.py import [-n 7]     warm, then cold, interleaved pairs native/mount of
                                            `python -I -c "import numpy, scipy, pandas, sklearn, matplotlib"`
    scripts/perf_mount.py mount [-n 5]      unmount the 20,000-file venv, time `venvfs mount` until a stat
                                            through the mount answers
    scripts/perf_mount.py rss               daemon memory (RSS, PSS, USS) of the 20,000-file venv and of the
                                            scientific set: right after the mount, after a full walk + import,
                                            and after a reload of the view (SIGHUP, as `venvfs add` does) + import
                                            (once the daemon idled 2.5 s, and before, for the first)
    scripts/perf_mount.py counts            FUSE requests per type in one warm and one cold import
                                            (remounts with VENVFS_FUSE_STATS=1, then without)
    scripts/perf_mount.py second            a second venv of numpy, pandas, scipy: `uv venv`, `venvfs mount`,
                                            `venvfs add`: wall time and the filesystem's statfs delta
    scripts/perf_mount.py links [-n 9]      the bytecode links' trade: native, the mount (bytecode as files, the
                                            default), and a second mount of the same selection with the opt-in
                                            links (VENVFS_PYC_LINKS=1, root only),
                                            interleaved: warm import (wall, voluntary context switches),
                                            then warm and cold walks (os.walk + lstat)
    scripts/perf_mount.py all               import, mount, rss, second (counts apart: it remounts)

Each command runs the daemon of the source tree the script sits in (it remounts first), so a worktree of an
older commit can be measured against this one in one locked run:
  flock /tmp/venvfs-perf.lock env VENVFS_BENCH_LOCKED=1 sh -c 'OLD/scripts/perf_mount.py all; scripts/perf_mount.py all'

The daemon runs pyfuse3 on trio; VENVFS_FUSE_LOOP=direct in the environment runs it on venvfs's DirectLoop
(the remount passes the environment on), for an A/B of the two loops.

Every measuring command holds /tmp/venvfs-perf.lock (shared with scripts/bench), unless started with
VENVFS_BENCH_LOCKED=1 under `flock /tmp/venvfs-perf.lock ...` already. Keep runs short so others get turns.

Method (docs in /work/shared/performance-facts.md): native and mount alternate, A B then B A, the ratio is the
median of the per-pair ratios; a warm pair is retaken when /proc/vmstat's drop_pagecache moved during it
(someone dropped the caches); a cold run follows `sync; echo 3 > /proc/sys/vm/drop_caches` (root only,
otherwise cold is reported as not measured). Ratios only mean something within one run.

The wheels come from $VENVFS_PERF_WHEELS (default /tmp/scidl/wh), the work tree is $VENVFS_PERF_DIR
(default /tmp/venvfs-perf-mount); the store is its own (DIR/store).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DIR = Path(os.environ.get("VENVFS_PERF_DIR", "/tmp/venvfs-perf-mount"))  # noqa: S108
WHEELS = Path(os.environ.get("VENVFS_PERF_WHEELS", "/tmp/scidl/wh"))  # noqa: S108
LOCK = "/tmp/venvfs-perf.lock"  # noqa: S108 - the lock every performance measurement on this machine shares
SCI = ["numpy", "scipy", "pandas", "scikit-learn", "matplotlib"]
SCI_IMPORT = "import numpy, scipy, pandas, sklearn, matplotlib"
SCALE_PACKAGES, SCALE_FILES = 10, 2000  # as `venvfs bench --synthetic-files 20000`
SCALE_IMPORT = "import " + ", ".join(f"vfsbench_p{i}" for i in range(SCALE_PACKAGES))

ENV = {**os.environ, "VENVFS_STORE": str(DIR / "store"),
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def py(venv: Path) -> Path:
    return venv / "bin" / "python"


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def venvfs(*args: str, env: dict[str, str] | None = None) -> None:
    # cwd: `python -m` puts it first on sys.path, so it decides which source tree's venvfs runs.
    subprocess.run([sys.executable, "-m", "venvfs", *args], check=True, env=env or ENV, stdout=subprocess.DEVNULL,
                   cwd=REPO)


def uv_venv(venv: Path, *packages: str, links: Path, bytecode: bool) -> None:
    subprocess.run(["uv", "venv", "-q", "-p", sys.executable, str(venv)], check=True)
    if packages:
        subprocess.run(["uv", "pip", "install", "-q", "--python", str(py(venv)), "--no-index", "--find-links",
                        str(links), "--link-mode", "copy", *(["--compile-bytecode"] if bytecode else []),
                        *packages], check=True)


# -- measuring ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def perf_lock() -> Iterator[None]:
    if os.environ.get("VENVFS_BENCH_LOCKED"):
        yield
        return
    print(f"waiting for {LOCK}", file=sys.stderr)
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def drops() -> int:
    with open("/proc/vmstat") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("drop_pagecache"))


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def pairs(a: Callable[[], float], b: Callable[[], float], n: int, *, cold: bool) -> dict[str, float]:
    """n interleaved pairs (A B, then B A, ...): medians and the median of per-pair ratios b/a."""
    ta: list[float] = []
    tb: list[float] = []
    ratios: list[float] = []
    if not cold:
        a(), b()  # untimed: fill the caches
    while len(ratios) < n:
        before = drops()
        order = (a, b) if len(ratios) % 2 == 0 else (b, a)
        got = {}
        for fn in order:
            if cold:
                drop_caches()
            got[fn] = fn()
        if not cold and drops() != before:
            print("  caches dropped by someone during a warm pair: retaken", file=sys.stderr)
            continue
        ta.append(got[a])
        tb.append(got[b])
        ratios.append(got[b] / got[a])
    return {"native_s": statistics.median(ta), "mount_s": statistics.median(tb),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def show(name: str, r: dict[str, float]) -> None:
    print(f"{name:12} native {r['native_s']:.3f}s  mount {r['mount_s']:.3f}s  ratio {r['ratio']:.3f}x "
          f"({r['ratio_min']:.2f}..{r['ratio_max']:.2f})", flush=True)


def remount(venv: Path, env: dict[str, str] | None = None) -> None:
    """A fresh daemon running this source tree (the script's own), so two trees compare in one run."""
    venvfs("umount", str(venv))
    venvfs("mount", "--mode", "fuse", str(venv), env=env)


def cmd_import(n: int) -> None:
    native, mnt = DIR / "native", DIR / "mnt"
    remount(mnt)
    a = lambda: timed([str(py(native)), "-I", "-c", SCI_IMPORT])  # noqa: E731
    b = lambda: timed([str(py(mnt)), "-I", "-c", SCI_IMPORT])  # noqa: E731
    show("warm import", pairs(a, b, n, cold=False))
    if not drop_caches():
        print("cold import  not measured: cannot write /proc/sys/vm/drop_caches (needs root)")
        return
    show("cold import", pairs(a, b, n, cold=True))


def daemon_pid(venv: Path) -> int:
    """The process serving the mount ("server"; "pid" is its keeper where it has one)."""
    info = json.loads((venv / ".venvfs/daemon.json").read_text())
    return int(info.get("server") or info["pid"])


def cmd_mount(n: int) -> None:
    venv = DIR / "scale"
    probe = site_packages(venv) / "vfsbench_p0" / "__init__.py"
    times = []
    for _ in range(n):
        venvfs("umount", str(venv))
        t = time.perf_counter()
        venvfs("mount", "--mode", "fuse", str(venv))
        while True:  # `venvfs mount` returns once the mount answers; this proves a file stat does
            with contextlib.suppress(OSError):
                os.stat(probe)
                break
        times.append(time.perf_counter() - t)
    # Once more without the view index (STORE/views/): a first mount after the selection changed.
    venvfs("umount", str(venv))
    for view in (DIR / "store/views").glob("*.index"):
        view.unlink()
    t = time.perf_counter()
    venvfs("mount", "--mode", "fuse", str(venv))
    os.stat(probe)
    uncached = time.perf_counter() - t
    files = sum(len(f) for _, _, f in os.walk(site_packages(venv)))
    print(f"mount        {statistics.median(times):.3f}s median of {n} ({min(times):.3f}..{max(times):.3f}), "
          f"{uncached:.3f}s without the cached view; {files} files in the mounted site-packages", flush=True)


def memory_kb(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (Private_Clean + Private_Dirty) from /proc/PID/smaps_rollup, and the peak RSS: a
    daemon forked from the mount service shares the service's pages, so USS is what one more mount costs."""
    rollup = {line.split(":")[0]: int(line.split()[1])
              for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]}
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return {"rss": rollup["Rss"], "pss": rollup["Pss"], "uss": rollup["Private_Clean"] + rollup["Private_Dirty"],
            "hwm": hwm}


def show_memory(m: dict[str, int]) -> str:
    return f"RSS {m['rss'] / 1024:.1f} / PSS {m['pss'] / 1024:.1f} / USS {m['uss'] / 1024:.1f} MB"


IDLE = 2.5  # s: an idle daemon gives freed heap pages back within 2 s (venvfs.mount.fuse.TRIM_EVERY)


def cmd_rss() -> None:
    """Each daemon right after its mount, then after a walk of every entry (lstat) and an import, and
    after a reload and another import; each once the daemon has been idle for IDLE seconds."""
    for label, venv, imports in (("20k files", DIR / "scale", SCALE_IMPORT), ("scientific", DIR / "mnt", SCI_IMPORT)):
        remount(venv)
        pid = daemon_pid(venv)
        before = memory_kb(pid)
        entries = 0
        for root, dirs, files in os.walk(site_packages(venv)):
            for name in dirs + files:
                os.lstat(os.path.join(root, name))
                entries += 1
        subprocess.run([str(py(venv)), "-I", "-c", imports], check=True)
        busy = memory_kb(pid)
        time.sleep(IDLE)
        after = memory_kb(pid)
        reload(venv)  # what `venvfs add` or an ingest does to a mount: a new view under the walked tree
        subprocess.run([str(py(venv)), "-I", "-c", imports], check=True)
        time.sleep(IDLE)
        reloaded = memory_kb(pid)
        print(f"daemon {label:10} {show_memory(after)} after a walk of {entries} entries + import (USS "
              f"{busy['uss'] / 1024:.1f} MB before it idled); "
              f"{show_memory(reloaded)} after a reload + import (peak RSS {reloaded['hwm'] / 1024:.1f} MB); "
              f"{show_memory(before)} right after the mount", flush=True)


def reload(venv: Path) -> None:
    """SIGHUP: the daemon reads the selection again; returns once it published the new generation."""
    info = venv / ".venvfs/daemon.json"
    generation = json.loads(info.read_text()).get("generation", 0)
    os.kill(daemon_pid(venv), signal.SIGHUP)
    deadline = time.monotonic() + 30
    while json.loads(info.read_text()).get("generation", 0) == generation:
        if time.monotonic() > deadline:
            raise SystemExit(f"{venv}: no reload within 30 s")
        time.sleep(0.02)


def stats(venv: Path) -> dict[str, int]:
    path = venv / ".venvfs/fuse-stats.json"
    path.unlink(missing_ok=True)
    os.kill(daemon_pid(venv), signal.SIGUSR1)
    while not path.exists():
        time.sleep(0.01)
    counts: dict[str, int] = json.loads(path.read_text())
    return counts


def cmd_counts() -> None:
    venv = DIR / "mnt"
    remount(venv, env={**ENV, "VENVFS_FUSE_STATS": "1"})
    try:
        run = lambda: subprocess.run([str(py(venv)), "-I", "-c", SCI_IMPORT], check=True)  # noqa: E731
        # "first" reads what the fresh daemon's kernel cache lacks; its reads leave atimes stale, which
        # costs one getattr per file in the next run; "warm" is the run after that.
        for label in ("first", "again", "warm", "cold"):
            if label == "cold" and not drop_caches():
                break
            stats(venv)
            run()
            counts = stats(venv)
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
            print(f"requests     {label}: {sum(counts.values())} ({detail})", flush=True)
    finally:
        remount(venv)


def cmd_second() -> None:
    venv = DIR / "second"
    if venv.exists():
        with contextlib.suppress(subprocess.CalledProcessError):
            venvfs("umount", str(venv))
        shutil.rmtree(venv)
    os.sync()
    before = os.statvfs(DIR)
    steps: list[float] = [time.perf_counter()]
    subprocess.run(["uv", "venv", "-q", "-p", sys.executable, str(venv)], check=True)
    steps.append(time.perf_counter())
    venvfs("mount", "--mode", "fuse", str(venv))
    steps.append(time.perf_counter())
    # `venvfs add` resolves no dependencies: pandas needs python-dateutil (and it six, where stored).
    venvfs("add", str(venv), "numpy", "pandas", "scipy", "python-dateutil")
    steps.append(time.perf_counter())
    subprocess.run([str(py(venv)), "-I", "-c", "import numpy, pandas, scipy"], check=True)
    os.sync()
    after = os.statvfs(DIR)
    used = ((before.f_bfree - after.f_bfree) * after.f_frsize) / 1e6
    # The venv's own blocks: statfs also counts whatever else wrote to a shared filesystem meanwhile.
    own = 0
    for root, dirs, files in os.walk(venv):
        dirs[:] = [d for d in dirs if os.path.join(root, d) != str(site_packages(venv))]  # the mount
        own += sum(os.lstat(os.path.join(root, n)).st_blocks * 512 for n in dirs + files)
    uv_s, mount_s, add_s = (b - a for a, b in itertools.pairwise(steps))
    print(f"second venv  {steps[-1] - steps[0]:.3f}s (uv venv {uv_s:.3f} + venvfs mount {mount_s:.3f} + venvfs add "
          f"{add_s:.3f}); extra disk after one import: statfs {used:.2f} MB ({before.f_ffree - after.f_ffree} inodes), "
          f"the venv's own blocks {own / 1e6:.2f} MB", flush=True)
    venvfs("umount", str(venv))


def timed_rusage(argv: list[str]) -> tuple[float, int]:
    """Wall time and voluntary context switches (each a wait, e.g. on a FUSE round trip) of one run."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise subprocess.CalledProcessError(status, argv)
    return time.perf_counter() - t, usage.ru_nvcsw


def walk(root: Path) -> float:
    t = time.perf_counter()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
    return time.perf_counter() - t


def cmd_links(n: int) -> None:
    native, links, files = DIR / "native", DIR / "mnt-links", DIR / "mnt"
    remount(files, env={**ENV, "VENVFS_PYC_LINKS": "0"})
    if not links.exists():
        subprocess.run(["uv", "venv", "-q", "-p", sys.executable, str(links)], check=True)
        venvfs("mount", "--mode", "fuse", str(links), env={**ENV, "VENVFS_PYC_LINKS": "1"})
        venvfs("add", str(links), *SCI)
    remount(links, env={**ENV, "VENVFS_PYC_LINKS": "1"})
    venvs = {"native": native, "links": links, "files": files}
    names = list(venvs)

    def rounds(measure: Callable[[Path], tuple[float, int]], *, cold: bool) -> dict[str, list[tuple[float, int]]]:
        got: dict[str, list[tuple[float, int]]] = {k: [] for k in names}
        if not cold:
            for v in venvs.values():
                measure(v)  # untimed: fill the caches
        for i in range(n):
            for k in names[i % 3:] + names[:i % 3]:  # each goes first in turn
                if cold:
                    drop_caches()
                got[k].append(measure(venvs[k]))
        return got

    def report(label: str, got: dict[str, list[tuple[float, int]]], counts: bool) -> None:
        for k in names:
            t = statistics.median(x for x, _ in got[k])
            # The median of per-round ratios: a round's three runs share the machine's mood.
            ratio = statistics.median(x / base for (x, _), (base, _) in zip(got[k], got["native"], strict=True))
            extra = f", {statistics.median(c for _, c in got[k]):.0f} voluntary context switches" if counts else ""
            print(f"{label:11} {k:7} {t * 1000:7.0f} ms  {ratio:.2f}x{extra}", flush=True)

    report("warm import", rounds(lambda v: timed_rusage([str(py(v)), "-I", "-c", SCI_IMPORT]), cold=False), True)
    report("warm walk", rounds(lambda v: (walk(site_packages(v)), 0), cold=False), False)
    if drop_caches():
        report("cold walk", rounds(lambda v: (walk(site_packages(v)), 0), cold=True), False)
    else:
        print("cold walk   not measured: cannot write /proc/sys/vm/drop_caches (needs root)")


# -- setting up (untimed) --------------------------------------------------------------------------

def cmd_setup() -> None:
    DIR.mkdir(parents=True, exist_ok=True)
    if not (DIR / "native").exists():
        uv_venv(DIR / "native", *SCI, links=WHEELS, bytecode=True)
    if not (DIR / "mnt").exists():
        uv_venv(DIR / "mnt", *SCI, links=WHEELS, bytecode=False)
    venvfs("mount", "--mode", "fuse", str(DIR / "mnt"))
    if not (DIR / "scale").exists():
        sys.path.insert(0, str(REPO))
        from venvfs.bench.wheels import synthetic_wheelhouse

        wheels, _ = synthetic_wheelhouse(DIR / "scale-wheels", packages=SCALE_PACKAGES,
                                         files_per_package=SCALE_FILES)
        uv_venv(DIR / "scale", *map(str, wheels), links=DIR / "scale-wheels", bytecode=False)
    venvfs("mount", "--mode", "fuse", str(DIR / "scale"))
    print(f"ready: {DIR}/native, {DIR}/mnt and {DIR}/scale (mounted)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["setup", "import", "mount", "rss", "counts", "second", "links", "all"])
    parser.add_argument("-n", type=int, default=0, help="pairs (import) or repetitions (mount)")
    args = parser.parse_args()
    if args.command == "setup":
        cmd_setup()
        return 0
    with perf_lock():
        if args.command in ("import", "all"):
            cmd_import(args.n or 7)
        if args.command in ("mount", "all"):
            cmd_mount(args.n or 5)
        if args.command in ("rss", "all"):
            cmd_rss()
        if args.command == "counts":
            cmd_counts()
        if args.command == "links":
            cmd_links(args.n or 9)
        if args.command in ("second", "all"):
            cmd_second()
    return 0


if __name__ == "__main__":
    sys.exit(main())
