"""``venvfs mount``, ``umount``, ``create``, ``list`` and ``commit``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from venvfs.cli.common import (
    add_venv_argument,
    common_parent,
    intermixed,
    json_parent,
    note_dead_mount,
    open_store,
    open_store_for,
    print_json,
    venv_path,
)
from venvfs.errors import UsageError, VenvfsError

if TYPE_CHECKING:
    from venvfs.store.store import Store


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    common, as_json = common_parent(), json_parent()
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser(
        "mount", parents=[common, as_json], formatter_class=fmt,
        help="serve a venv's site-packages from the store (FUSE overlay, copy-up on write)",
        description="Mount the venv's site-packages as a FUSE overlay: the store's files below, the venv's\n"
        "own changes in VENV/.venvfs/upper above. Adopts the venv first if venvfs does not manage it.\n"
        "Returns once the mount answers; the filesystem runs as a background daemon. Idempotent.\n"
        "Where FUSE cannot be used it materializes real files instead and says why in one line.",
    )
    add_venv_argument(p)
    p.add_argument("--all", action="store_true", help="mount every venv registered in the store")
    p.add_argument("--foreground", action="store_true", help="run the filesystem in this process (debugging)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users in (adds allow_other; permissions are then enforced)")
    p.add_argument("--mode", choices=["auto", "fuse", "materialize"], default="auto",
                   help="auto: FUSE, else materialize; fuse: fail without FUSE; materialize: never mount")
    hooks = p.add_mutually_exclusive_group()
    hooks.add_argument("--no-hooks", dest="hooks", action="store_false", default=None,
                       help="remove and stop installing the automount hooks (activation scripts, .pth)")
    hooks.add_argument("--hooks", dest="hooks", action="store_true",
                       help="install the automount hooks again after --no-hooks (the default)")
    p.set_defaults(handler=cmd_mount)

    p = subparsers.add_parser(
        "umount", parents=[common, as_json], help="unmount a venv's site-packages (also with files open)",
    )
    add_venv_argument(p)
    p.add_argument("--all", action="store_true", help="unmount every venv registered in the store")
    p.add_argument("--materialize", action="store_true",
                   help="then write the venv back as real files (the materialized layout)")
    p.set_defaults(handler=cmd_umount)

    p = subparsers.add_parser(
        "create", parents=[common, as_json], formatter_class=fmt,
        help="make a new venv from the store and mount it, in one command",
        description="Make a venv (uv venv, else python -m venv), select its distributions from the store\n"
        "(requirements resolved as `venvfs add` resolves them, with what they require), and mount it\n"
        "with the automount hooks, through the per-user mount service. What the store lacks is\n"
        "installed with uv (pip without uv) into the mounted venv and stored before the command\n"
        "returns, so the next venv shares it. Where FUSE cannot be used, real files are placed instead.\n\n"
        "DIR must not exist, or be an empty directory. On any error, or Ctrl-C, nothing is left: what\n"
        "was made is unmounted and removed (an empty DIR stays, empty) and the store forgets the venv.\n"
        "Exit codes: 2 for DIR or an argument (a Python uv or venv cannot find, an unreadable -r FILE),\n"
        "4 for a --like VENV that venvfs does not manage, 8 for packages neither stored nor installable\n"
        "(or builds for another Python), 9 for stored builds that tie.\n\n"
        "examples:\n"
        "  venvfs create .venv numpy pandas            # from the store; what it lacks comes from the index\n"
        "  venvfs create .venv -r requirements.txt --python 3.12\n"
        "  venvfs create ../exp2/.venv --like .venv     # the very builds .venv selects, same Python\n"
        "  venvfs create .venv demo -f ./wheels --no-index   # installer options for what the store lacks",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="where to make the venv (absent, or an empty directory)")
    # A default makes the "*" positional optional: intermixed parsing (below) checks it as argparse
    # never does otherwise, and would report PKG as missing beside a missing DIR.
    p.add_argument("specs", nargs="*", default=[], metavar="PKG",
                   help="requirements ('numpy>=2'), store keys or wheel files")
    p.add_argument("-r", "--requirement", action="append", default=[], type=Path, metavar="FILE",
                   help="take requirements from FILE (pip's format: -r, --index-url, --find-links, --no-index "
                   "lines are honoured)")
    p.add_argument("--like", type=Path, metavar="VENV",
                   help="select what the venvfs venv VENV selects (the same builds), for the same Python")
    p.add_argument("--python", metavar="X",
                   help="the interpreter, as uv venv --python takes it (a version, a path or a name); "
                   "default: uv's choice, or VENV's with --like")
    p.add_argument("-f", "--find-links", action="append", default=[], metavar="DIR_OR_URL",
                   help="passed to uv or pip for what the store lacks")
    p.add_argument("--index-url", metavar="URL", help="passed to uv or pip for what the store lacks")
    p.add_argument("--no-index", action="store_true", help="passed to uv or pip for what the store lacks")
    p.add_argument("--no-install", action="store_true",
                   help="take everything from the store: what it lacks is an error (exit 8), not installed")
    p.add_argument("--no-hooks", action="store_true", help="do not install the automount hooks")
    p.set_defaults(handler=cmd_create)
    intermixed(p)

    p = subparsers.add_parser(
        "restart", parents=[common, as_json], formatter_class=fmt,
        help="replace a mount's daemon with the venvfs now installed, without unmounting",
        description="After an upgrade of venvfs: the mount's keeper (which holds the FUSE connection) runs\n"
        "the venvfs now installed in its place, and that starts a new daemon on the same connection.\n"
        "Programs using the venv see a pause of milliseconds, no error. A venv that is not mounted is\n"
        "left alone; a mount without a keeper (docs/mount.md) is an error: umount and mount it.",
    )
    add_venv_argument(p)
    p.add_argument("--all", action="store_true", help="every mounted venv registered in the store, one at a time")
    p.set_defaults(handler=cmd_restart)

    p = subparsers.add_parser("list", parents=[common, as_json], help="list mounted venvs")
    p.set_defaults(handler=cmd_list)

    p = subparsers.add_parser(
        "commit", parents=[common, as_json], formatter_class=fmt,
        help="move distributions pip/uv installed into a mounted venv into the store",
        description="Store each distribution that pip or uv installed into the mounted venv's upper layer\n"
        "and select it, so other venvs share it; its files then leave the upper layer. What the venv\n"
        "shows does not change. Distributions uninstalled since are deselected. An unmounted venv is\n"
        "mounted for the duration and unmounted again. A mounted venv's daemon does this by itself\n"
        "about a second after an install settles (unless VENVFS_AUTO_INGEST=0); commit is for scripts\n"
        "that want it done now, and for distributions whose files were edited before that.",
    )
    add_venv_argument(p)
    p.set_defaults(handler=cmd_commit)


def _targets(args: argparse.Namespace) -> list[Path]:
    if getattr(args, "all", False):
        # A registered venv deleted since is no error here: `venvfs store gc` forgets it.
        return [p for p in open_store(args).registered_venvs() if (p / ".venvfs").is_dir()]
    return [venv_path(args)]


def _store_for(args: argparse.Namespace, path: Path, *, create: bool = False) -> Store:
    """The venv's own store unless --store says otherwise (see cli.common.open_store_for); a damaged
    state is for the command to handle (mount repairs it, umount does without it)."""
    from venvfs.venv.venv import Venv

    venv = Venv(path)
    return (open_store_for(args, venv, create=create, damaged_ok=True) if (venv.root / "pyvenv.cfg").exists()
            else open_store(args))


def cmd_mount(args: argparse.Namespace) -> int:
    from venvfs.hooks.target import GUARD_ENV
    from venvfs.mount import daemon
    from venvfs.venv import registry
    from venvfs.venv.venv import Venv

    results = []
    code = 0
    for path in _targets(args):
        try:
            store = _store_for(args, path, create=True)
            if (Path(path) / "pyvenv.cfg").exists():
                repaired = registry.repair(Venv(path), store)
                if repaired:
                    print(f"venvfs: {repaired}", file=sys.stderr)
            r = daemon.mount(path, store, allow_other=args.allow_other, foreground=args.foreground, mode=args.mode,
                             hooks=args.hooks)
        except VenvfsError as e:
            if not args.all:
                raise
            print(f"venvfs: error: {path}: {e}", file=sys.stderr)
            code = e.exit_code
            continue
        results.append({"venv": str(r.venv), "how": r.how, "message": r.message})
        if r.how == "fuse" and not os.environ.get(GUARD_ENV):  # not at an interpreter start
            from venvfs.venv.uvconfig import hint_once

            hint = hint_once(Venv(r.venv))
            if hint:
                print(f"venvfs: {hint}", file=sys.stderr)
        if r.how == "materialized":
            print(f"venvfs: {r.message}", file=sys.stderr)  # the fallback is always reported
        elif not args.json and not args.quiet:
            print(r.message)
    if args.json:
        print_json(results)
    return code


def cmd_umount(args: argparse.Namespace) -> int:
    from venvfs.mount import daemon
    from venvfs.venv import registry
    from venvfs.venv.venv import Venv

    out = []
    for path in _targets(args):
        store = None
        try:
            store = _store_for(args, path)
        except VenvfsError:
            if args.materialize:
                raise
            # The store matters only to --materialize: a venv whose store is gone still unmounts.
        if store is not None and (Path(path) / "pyvenv.cfg").exists():
            venv = Venv(path)
            checked = registry.check(venv, store)
            if checked.problem:
                # Unmounting needs no state: say what is wrong and unmount anyway.
                print(f"venvfs: {checked.message(venv, store)}", file=sys.stderr)
        was = daemon.umount(path, store, materialize=args.materialize)
        out.append({"venv": str(path), "unmounted": was})
        if not args.json:
            print(f"unmounted {path}" if was else f"{path} was not mounted")
    if args.json:
        print_json(out)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from venvfs.mount.create import create
    from venvfs.venv import reqfile

    if args.like is not None and (args.specs or args.requirement):
        raise UsageError("--like takes no packages and no -r: the venv gets what the other one selects")
    specs = list(args.specs)
    options: list[str] = []
    for path in args.requirement:
        found = reqfile.read(path)
        specs += found.specs
        options += found.installer_options
    if args.index_url:
        options += ["--index-url", args.index_url]
    for link in args.find_links:
        options += ["--find-links", link]
    if args.no_index:
        options.append("--no-index")
    if args.like is None and not specs:
        raise UsageError("name packages, -r FILE or --like VENV (an empty venv: `uv venv DIR && venvfs mount DIR`)")
    store = open_store(args, create=True)
    report = create(args.dir, store, specs=specs, like=args.like, python=args.python, installer_options=options,
                    install=not args.no_install, hooks=not args.no_hooks, say=_progress_line(args))
    if report.mount == "materialized":
        print(f"venvfs: {report.message}", file=sys.stderr)  # the fallback is always reported
    if args.json:
        print_json(report.to_json())
        return 0
    print(f"created {report.venv} (Python {report.python}, {report.made_with}): {len(report.selected)} "
          f"distribution(s) from the store" + (f", {len(report.installed)} installed by {report.installer} and "
                                                f"stored" if report.installer else "")
          + (", mounted" if report.mount == "fuse" else ", real files"))
    for key in report.installed:
        print(f"  installed and stored: {key}")
    for key, why in report.not_copied.items():
        print(f"  not taken from --like: {key}: {why}")
    for dist_info, why in report.left_in_venv.items():
        print(f"  left in the venv, not stored: {dist_info}: {why}")
    return 0


def _progress_line(args: argparse.Namespace) -> Callable[[str], None]:
    """Each step on stderr: on a terminal as it starts; elsewhere only once the work has taken a
    while (progress.log_interval()), as for every long command, so a quick create prints one line."""
    from venvfs.progress import log_interval

    started = time.monotonic()
    tty = sys.stderr.isatty()

    def say(line: str) -> None:
        if args.quiet:
            return
        if tty or time.monotonic() - started >= log_interval():
            print(f"venvfs: {line}", file=sys.stderr, flush=True)

    return say


def cmd_restart(args: argparse.Namespace) -> int:
    from venvfs.mount import daemon
    from venvfs.venv.venv import Venv

    out = []
    for path in _targets(args):
        venv = Venv.open(path)
        info = daemon.restart(venv)
        out.append({"venv": str(path), "restarted": info is not None, **(info or {})})
        if not args.json:
            print(f"restarted {path}: daemon pid {info['server']}, venvfs {info['venvfs']}" if info
                  else f"{path} is not mounted")
    if args.json:
        print_json(out)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    # Not the mount layer: what is mounted is the venv layer's to read (``venv/mountinfo.py``).
    from venvfs.venv.mountinfo import list_mounts

    mounts = list_mounts(open_store(args, named_lowers=False))
    if args.json:
        print_json(mounts)
    else:
        for m in mounts:
            no_open = m.get("no_open")
            mode = "" if no_open is None else "\tno-open" if no_open else "\tper-open"
            if m.get("pyc_links"):
                mode += ",pyc-links"
            print(f"{m['venv']}\t{m['state']}\tpid {m.get('pid', '-')}{mode}")
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    from venvfs.mount.commit import commit
    from venvfs.venv.venv import Venv

    venv = Venv.open(venv_path(args))
    note_dead_mount(venv)
    report = commit(venv, open_store(args))
    if args.json:
        print_json({"added": report.added, "removed": report.removed, "dropped": report.dropped,
                    "skipped": report.skipped})
    else:
        for key in report.added:
            print(f"stored and selected {key}")
        for key in report.removed:
            print(f"deselected {key} (uninstalled or replaced)")
        for dist_info, why in report.skipped.items():
            print(f"left in the venv: {dist_info}: {why}")
        if not report.added and not report.removed and not report.skipped:
            print("nothing to commit" if not report.dropped else "the store already held what was installed")
    return 0
