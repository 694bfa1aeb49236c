"""``venvfs uv ARGS…`` and ``venvfs pip ARGS…``: the installer, after selecting from the store what
it is about to install.

Thin wrappers: the plan is the installer's own dry run and the work is ``venvfs.venv.preselect``
(``venvfs.venv.pipplan`` reads pip's command line and report); then the real installer runs with the
arguments as given (exec, so signals and the exit status are the installer's). Every argument after
the command word is the installer's (``venvfs.cli.app`` passes them through unparsed). venvfs is an
accelerator here, never a gate: when anything about the plan fails, the installer runs all the same.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from venvfs.cli.common import open_store, open_store_for
from venvfs.errors import UsageError, VenvfsError

if TYPE_CHECKING:
    from venvfs.store.store import Store
    from venvfs.venv.preselect import Plan

_EPILOG = """\
Commands that install (`uv pip install`, `uv pip sync`, `uv sync`, `uv add`, and `uv run`, which
syncs the project first) are first run as a dry run (`uv sync --dry-run` for add and run); the
versions uv chose that the store already holds, for names the venv does not have yet, are selected
from the store, so uv finds them installed and copies nothing through the mount. The rest (and every
other uv command) is uv's, unchanged; venvfs ingests what uv installs afterwards.

examples:
  venvfs uv sync
  venvfs uv add jax scipy
  venvfs uv run python -c 'import jax'
  venvfs uv pip install -r requirements.txt
"""

_PIP_EPILOG = """\
`pip install` (with -r, -U, …) is first run as pip's own dry run (--dry-run --report -); the versions
pip chose that the store already holds, for names the venv does not have yet, are selected from the
store, so pip finds them installed and copies nothing through the mount. Upgrades, reinstalls and
every other pip command are pip's, unchanged; venvfs ingests what pip installs afterwards.

The venv is pip's --python if given, else $VIRTUAL_ENV, else ./.venv; the pip is the venv's own
(VENV/bin/python -m pip), else, for a venv without pip (uv venv), venvfs's with --python VENV.

examples:
  venvfs pip install -r requirements.txt
  venvfs pip --python .venv install -U numpy
"""

_PROJECT_FLAGS = ("--project", "--directory")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    for name, epilog, handler in (("uv", _EPILOG, cmd_uv), ("pip", _PIP_EPILOG, cmd_pip)):
        # No venvfs options: every argument after the command word is the installer's (the store is
        # the venv's own, as for every venv command).
        p = subparsers.add_parser(
            name, help=f"run {name}, serving what the store holds instead of copying it",
            description=f"Run {name} in a venvfs venv, first selecting from the store what {name} is about to "
            "install. Every argument is the installer's.",
            epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("installer_args", nargs=argparse.REMAINDER, metavar=f"{name.upper()}_ARGS",
                       help=f"{name}'s arguments, as given to {name}")
        p.set_defaults(handler=handler, store=None, quiet=False)


def _project_options(args: list[str]) -> list[tuple[str, str, list[str]]]:
    """uv's ``--project`` and ``--directory`` in ``args``, in order: the option, its value, and the
    words that gave it (``--directory D`` or ``--directory=D``). Only uv's own words count: a
    ``--directory`` of the command ``uv run`` runs, or after ``--``, is that command's."""
    from venvfs.venv.preselect import uv_options

    return uv_options(args, _PROJECT_FLAGS)


def _project_flags(args: list[str]) -> list[str]:
    """The project options as given, for another uv command on the same project."""
    return [word for _name, _value, words in _project_options(args) for word in words]


