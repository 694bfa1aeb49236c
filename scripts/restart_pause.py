#!/usr/bin/env python3
"""The pause a program sees when a mount's daemon is killed, and the calls that failed (issue 18).

    scripts/restart_pause.py VENV [-n 10] [--interval 0.3]

VENV is a mounted venv (``venvfs mount VENV``) whose daemon has a keeper (venvfs/mount/keeper.py).
While two load processes run, one reading every file of site-packages (each read first dropped from
the file's own page cache with POSIX_FADV_DONTNEED, so it reaches the daemon) and importing the
venv's top-level modules, the other writing and fsyncing files into a scratch directory of the mount,
the script kills the serving daemon with SIGKILL ``-n`` times. It reports, per kill: the time until
the next daemon was serving (the keeper's log: from the death to the new daemon's ready line) and
until ``daemon.json`` named it; then the calls that failed in each load process and the slowest
single round each saw (what a program notices of a restart). Nothing is dropped system-wide.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD = r"""
import importlib, json, os, sys, time
sp, stop, role = sys.argv[1], sys.argv[2], sys.argv[3]
failed, rounds, worst = [], 0, 0.0
if role == "read":
    files = []
    for root, dirs, names in os.walk(sp):
        dirs[:] = [d for d in dirs if d != "restart-pause-scratch"]
        files += [os.path.join(root, n) for n in names]
    mods = sorted({n.split(".")[0] for n in os.listdir(sp) if n.endswith(".py") or
                   os.path.isfile(os.path.join(sp, n, "__init__.py"))} - {"_venvfs_automount"})
else:
    scratch = os.path.join(sp, "restart-pause-scratch")
    os.makedirs(scratch, exist_ok=True)
while not os.path.exists(stop):
    began = time.monotonic()
    if role == "read":
        for p in files[:2000]:
            try:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    while os.read(fd, 1 << 20):
                        pass
                finally:
                    os.close(fd)
            except OSError as e:
                failed.append(f"read {p}: {e.strerror}")
        for m in mods:
            try:
                importlib.import_module(m)
            except Exception as e:
                failed.append(f"import {m}: {e!r}")
    else:
        path = os.path.join(scratch, f"f{rounds % 50}")
        data = os.urandom(1 << 16)
        try:
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            with open(path, "rb") as f:
                if f.read() != data:
                    failed.append(f"{path}: read back differs")
        except OSError as e:
            failed.append(f"write {path}: {e.strerror}")
    worst = max(worst, time.monotonic() - began)
    rounds += 1
print(json.dumps({"failed": failed, "rounds": rounds, "worst": worst}))
"""


def _info(venv: Path) -> dict[str, object]:
    return json.loads((venv / ".venvfs" / "daemon.json").read_text())  # type: ignore[no-any-return]


def _site_packages(venv: Path) -> Path:
    (sp,) = venv.glob("lib/python3*/site-packages")
    return sp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("venv", type=Path)
    parser.add_argument("-n", type=int, default=10, help="kills (default 10)")
    parser.add_argument("--interval", type=float, default=0.3, help="seconds between kills (default 0.3)")
    args = parser.parse_args()
    venv = args.venv.resolve()
    info = _info(venv)
    if info.get("server") in (None, info["pid"]):
        print(f"{venv}: its daemon has no keeper (see the daemon's log for why); nothing to measure",
              file=sys.stderr)
        return 2
    sp = _site_packages(venv)
    stop = Path(tempfile.mkdtemp(prefix="restart-pause-")) / "stop"
    python = str(venv / "bin" / "python")
    loads = {role: subprocess.Popen([python, "-c", LOAD, str(sp), str(stop), role], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for role in ("read", "write")}
    log = Path(str(info["log"]))
    log_before = log.stat().st_size
    seen = []
    try:
        time.sleep(1.0)
        for _ in range(args.n):
            now = _info(venv)
            server, restarts = int(str(now["server"])), int(str(now["restarts"]))
            killed = time.monotonic()
            os.kill(server, signal.SIGKILL)
            while True:
                with contextlib.suppress(OSError, ValueError):
                    if int(str(_info(venv)["restarts"])) > restarts:
                        break
                if time.monotonic() - killed > 30:
                    print("no new daemon within 30 s; see " + str(log), file=sys.stderr)
                    return 1
                time.sleep(0.002)
            seen.append(time.monotonic() - killed)
            time.sleep(args.interval)
        stop.touch()
        results = {role: p.communicate(timeout=120) for role, p in loads.items()}
    finally:
        stop.touch()
        for p in loads.values():
            if p.poll() is None:
                p.kill()
        with contextlib.suppress(FileNotFoundError):
            stop.unlink()
        stop.parent.rmdir()
    with open(log, "rb") as f:
        f.seek(log_before)
        pauses = [float(x) for x in re.findall(rb"serving again ([0-9.]+)s after", f.read())]
    print(f"{len(seen)} kills of the daemon of {venv}")
    for i, (p, s) in enumerate(zip(pauses, seen, strict=False), 1):
        print(f"  restart {i:2d}: serving again after {p * 1000:6.0f} ms "
              f"(daemon.json named it after {s * 1000:.0f} ms)")
    if pauses:
        print(f"  pause: median {sorted(pauses)[len(pauses) // 2] * 1000:.0f} ms, max {max(pauses) * 1000:.0f} ms")
    total = 0
    for role, (out, err) in results.items():
        try:
            r = json.loads(out)
        except ValueError:
            print(f"  {role} load: exited {loads[role].returncode}: {err.strip()[-300:]}")
            total += 1
            continue
        total += len(r["failed"])
        print(f"  {role} load: {r['rounds']} rounds, slowest {r['worst'] * 1000:.0f} ms, "
              f"failed calls {len(r['failed'])}" + (f": {r['failed'][:5]}" if r["failed"] else ""))
    print(f"failed calls: {total}")
    return 0 if total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
