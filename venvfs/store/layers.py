"""Layered stores: one writable local store over read-only lower stores (a cluster's shared store).

A lower store is any venvfs store reachable as a directory: an NFS or CephFS export, a CVMFS
repository, a read-only bind mount. Lookups of objects, records and bytecode fall through the layers
(the local store first, then each lower in order); every write goes to the local store, and nothing
found below is ever copied up. A node never writes into a lower store, root included: no writer is
ever given a lower's path (``Store.local_object_path`` and friends are what writers use), and a lower
that is the local store itself is refused.

Which lowers a store has: ``--store-lower PATH`` (repeatable), else ``$VENVFS_STORE_LOWER`` (paths
separated by ``:``; set and empty: none), else the config file ``store-lower`` in the user's config
directory (one path a line, ``#`` comments), else what the local store recorded last
(``STORE/lowers.json``). Lowers named by any of the first three are recorded there, because the
processes that open the store later by its path alone (the mount daemons the service forks, the
ingest worker, the bytecode compiler) have neither the flag nor the user's environment.

This module works on paths only: ``store.py`` imports it, so it must not import ``store.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from venvfs.errors import StoreError
from venvfs.fsutil import atomic_write_json, describe_oserror, read_json
from venvfs.store import LOWER_ENV

LOWERS_FILE = "lowers.json"
CONFIG_NAME = "store-lower"
# Written by ``venvfs store publish`` into the store it publishes to: gc then knows the store is used
# by nodes whose venvs it cannot see (``gc.py``).
SHARED_MARKER = "shared.json"
# A shared store's gc leaves files younger than this (by ctime, which a link or rename sets) alone:
# without a lock that holds across nodes, an object a publisher linked a moment ago and whose record
# is still to come looks exactly like an orphan.
SHARED_GRACE = 86400.0


def config_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("venvfs")) / CONFIG_NAME


def configured(flag: Sequence[Path] | None) -> list[Path] | None:
    """The lowers the user named (flag, environment, config file, in that order); None: none named."""
    if flag:
        return [Path(p).expanduser().absolute() for p in flag]
    env = os.environ.get(LOWER_ENV)
    if env is not None:
        return [Path(p).expanduser().absolute() for p in env.split(os.pathsep) if p]
    try:
        text = config_file().read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read {config_file()} ({describe_oserror(e)})") from None
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [Path(line).expanduser().absolute() for line in lines if line]


def recorded(root: Path) -> list[Path]:
    """The lowers the store at ``root`` was last used with (none if it never had any)."""
    try:
        data = read_json(root / LOWERS_FILE)
        return [Path(p) for p in data["lowers"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{root / LOWERS_FILE}: unreadable ({e}); remove it and name the lower stores "
                         f"again (--store-lower, ${LOWER_ENV})") from None


def record(root: Path, lowers: Sequence[Path]) -> None:
    # Checked only when they change: `venvfs umount` must work while a lower is unreachable.
    if list(lowers) == recorded(root):
        return
    for lower in lowers:
        check(lower, root)
    path = root / LOWERS_FILE
    if not lowers:
        path.unlink(missing_ok=True)
        return
    atomic_write_json(path, {"lowers": [str(p) for p in lowers]}, tmp_dir=root / "tmp")


def is_shared(root: Path) -> bool:
    return (root / SHARED_MARKER).exists()


def mark_shared(root: Path) -> None:
    if not is_shared(root):
        atomic_write_json(root / SHARED_MARKER, {"shared": True}, tmp_dir=root / "tmp")


def check(lower: Path, local: Path) -> None:
    """Refuse a lower that is unreachable, no store, or the local store itself (by inode: a bind
    mount or a symlink of the local store is the same store, and would be written through)."""
    try:
        st = os.stat(lower)
        fmt = read_json(lower / "format.json").get("format")
    except FileNotFoundError:
        raise StoreError(f"lower store {lower} is unreachable or no venvfs store (no {lower / 'format.json'})"
                         ) from None
    except OSError as e:
        raise StoreError(f"lower store {lower} is unreachable ({describe_oserror(e)})") from None
    except (ValueError, AttributeError) as e:
        raise StoreError(f"lower store {lower}: unreadable format.json ({e})") from None
    if fmt != 1:
        raise StoreError(f"lower store {lower}: store format {fmt!r}, this venvfs reads 1")
    try:
        here = os.stat(local)
    except OSError:
        return
    if (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
        raise StoreError(f"lower store {lower} is the local store {local} itself: a store cannot lie below itself")


def exists(path: str) -> bool:
    """Whether ``path`` exists; any error (EIO from a soft NFS mount whose server is gone, ESTALE)
    counts as no, so a lookup moves on to the next layer instead of failing the whole request."""
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return True


def find(roots: Iterable[Path], rel: str) -> Path | None:
    """The first ``root/rel`` that exists. An unreachable root counts as not holding it: the caller
    then names the local path, and opening it fails with what the user can act on."""
    for root in roots:
        path = f"{root}/{rel}"
        if exists(path):
            return Path(path)
    return None


def dist_keys(roots: Sequence[Path]) -> list[str]:
    """The keys of every layer (``roots``: the local store first). A lower that cannot be listed is
    an error naming it: listing without it would answer "no such distribution" for what it holds."""
    keys: set[str] = set()
    for i, root in enumerate(roots):
        try:
            with os.scandir(root / "dists") as it:
                keys.update(e.name[:-5] for e in it if e.name.endswith(".json") and not e.name.startswith("."))
        except FileNotFoundError:
            if i == 0:
                continue
            raise StoreError(f"lower store {root} is unreachable or no venvfs store (no {root / 'dists'})") from None
        except OSError as e:
            raise StoreError(f"store {root} is unreachable ({describe_oserror(e)})") from None
    return sorted(keys)
