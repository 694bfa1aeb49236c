"""The mount service's program: ``python -m venvfs.cli.service`` (the first command that needs the
service starts it; ``venvfs hook unit --install`` runs it under systemd).

The mechanism is the mount layer's (``mount/service.py``: the socket, the checks, forking each mount's
daemon). The program belongs to the CLI layer because the service also runs whole commands in forks
of itself (``cli/thin.py``): it imports the command line once here, so that no fork imports it again.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from venvfs.cli import app, thin
from venvfs.fsutil import log_to_stderr
from venvfs.mount import service
from venvfs.mount.serviceclient import socket_path
from venvfs.store.store import default_store_path

log = logging.getLogger(__name__)


# What the commands import as they run (seen with `python -X importtime -m venvfs.cli.service`: a
# worker's imports go to its client's stderr). Imported here once, they cost a worker nothing: the
# mount path alone imported ~20 ms of them per command (the registry, with gc's machinery).
_USED_BY_COMMANDS = (
    "hashlib", "sysconfig", "packaging.requirements", "packaging.specifiers", "packaging.tags", "installer",
    "venvfs.store.bytecode", "venvfs.store.gc", "venvfs.store.verify", "venvfs.store.wheel",
    "venvfs.venv.adopt", "venvfs.venv.materialize", "venvfs.venv.ownpyc", "venvfs.venv.preselect",
    "venvfs.venv.probecache", "venvfs.venv.registry", "venvfs.venv.selecting", "venvfs.venv.status",
    "venvfs.venv.takein", "venvfs.venv.uvconfig", "venvfs.mount.commit", "venvfs.mount.upper_adopter",
    "venvfs.mount.create", "venvfs.venv.reqfile", "venvfs.venv.select", "venvfs.venv.skeleton", "uuid",
)


def _preload() -> None:
    local = {app.COMMANDS[command] for command in thin.LOCAL_COMMANDS}
    for module in (*(m for m in app.COMMAND_MODULES if m not in local), *_USED_BY_COMMANDS):
        importlib.import_module(module)
    app.prebuild_parser()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m venvfs.cli.service")
    parser.add_argument("--store", type=Path, help="the store (default: $VENVFS_STORE, else the user data directory)")
    parser.add_argument("--socket", type=Path)
    parser.add_argument("--systemd", action="store_true",
                        help="run under systemd: notify readiness, never exit when idle, take the socket over")
    args = parser.parse_args(argv)
    log_to_stderr()
    # The same default the CLI computes, so that both name the same socket.
    store = (args.store or default_store_path()).expanduser().absolute()
    path = args.socket or socket_path(store)
    if path is None:
        log.error("no safe runtime directory for the socket")
        return 1
    _preload()
    return service.serve_forever(store, path, systemd=args.systemd, runner=thin.serve)


if __name__ == "__main__":
    sys.exit(main())
