"""``venvfs bench``: argument parsing and output of the benchmark (the work is in ``venvfs.bench``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from venvfs.errors import VenvfsError

_STRATEGY_HELP = """strategies (default: all; native is always measured, as the reference):
  copy, hardlink, symlink, reflink   site-packages made from a seed venv file by file
  uv-copy, uv-hardlink, uv-symlink, uv-clone
                                     uv pip install --link-mode ... from uv's warm cache
  overlayfs                          kernel overlayfs, one lower layer per distribution (root)
  fuse-overlayfs                     the same with fuse-overlayfs
  venvfs-hardlink, venvfs-reflink, venvfs-copy
                                     venvfs add --link-mode ...: materialized from the store
  venvfs                             venvfs mount: the store served through FUSE
  venvfs-stock                       the same on stock pyfuse3 from PyPI, in an environment of its own
                                     (what `pip install 'venvfs[fuse]'` gives; venvfs: the patched build)

Run anything but --quick under the shared lock, so nobody drops caches under your feet:
  flock /tmp/venvfs-perf.lock venvfs bench --json out.json --markdown out.md --plot out.png
"""


class BenchError(VenvfsError):
    exit_code = 1


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "bench", help="measure copy/hardlink/symlink/reflink/uv/overlays/venvfs side by side on this machine",
        description="Create venvs of one workload with every storage strategy and measure what each costs "
                    "(time, disk, inodes) and how fast each runs (import, walk, read, pip install), as "
                    "ratios to a native venv measured in the same run.",
        epilog=_STRATEGY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("-r", "--requirements", type=Path, metavar="FILE",
                     help="install this requirements file (downloaded once as wheels into the cache)")
    src.add_argument("--wheelhouse", type=Path, metavar="DIR", help="install every distribution in DIR, offline")
    src.add_argument("--synthetic-files", type=int, metavar="N",
                     help="a generated workload of about N small files (e.g. 20000 for the mount-scale goal)")
    p.add_argument("--import", dest="imports", metavar="NAMES",
                   help="comma-separated modules the import measurement loads (default: derived)")
    p.add_argument("--venvs", type=int, default=None, metavar="N",
                   help="venvs created per strategy (default 3, --quick 2)")
    p.add_argument("--reps", type=int, default=None, metavar="N",
                   help="interleaved pairs per metric (default 5, --quick 1)")
    p.add_argument("--strategies", default=None, metavar="LIST",
                   help="comma-separated strategies to run (default: all; see below)")
    p.add_argument("--quick", action="store_true",
                   help="tiny generated workload, 2 venvs and 1 pair per metric, no cold runs, no lock: "
                        "about 30 s with every strategy (a smoke test: its ratios are not shown)")
    p.add_argument("--cluster-users", type=_counts, default=None, metavar="N,N,...",
                   help="run only the cluster scenario: total disk and inodes of N users' venvs over one "
                   "shared store against uv with a per-user cache (e.g. 1,10,100; two users are measured, "
                   "more are projected from them)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold runs (no page-cache drops)")
    p.add_argument("--no-installs", action="store_true",
                   help="skip the daily-path metric: uv and pip installing the set into a new venv until "
                        "settled, plain venv against a venvfs mount")
    p.add_argument("--no-loop", action="store_true",
                   help="no loop-mounted images even as root (statfs deltas then come from a shared filesystem)")
    p.add_argument("--scratch", type=Path, metavar="DIR",
                   help="where to work (a reflink filesystem here enables the reflink strategies without root)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter of the venvs (default: this one; the default set and -r are downloaded "
                        "for the interpreter running venvfs, so give --wheelhouse for another one)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the full report as JSON")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="write the result table as Markdown")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="write a PNG chart (needs the package matplotlib)")
    p.add_argument("--clean", action="store_true",
                   help="remove the wheels earlier runs downloaded into the cache directory, then exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=run)


def _strategies(spec: str | None) -> list[str]:
    from venvfs.bench.strategies import DEFAULT, KNOWN

    if spec is None:
        return [s for s in DEFAULT if s != "native"]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise BenchError(f"unknown strategy {', '.join(unknown)} (known: {', '.join(KNOWN)})")
    return names


def _counts(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of user counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"not a list of user counts: {text!r}")
    return counts


def _size(root: Path) -> int:
    if not root.is_dir():
        return 0
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _clean(root: Path) -> int:
    import shutil

    size = _size(root)
    if root.exists():
        shutil.rmtree(root)
    print(f"removed {root} ({size / 1e6:.0f} MB)" if size else f"nothing to remove in {root}")
    return 0


def _cluster(args: argparse.Namespace, make: Any, say: Any) -> int:
    from venvfs.bench import cluster, workload

    try:
        result = cluster.run(make, args.cluster_users, python=args.python, scratch_dir=args.scratch,
                             loop=not args.no_loop, lock=not args.quick, say=say)
    except workload.WorkloadError as e:
        raise BenchError(str(e)) from e
    table = cluster.markdown(result, args.cluster_users)
    print(table, end="")
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    if args.markdown is not None:
        args.markdown.write_text(table)
    return 0


def run(args: argparse.Namespace) -> int:
    from venvfs.bench import report as rep
    from venvfs.bench import runner, workload
    from venvfs.bench.model import Report

    if args.clean:
        return _clean(workload.cache_root())
    strategies = _strategies(args.strategies)
    venvs = args.venvs if args.venvs is not None else (2 if args.quick else 3)
    reps = args.reps if args.reps is not None else (1 if args.quick else 5)
    if venvs < 1 or reps < 1:
        raise BenchError("--venvs and --reps must be at least 1")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise BenchError(f"--plot needs the package matplotlib, which {sys.executable} cannot import: "
                             f"{sys.executable} -m pip install matplotlib") from None
    settings = runner.Settings(
        strategies=strategies, venvs=venvs, reps=reps, cold=not args.no_cold, quick=args.quick,
        scratch=args.scratch, python=args.python, loop=not args.no_loop, lock=not args.quick,
        installs=not args.no_installs,
    )

    def make(workdir: Path) -> workload.Workload:
        if args.requirements is not None:
            wl = workload.from_requirements(args.requirements, workdir)
        elif args.wheelhouse is not None:
            wl = workload.from_wheelhouse(args.wheelhouse, workdir)
        elif args.synthetic_files is not None:
            per = 2000
            packages = max(1, -(-args.synthetic_files // per))
            wl = workload.synthetic(workdir, packages=packages, files_per_package=args.synthetic_files // packages,
                                    data_bytes=8 << 20, name=f"synthetic-{args.synthetic_files}")
        elif args.quick:
            wl = workload.quick(workdir)
        else:
            wl = workload.scientific(workdir)
        if args.imports:
            wl.imports = [n.strip() for n in args.imports.split(",") if n.strip()]
        return wl

    start = time.monotonic()

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    if args.cluster_users is not None:
        return _cluster(args, make, say)
    try:
        result: Report = runner.run(settings, make, say)
    except workload.WorkloadError as e:
        raise BenchError(str(e)) from e
    command = "venvfs " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
    result.settings["command"] = command
    print(rep.terminal(result), end="")
    kept = _size(workload.cache_root())
    if kept and not args.quiet:
        print(f"downloaded wheels kept for the next run: {workload.cache_root()} ({kept / 1e6:.0f} MB); "
              "`venvfs bench --clean` removes them", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    if args.markdown is not None:
        args.markdown.write_text(rep.markdown(result, command))
    if args.plot is not None:
        from venvfs.bench import plot

        plot.write_png(result, args.plot)
    return 0
