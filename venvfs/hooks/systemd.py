"""The systemd user unit that runs ``venvfs mount --all`` at login, from the template packaged in
``venvfs/data/``, with this venvfs installation's interpreter."""

from __future__ import annotations

import os
from pathlib import Path

from venvfs.hooks.target import venvfs_argv

UNIT_NAME = "venvfs-mount-all.service"


def _q_systemd(arg: str) -> str:
    # systemd expands $VAR and %-specifiers in Exec lines, and splits on blanks outside quotes.
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def render_unit(store: Path | None = None) -> str:
    """The packaged unit with this venvfs installation's interpreter (and the store, if not the default)."""
    from importlib.resources import files

    template = files("venvfs").joinpath("data", UNIT_NAME).read_text()
    argv = venvfs_argv()
    command = " ".join(_q_systemd(a) for a in argv)
    environment = f"Environment={_q_systemd('VENVFS_STORE=' + str(store))}" if store is not None else ""
    return (template.replace("@PYTHON@ -m venvfs", command)
            .replace("@ENVIRONMENT@\n", environment + "\n" if environment else ""))


def unit_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user" / UNIT_NAME