def cmd_uv(args: argparse.Namespace) -> int:
    from venvfs.venv.preselect import command_words, dry_run_argv

    uv_args = _installer_args(args)
    uv = shutil.which("uv")
    if uv is None:
        raise UsageError("uv is not on PATH (install it: https://docs.astral.sh/uv/)")
    if not uv_args:
        raise UsageError("name a uv command, e.g. `venvfs uv sync`")
    where = _directory(uv_args)
    dry = dry_run_argv(uv, uv_args, where)
    words = command_words(uv_args)
    if words[:1] == ["add"] and not {"--no-sync", "--frozen", "--dry-run"} & set(uv_args):
        # uv add has no dry run: the lock is updated first (no sync), the plan read from a dry sync,
        # and the add then run as given, which re-resolves from that lock and syncs as it would have.
        added = subprocess.run([uv, *uv_args, "--no-sync"])
        if added.returncode != 0:
            return added.returncode
        dry = [uv, "sync", "--inexact", "--dry-run", *_project_flags(uv_args)]
    if dry is not None and "--dry-run" not in uv_args:
        try:
            _preselect_uv(args, dry, where, uv_args)
        except (VenvfsError, OSError) as e:
            print(f"venvfs: not selecting from the store ({e}); uv installs everything", file=sys.stderr)
    _exec([uv, *uv_args])


def _installer_args(args: argparse.Namespace) -> list[str]:
    given = list(args.installer_args)
    return given[1:] if given[:1] == ["--"] else given


def _exec(argv: list[str]) -> NoReturn:
    from venvfs.cli.app import ExecInstead

    raise ExecInstead(argv)


def _directory(args: list[str]) -> Path:
    """Where uv runs: ``--directory`` changes its working directory, and the paths it prints are
    relative to that."""
    where = Path.cwd()
    for name, value, _words in _project_options(args):
        if name == "--directory":
            where = where / value
    return where


def _preselect_uv(args: argparse.Namespace, dry: list[str], where: Path, uv_args: list[str]) -> None:
    from venvfs.venv.preselect import Plan, named_in, venv_of, warm

    proc = subprocess.Popen(dry, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with contextlib.ExitStack() as held:
        # uv plans for ~50 ms, mostly in a subprocess of its own (it asks the venv's Python about
        # itself): meanwhile the records of what the command line names are parsed and their
        # bytecode looked up, on another core. The store's shared lock is held from then until the
        # selection is done, so gc cannot take away what was found.
        warmed = None
        try:
            warmed = open_store(args, create=False)
            held.enter_context(warmed.writing())
            warm(warmed, named_in(uv_args))
        except (VenvfsError, OSError, ValueError):
            warmed = None  # a guess only: the selection reads the venv's own store as it always did
        finally:
            out, err = proc.communicate()
        if proc.returncode != 0:
            return  # uv's own run says why, in its words
        plan = Plan.parse(err + "\n" + out)
        root = venv_of(plan, where)
        if root is not None:
            _select(args, root, plan, "uv", warmed=warmed)


def _select(args: argparse.Namespace, root: Path, plan: Plan, installer: str, *, warmed: Store | None = None) -> None:
    from venvfs.venv.preselect import preselect
    from venvfs.venv.venv import Venv

    if not (root / ".venvfs").is_dir():
        return
    venv = Venv.open(root)
    if not venv.is_managed:
        return
    store = open_store_for(args, venv)
    if warmed is not None and (warmed.root, warmed.lowers) == (store.root, store.lowers):
        store = warmed  # the same store, with the records it parsed while the installer planned
    result = preselect(venv, store, plan)
    if result.selected and not args.quiet:
        left = f"; {installer} installs {len(result.left)}" if result.left else ""
        print(f"venvfs: {len(result.selected)} served from the store{left}", file=sys.stderr)


def cmd_pip(args: argparse.Namespace) -> int:
    from venvfs.venv.pipplan import PipCommand, parse_report, pip_argv, target_venv
    from venvfs.venv.venv import Venv

    pip_args = _installer_args(args)
    if not pip_args:
        raise UsageError("name a pip command, e.g. `venvfs pip install -r requirements.txt`")
    cmd = PipCommand.parse(pip_args)
    root = target_venv(cmd, os.environ, Path.cwd())
    pip = pip_argv(Venv.open(root))
    dry = cmd.dry_run()
    if dry is not None:
        try:
            proc = subprocess.run([*pip, *dry], capture_output=True, text=True)
            # A failed plan (a pip without --report, a requirement that cannot be met): pip's own
            # run says why, in its words.
            if proc.returncode == 0:
                _select(args, root, parse_report(proc.stdout), "pip")
        except (VenvfsError, OSError, ValueError) as e:
            print(f"venvfs: not selecting from the store ({e}); pip installs everything", file=sys.stderr)
    _exec([*pip, *cmd.argv()])
