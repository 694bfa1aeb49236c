"""``venvfs mount``, ``umount``, ``list`` and ``commit``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from venvfs.cli.common import (
    add_venv_argument,
    common_parent,
    json_parent,
    note_dead_mount,
    open_store,
    open_store_for,
    print_json,
    venv_path,
)
from venvfs.errors import VenvfsError
from venvfs.hooks.target import GUARD_ENV
from venvfs.store.store import Store
from venvfs.venv.venv import Venv


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
    venv = Venv(path)
    return (open_store_for(args, venv, create=create, damaged_ok=True) if (venv.root / "pyvenv.cfg").exists()
            else open_store(args))


def cmd_mount(args: argparse.Namespace) -> int:
    from venvfs.mount import daemon
    from venvfs.venv import registry

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


def cmd_restart(args: argparse.Namespace) -> int:
    from venvfs.mount import daemon

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
    from venvfs.mount import daemon

    mounts = daemon.list_mounts(open_store(args))
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
