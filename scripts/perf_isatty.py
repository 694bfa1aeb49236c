#!/usr/bin/env python3
"""What CPython's isatty() costs a warm import through the mount (an experiment, not a benchmark).

    flock /tmp/venvfs-perf.lock scripts/perf_isatty.py [-n 21]

CPython 3.11's open() calls isatty() on every file it opens; on a FUSE file the kernel forwards that
ioctl(TCGETS) to the daemon every time (libfuse answers ENOSYS in C, so venvfs never sees it). This
script builds a tiny LD_PRELOAD shim whose isatty() answers 0 for regular files without an ioctl, as
a Python that skipped the check would, and times the warm import of the scientific set, native venv
against the mount, in interleaved pairs, without and then with the shim. It uses the venvs of
`scripts/perf_mount.py setup` (VENVFS_PERF_DIR, default /tmp/venvfs-perf-mount), mounted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

DIR = Path(os.environ.get("VENVFS_PERF_DIR", "/tmp/venvfs-perf-mount"))  # noqa: S108
IMPORT = "import numpy, scipy, pandas, sklearn, matplotlib"
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/stat.h>
int isatty(int fd) {
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) { errno = ENOTTY; return 0; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "isatty");
    return real(fd);
}
"""


def timed_import(venv: Path, shim: Path | None) -> float:
    env = {"PATH": "/usr/bin:/bin", **({"LD_PRELOAD": str(shim)} if shim else {})}
    start = time.perf_counter()
    subprocess.run([str(venv / "bin/python"), "-I", "-c", IMPORT], check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=21, help="interleaved pairs per variant")
    args = parser.parse_args()
    native, mount = DIR / "native", DIR / "mnt"
    with tempfile.TemporaryDirectory() as tmp:
        src, shim = Path(tmp, "noisatty.c"), Path(tmp, "noisatty.so")
        src.write_text(SHIM)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(shim), str(src), "-ldl"], check=True)
        for variant in (None, shim):
            timed_import(native, variant)
            timed_import(mount, variant)
            ratios = []
            for i in range(args.n):
                order = (native, mount) if i % 2 == 0 else (mount, native)
                took = {venv: timed_import(venv, variant) for venv in order}
                ratios.append(took[mount] / took[native])
            label = "isatty() without an ioctl" if variant else "as is                    "
            print(f"{label}  warm import ratio {statistics.median(ratios):.3f}x "
                  f"({min(ratios):.2f}..{max(ratios):.2f}), {args.n} pairs")


if __name__ == "__main__":
    main()
