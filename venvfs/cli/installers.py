"""``venvfs uv ARGS…``: uv, after selecting from the store what it is about to install.

A thin wrapper: the plan is uv's own dry run and the work is ``venvfs.venv.preselect``; then the
real uv runs with the arguments as given (exec, so signals and the exit status are uv's). venvfs
is an accelerator here, never a gate: when anything about the plan fails, uv runs all the same.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from venvfs.cli.common import common_parent, open_store_for
from venvfs.errors import UsageError, VenvfsError

_EPILOG = """\
Commands that install (`uv pip install`, `uv pip sync`, `uv sync`, `uv add`) are first run as a dry
run; the versions uv chose that the store already holds, for names the venv does not have yet, are
selected from the store, so uv finds them installed and copies nothing through the mount. The rest
(and every other uv command) is uv's, unchanged; venvfs ingests what uv installs afterwards.

examples:
  venvfs uv sync
  venvfs uv add jax scipy
  venvfs uv pip install -r requirements.txt
"""

_PROJECT_FLAGS = ("--project", "--directory")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "uv", parents=[common_parent()], help="run uv, serving what the store holds instead of copying it",
        description="Run uv in a venvfs venv, first selecting from the store what uv is about to install.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("uv_args", nargs=argparse.REMAINDER, metavar="UV_ARGS", help="uv's arguments, as given to uv")
    p.set_defaults(handler=cmd_uv)


def _project_flags(args: list[str]) -> list[str]:
    kept: list[str] = []
    for i, a in enumerate(args):
        if a in _PROJECT_FLAGS and i + 1 < len(args):
            kept += [a, args[i + 1]]
        elif a.startswith(tuple(f + "=" for f in _PROJECT_FLAGS)):
            kept.append(a)
    return kept


def cmd_uv(args: argparse.Namespace) -> int:
    from venvfs.venv.preselect import dry_run_argv

    uv_args = list(args.uv_args)
    if uv_args[:1] == ["--"]:
        uv_args = uv_args[1:]
    uv = shutil.which("uv")
    if uv is None:
        raise UsageError("uv is not on PATH (install it: https://docs.astral.sh/uv/)")
    if not uv_args:
        raise UsageError("name a uv command, e.g. `venvfs uv sync`")
    dry = dry_run_argv(uv, uv_args)
    words = [a for a in uv_args if not a.startswith("-")]
    if words[:1] == ["add"] and not {"--no-sync", "--frozen", "--dry-run"} & set(uv_args):
        # uv add has no dry run: the lock is updated first (no sync), the plan read from a dry sync,
        # and the add then run as given, which re-resolves from that lock and syncs as it would have.
        added = subprocess.run([uv, *uv_args, "--no-sync"])
        if added.returncode != 0:
            return added.returncode
        dry = [uv, "sync", "--inexact", "--dry-run", *_project_flags(uv_args)]
    if dry is not None and "--dry-run" not in uv_args:
        try:
            _preselect(args, dry)
        except (VenvfsError, OSError) as e:
            print(f"venvfs: not selecting from the store ({e}); uv installs everything", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(uv, [uv, *uv_args])


def _preselect(args: argparse.Namespace, dry: list[str]) -> None:
    from venvfs.venv.preselect import Plan, preselect, venv_of
    from venvfs.venv.venv import Venv

    proc = subprocess.run(dry, capture_output=True, text=True)
    if proc.returncode != 0:
        return  # uv's own run says why, in its words
    plan = Plan.parse(proc.stderr + "\n" + proc.stdout)
    root = venv_of(plan, Path.cwd())
    if root is None or not (root / ".venvfs").is_dir():
        return
    venv = Venv.open(root)
    if not venv.is_managed:
        return
    result = preselect(venv, open_store_for(args, venv), plan)
    if result.selected and not args.quiet:
        left = f"; uv installs {len(result.left)}" if result.left else ""
        print(f"venvfs: {len(result.selected)} served from the store{left}", file=sys.stderr)
