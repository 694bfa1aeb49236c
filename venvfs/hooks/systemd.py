"""The systemd user units, from the templates packaged in ``venvfs/data/``, with this venvfs
installation's interpreter: ``venvfs-service.service`` runs the mount service
(``venvfs/cli/service.py``) for the whole session, and ``venvfs-mount-all.service`` runs
``venvfs mount --all`` at login."""

from __future__ import annotations

import os
from pathlib import Path

from venvfs.hooks.target import SERVICE_MODULE, module_argv, venvfs_argv

UNIT_NAME = "venvfs-mount-all.service"
SERVICE_UNIT_NAME = "venvfs-service.service"
UNIT_NAMES = (SERVICE_UNIT_NAME, UNIT_NAME)


def _q_systemd(arg: str) -> str:
    # systemd expands $VAR and %-specifiers in Exec lines, and splits on blanks outside quotes.
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def render_unit(store: Path | None = None, name: str = UNIT_NAME) -> str:
    """The packaged unit ``name`` with this venvfs installation's interpreter (and the store, if not
    the default: the service and the commands must agree on it, as the socket's name derives from it)."""
    from importlib.resources import files

    if name not in UNIT_NAMES:
        raise ValueError(f"no unit {name!r}")
    template = files("venvfs").joinpath("data", name).read_text()
    command = " ".join(_q_systemd(a) for a in venvfs_argv())
    service = " ".join(_q_systemd(a) for a in module_argv(SERVICE_MODULE))
    environment = f"Environment={_q_systemd('VENVFS_STORE=' + str(store))}" if store is not None else ""
    return (template.replace("@PYTHON@ -m venvfs", command).replace("@SERVICE@", service)
            .replace("@ENVIRONMENT@\n", environment + "\n" if environment else ""))


def unit_path(name: str = UNIT_NAME) -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user" / name
