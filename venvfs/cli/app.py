"""The ``venvfs`` command line: argument parsing and output only; the work is in the library modules.

Command groups live in their own modules (``store``, ``mount``, ``hooks``, ``bench`` in ``venvfs.cli``),
each exposing ``register(subparsers)``; every handler takes the parsed namespace and returns an exit code.

A command's start-up is the user's wait (the activation hook runs ``venvfs mount`` of an already
mounted venv; scripts call ``venvfs list``): the parser registers only the command group the command
line names (``COMMANDS``), so ``venvfs --version`` imports no command module and ``venvfs list``
none of the store's or the installers' machinery it does not use. ``--help``, and a command line
naming no known command, build the whole parser (argparse lists every command, or says which exist).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence

from venvfs import __version__
from venvfs.errors import EXIT_CODES, IOFailure, VenvfsError

COMMAND_MODULES = ("venvfs.cli.store", "venvfs.cli.mount", "venvfs.cli.hooks", "venvfs.cli.bench",
                   "venvfs.cli.installers")
# Which module registers each top-level command (tests/test_cli_imports.py checks it against what the
# modules register): the one module a command line needs is imported, not all four.
COMMANDS = {
    "store": "venvfs.cli.store", "adopt": "venvfs.cli.store", "materialize": "venvfs.cli.store",
    "add": "venvfs.cli.store", "remove": "venvfs.cli.store", "status": "venvfs.cli.store",
    "mount": "venvfs.cli.mount", "umount": "venvfs.cli.mount", "list": "venvfs.cli.mount",
    "commit": "venvfs.cli.mount", "create": "venvfs.cli.mount", "restart": "venvfs.cli.mount",
    "hook": "venvfs.cli.hooks", "eject": "venvfs.cli.hooks",
    "bench": "venvfs.cli.bench",
    "uv": "venvfs.cli.installers", "pip": "venvfs.cli.installers",
}
# Commands whose every argument after the command word is the wrapped installer's (`venvfs pip
# --python .venv install -q x`): argparse would read those options as venvfs's own.
PASSTHROUGH = ("uv", "pip")

_EPILOG = "exit codes:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()) + """

typical use:
  venvfs adopt .venv            move an existing venv's packages into the shared store
  venvfs mount .venv            serve its site-packages from the store (FUSE), or link where FUSE is absent
  venvfs status .venv           what it shares with other venvs and what it owns alone
  venvfs create .venv2 numpy    a new venv from the store, mounted (what the store lacks is installed)
  venvfs store list             what the store holds

The store lives in the user data directory; --store or VENVFS_STORE choose another. Only store add,
adopt, mount, add and create make a store (in a missing or empty directory); other commands need one.
"""


_prebuilt: argparse.ArgumentParser | None = None


def prebuild_parser() -> None:
    """Build the whole parser once, in the mount service, for the commands it runs in forks of itself
    (``thin.py``): each would otherwise build its command group's again (~4 ms)."""
    global _prebuilt
    _prebuilt = build_parser()


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: with the one command group it names, else (None, ``--help``, an
    unknown command) with all of them."""
    parser = argparse.ArgumentParser(
        prog="venvfs",
        description="Share one read-only, content-addressed store of Python distributions between venvs: "
        "each venv's site-packages becomes a FUSE overlay of the store (copy-up on write), "
        "or real reflinked/hardlinked/copied files where FUSE is unavailable.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"venvfs {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _modules_for(argv):
        importlib.import_module(name).register(subparsers)
    return parser


def _modules_for(argv: Sequence[str] | None) -> Sequence[str]:
    if argv is None:
        return COMMAND_MODULES
    for arg in argv:
        if arg in ("-h", "--help"):
            return COMMAND_MODULES
        if arg == "--version":
            return ()  # argparse prints the version and exits at this option, before any command
        if not arg.startswith("-"):
            # The top-level options take no value, so the first word is the command.
            module = COMMANDS.get(arg)
            return (module,) if module else COMMAND_MODULES
    return COMMAND_MODULES  # no command: the help is printed (every command), exit 2


class ExecInstead(Exception):
    """Raised by a command whose last step is to become another program (``venvfs uv``): the
    process that owns the user's terminal does the exec, which is this one, or the client of a command
    that ran in the mount service (``thin.py``). Locks and files are released on the way up."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__(argv[0])
        self.argv = argv


def main(argv: Sequence[str] | None = None) -> int:
    result = run(argv)
    if isinstance(result, ExecInstead):
        os.execv(result.argv[0], result.argv)
    return result


def run(argv: Sequence[str] | None = None) -> int | ExecInstead:
    """The command line's work and its exit status, or the program it hands over to."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # `venvfs store list | head`: the reader has what it wanted. Later writes (the interpreter's
        # own flush at exit included) go to /dev/null so none raises again, and the exit status is
        # the one a shell shows for a process SIGPIPE ended (128 + 13), as `yes | head` leaves it:
        # `set -o pipefail` scripts treat venvfs like any other producer there.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141


@contextlib.contextmanager
def _quiet(on: bool) -> Iterator[None]:
    """-q on any command: what it prints on stdout goes nowhere; warnings and errors are stderr's."""
    if not on:
        yield
        return
    from venvfs.progress import Progress

    Progress.silenced = True
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def _split_passthrough(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``argv`` up to a PASSTHROUGH command word, and the installer's arguments after it (None for
    every other command, and for a bare ``-h``/``--help``, which is venvfs's help)."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            rest = argv[i + 1:]
            if arg in PASSTHROUGH and rest not in (["-h"], ["--help"]):
                return argv[: i + 1], rest
            break
    return argv, None


def _main(argv: Sequence[str] | None) -> int | ExecInstead:
    argv = sys.argv[1:] if argv is None else list(argv)
    argv, passed = _split_passthrough(argv)
    parser = _prebuilt or build_parser(argv)
    try:
        args = parser.parse_args(argv)
        if passed is not None:
            args.installer_args = passed
    except SystemExit:
        sys.stdout.flush()  # --help into a closed pipe: seen here, not at interpreter exit
        raise
    import logging

    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="venvfs: %(message)s",
    )
    if getattr(args, "wait", None) is not None:
        from venvfs.fsutil import set_lock_timeout

        set_lock_timeout(args.wait)
    if not getattr(args, "handler", None):
        parser.print_help()
        sys.stdout.flush()
        return 2
    try:
        with _quiet(getattr(args, "quiet", False) and not getattr(args, "json", False)):
            code: int = args.handler(args)
        # Flushed here, not at interpreter exit, so a reader that went away is seen by main.
        sys.stdout.flush()
        return code
    except ExecInstead as order:
        sys.stdout.flush()
        sys.stderr.flush()
        return order
    except BrokenPipeError:
        raise
    except VenvfsError as e:
        print(f"venvfs: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        # The filesystem's answer (a full disk, a read-only mount, a permission), not a venvfs bug:
        # the library names the operation where it can; here at least the path and the reason.
        from venvfs.fsutil import describe_oserror

        print(f"venvfs: error: {describe_oserror(e)}", file=sys.stderr)
        return IOFailure.exit_code
    except KeyboardInterrupt:
        print("venvfs: interrupted", file=sys.stderr)
        return 130
    except Exception:
        import traceback

        traceback.print_exc()
        print("venvfs: internal error (this is a bug in venvfs)", file=sys.stderr)
        return 70
