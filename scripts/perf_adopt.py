#!/usr/bin/env python3
"""``venvfs adopt`` and ``venvfs eject`` of a real venv against ``cp -a`` of it (issue 17, point 1).

    scripts/perf_adopt.py SRC_VENV [-n 5]

Each pair runs on a fresh ext4 (a 3 GiB image on /dev/shm, loop-mounted; root only): a filesystem
that other work has just filled and emptied makes every new inode cost a search of its bitmaps
(ext4's ``recently_deleted``), which slows ``cp -a`` and eject several times over and adopt (which
creates almost no inodes) hardly at all. SRC_VENV is copied in, then per pair: ``cp -a`` of it
against ``venvfs adopt --no-hooks`` of another copy (into a new store; the background bytecode
compile is waited for, untimed), and ``cp -a`` of the adopted venv against ``venvfs eject`` of it.
The order alternates, and the filesystem is flushed before each timed command. Prints the medians
and the median of the per-pair ratios. The venvfs run is this script's source tree.

Holds /tmp/venvfs-perf.lock (shared with scripts/bench and perf_mount.py) for each pair.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK = "/tmp/venvfs-perf.lock"  # noqa: S108 (shared with scripts/bench and perf_mount.py by this name)


def _timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    # From REPO: ``python -m`` puts the working directory first on sys.path, before PYTHONPATH, so
    # run from another tree it would measure that tree's venvfs under this one's name.
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True, cwd=REPO).stdout
    return time.perf_counter() - start, out


def _wait(pid: object) -> None:
    while isinstance(pid, int) and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("-n", "--reps", type=int, default=5)
    args = parser.parse_args()
    venvfs = [sys.executable, "-m", "venvfs"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    where = subprocess.run([sys.executable, "-c", "import venvfs; print(venvfs.__file__)"], env=env, check=True,
                           capture_output=True, text=True, cwd=REPO).stdout.strip()
    if not Path(where).resolve().is_relative_to(REPO):
        sys.exit(f"{sys.executable} imports venvfs from {where}, not from {REPO}: run this script with the "
                 "python of a venv whose venvfs is this tree (or none at all)")
    img = Path(f"/dev/shm/venvfs-perf-adopt-{os.getpid()}.img")  # noqa: S108 (RAM: the disk is not measured)
    mnt = Path(tempfile.mkdtemp(prefix="venvfs-perf-adopt."))
    times: dict[str, list[float]] = {"cp": [], "adopt": [], "cp2": [], "eject": []}
    for rep in range(args.reps):
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subprocess.run(["truncate", "-s", "3G", img], check=True)
            subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
            subprocess.run(["mount", "-o", "loop", img, mnt], check=True)
            try:
                subprocess.run(["cp", "-a", args.source, mnt / "src"], check=True)
                subprocess.run(["cp", "-a", mnt / "src", mnt / "venv"], check=True)
                order = ("cp", "venvfs") if rep % 2 == 0 else ("venvfs", "cp")
                for first in order:
                    subprocess.run(["sync", "-f", mnt], check=True)
                    if first == "cp":
                        times["cp"].append(_timed(["cp", "-a", str(mnt / "src"), str(mnt / "copy")])[0])
                    else:
                        took, out = _timed([*venvfs, "adopt", "--no-hooks", "--json", "--store", str(mnt / "store"),
                                            str(mnt / "venv")], env)
                        times["adopt"].append(took)
                        _wait(json.loads(out).get("compiling_pid"))
                for first in order:
                    subprocess.run(["sync", "-f", mnt], check=True)
                    if first == "cp":
                        times["cp2"].append(_timed(["cp", "-a", str(mnt / "venv"), str(mnt / "copy2")])[0])
                    else:
                        times["eject"].append(_timed([*venvfs, "eject", "-q", "--store", str(mnt / "store"),
                                                      str(mnt / "venv")], env)[0])
                last = {k: f"{v[-1]:.2f} s" for k, v in times.items()}
                print(f"pair {rep + 1}: load {os.getloadavg()[0]:.2f}  cp -a {last['cp']}  adopt {last['adopt']}  |  "
                      f"cp -a {last['cp2']}  eject {last['eject']}", flush=True)
            finally:
                subprocess.run(["umount", mnt], check=True)
                img.unlink()
    mnt.rmdir()
    med = {k: statistics.median(v) for k, v in times.items()}
    adopt = statistics.median(a / c for a, c in zip(times["adopt"], times["cp"], strict=True))
    eject = statistics.median(e / c for e, c in zip(times["eject"], times["cp2"], strict=True))
    print(f"adopt {med['adopt']:.2f} s against cp -a {med['cp']:.2f} s: {adopt:.2f}x (median of {args.reps} pairs)")
    print(f"eject {med['eject']:.2f} s against cp -a {med['cp2']:.2f} s: {eject:.2f}x")


if __name__ == "__main__":
    main()
