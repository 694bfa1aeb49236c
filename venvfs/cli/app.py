"""The ``venvfs`` command line: argument parsing and output only; the work is in the library modules.

Command groups live in their own modules (``store``, ``mount``, ``hooks``, ``bench`` in ``venvfs.cli``),
each exposing ``register(subparsers)``; every handler takes the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence

from venvfs import __version__
from venvfs.errors import EXIT_CODES, IOFailure, VenvfsError

COMMAND_MODULES = ("venvfs.cli.store", "venvfs.cli.mount", "venvfs.cli.hooks", "venvfs.cli.bench",
                   "venvfs.cli.installers")

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


def build_parser() -> argparse.ArgumentParser:
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
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        sys.stdout.flush()  # --help into a closed pipe: seen here, not at interpreter exit
        raise
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
        traceback.print_exc()
        print("venvfs: internal error (this is a bug in venvfs)", file=sys.stderr)
        return 70
