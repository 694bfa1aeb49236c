"""Options and helpers every command group shares: --store, --json, the venv argument, progress."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from venvfs.fsutil import DEFAULT_LOCK_TIMEOUT, LOCK_TIMEOUT_ENV
from venvfs.store import LOWER_ENV, STORE_ENV

if TYPE_CHECKING:
    from venvfs.store.store import Store
    from venvfs.venv.venv import Venv

# The commands that make a store where none is: they exist to put something in it. Every other command
# refuses a missing store rather than leave an empty one behind (a typo in --store, a deleted store).
CREATING = "`store add`, `adopt`, `mount`, `add` and `create`"


def common_parent() -> argparse.ArgumentParser:
    """Options accepted by every subcommand (so ``venvfs status --store X`` works as users type it)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--store", type=Path, default=None, metavar="DIR",
        help=f"the store to use (default: ${STORE_ENV}, else the user data directory); only {CREATING} "
        "create one, in a missing or empty directory",
    )
    parent.add_argument(
        "--store-lower", type=Path, action="append", default=None, metavar="DIR",
        help=f"a read-only store below --store, looked in after it (repeatable; default: ${LOWER_ENV}, "
        "else the config file store-lower, else those the store was last used with)",
    )
    parent.add_argument(
        "--wait", type=_seconds, default=None, metavar="SECONDS",
        help=f"how long to wait for a lock another command holds before giving up with exit code 7 "
        f"(default: ${LOCK_TIMEOUT_ENV}, else {DEFAULT_LOCK_TIMEOUT:g}; a negative number waits for ever)",
    )
    parent.add_argument("--no-wait", dest="wait", action="store_const", const=0.0,
                        help="give up at once when a lock is held (same as --wait 0)")
    parent.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing on success (warnings and errors still go to stderr; --json "
                        "output is still printed)")
    return parent


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    return value if value >= 0 else float("inf")


def json_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    return parent


class _Intermixed(argparse.ArgumentParser):
    """A command parser whose positionals may come before, between and after its options. Plain
    argparse fills every positional from the first run of words (an empty ``nargs="*"`` included), so
    ``create DIR --python X numpy`` would leave ``numpy`` unrecognized. The subparsers action calls
    ``parse_known_args``; intermixed parsing calls it again itself (twice: options, then positionals),
    and those inner calls must be the plain ones."""

    _inside = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def intermixed(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` (a subcommand's, from ``add_parser``, which always makes the plain class) take
    its positionals between its options, as ``pip install`` and ``uv pip install`` take packages."""
    parser.__class__ = _Intermixed


def add_venv_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "venv", nargs="?", type=Path, default=None,
        help="the virtual environment (default: $VIRTUAL_ENV, else ./.venv)",
    )


def open_store(args: argparse.Namespace, *, create: bool = False, named_lowers: bool = True) -> Store:
    """--store, else $VENVFS_STORE or the default; made there only with ``create`` (see CREATING).
    ``named_lowers`` False: only the lowers the store recorded (no config file read: ``venvfs list``
    reads no object and starts without platformdirs)."""
    from venvfs.store.store import Store, default_store_path

    root = getattr(args, "store", None)
    if not named_lowers:
        return Store.open(root, create=create)
    return Store.open(root, create=create, lowers=_lowers(args, root or default_store_path(), named=root is not None))


def _lowers(args: argparse.Namespace, root: Path, *, named: bool = False) -> list[Path] | None:
    """The lower stores the user named for ``root``, None if none. A store named by --store that is
    one of them (an admin running `venvfs store verify --store SHARED` where $VENVFS_STORE_LOWER
    names SHARED for every user) is that shared store itself: it is not given itself as a lower, and
    nothing is recorded in it. Anywhere else a lower that is the store itself is refused."""
    from venvfs.store import layers

    lowers = layers.configured(getattr(args, "store_lower", None))
    if lowers is None or not named:
        return lowers
    try:
        here = root.stat()
    except OSError:
        return lowers
    for lower in lowers:
        try:
            st = lower.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
            return None
    return lowers


def open_store_for(args: argparse.Namespace, venv: Venv, *, create: bool = False, damaged_ok: bool = False
                   ) -> Store:
    """The store a venv command uses: --store if given, else the one the venv is managed with, else
    $VENVFS_STORE or the default (so commands on a venv never silently look in the wrong store).

    A venv moved or copied elsewhere is registered again the first time it is used, so gc sees it;
    a damaged state raises ``StateDamaged`` unless ``damaged_ok`` (umount, status, mount)."""
    from venvfs.store.store import Store
    from venvfs.venv import registry

    if not create and not venv.is_managed and not (damaged_ok and venv.state_dir.exists()):
        # "not managed (run `venvfs adopt`)" says more than "no store" would; a venv whose state
        # file is gone but not the rest of .venvfs/ is the registry's to judge (damaged, not new).
        venv.read_state()
    named = registry.state_store(venv) if getattr(args, "store", None) is None else None
    store = (Store.open(named, create=False, lowers=_lowers(args, named)) if named is not None
             else open_store(args, create=create))
    registry.sync(venv, store, damaged_ok=damaged_ok)
    return store


def note_dead_mount(venv: Venv) -> None:
    """One line on stderr when the venv's site-packages is a dead mount (its daemon was killed along
    with the watcher that clears it): every import and uv command fails with ENOTCONN until it is
    mounted again, and this command does not do that (``mount`` does; ``status`` only reports)."""
    from venvfs.errors import VenvfsError
    from venvfs.venv.mountinfo import mount_state

    try:
        dead = venv.is_managed and mount_state(venv) == "dead"
    except (VenvfsError, OSError):
        return
    if dead:
        print(f"venvfs: {venv.site_packages} is a dead mount (its daemon died; imports fail, uv says "
              f"\"os error 107\"): `venvfs mount {venv.root}` mounts it again", file=sys.stderr)


def venv_path(args: argparse.Namespace) -> Path:
    from venvfs.venv.venv import Venv

    path: Path | None = getattr(args, "venv", None)
    return path if path is not None else Venv.default_path()


def print_json(data: Any) -> None:
    import json

    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
