"""Whether uv has been told to copy into a venv, for the one-time hint ``venvfs mount`` prints.

uv links packages from its cache into site-packages: a reflink, else a hardlink, else a copy with
``warning: Failed to hardlink files; falling back to full copy`` on every install (uv 0.13.9). Neither
link can reach into a FUSE mount: ``link(2)`` and ``FICLONE`` between two mounts fail with EXDEV in
the VFS, before FUSE sees them, so the copy is all there can be. The activation hooks of every
shell export ``UV_LINK_MODE=copy`` while a mounted venv is active (``venvfs.hooks.posix``, ``fish``,
``csh``, ``nushell``, ``powershell``). uv commands run without activating (``uv add``, ``uv sync``,
``uv run`` in a project) read only the environment and uv's configuration files, which are the
user's: venvfs writes none of them, and says once per venv, for a uv project's venv (a
``pyproject.toml`` beside it), what to add instead.

uv's configuration, as discovered by uv: ``UV_LINK_MODE``; ``UV_CONFIG_FILE``; ``uv.toml`` or
``pyproject.toml`` (``[tool.uv]``) in the project directory or a parent (the venv's parent directory
for a project's ``.venv``); the user's ``$XDG_CONFIG_HOME/uv/uv.toml`` (``~/.config/uv``); the
system's ``/etc/uv/uv.toml`` (``$XDG_CONFIG_DIRS``). ``UV_NO_CONFIG`` ignores the files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from venvfs.venv.venv import Venv

HINT_MARKER = "uv-link-mode-hint"
_LINK_MODE = re.compile(r"^\s*link-mode\s*=", re.MULTILINE)


def made_by_uv(venv: Venv) -> bool:
    try:
        cfg = (venv.root / "pyvenv.cfg").read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"^\s*uv\s*=", cfg, re.MULTILINE) is not None


def _sets_link_mode(path: Path) -> bool:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    if path.name == "pyproject.toml" and "[tool.uv" not in text:
        return False
    return _LINK_MODE.search(text) is not None


def link_mode_source(venv: Venv) -> str | None:
    """Where uv finds a link mode for installs into ``venv`` run from its project, or None."""
    if os.environ.get("UV_LINK_MODE"):
        return "UV_LINK_MODE"
    if os.environ.get("UV_NO_CONFIG"):
        return None
    named = os.environ.get("UV_CONFIG_FILE")
    if named and _sets_link_mode(Path(named)):
        return named
    for d in [venv.root.parent, *venv.root.parent.parents]:
        for name in ("uv.toml", "pyproject.toml"):
            if _sets_link_mode(d / name):
                return str(d / name)
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    dirs = [config, *(Path(p) for p in (os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":") if p),
            Path("/etc")]
    for d in dirs:
        if _sets_link_mode(d / "uv" / "uv.toml"):
            return str(d / "uv" / "uv.toml")
    return None


def hint_once(venv: Venv) -> str | None:
    """The one line to print after mounting a uv venv whose project does not tell uv to copy; None
    if it was printed for this venv before (or is not needed)."""
    marker = venv.state_dir / HINT_MARKER
    project = venv.root.parent / "pyproject.toml"
    # Only a uv project's venv: there uv runs without activation (uv add, uv sync, uv run).
    if (not project.is_file() or not made_by_uv(venv) or marker.exists()
            or link_mode_source(venv) is not None):
        return None
    marker.touch()
    return (f"uv prints \"Failed to hardlink files\" on every install into {venv.root} (hardlinks cannot reach "
            f"into a FUSE mount); activating the venv sets UV_LINK_MODE=copy; for uv without activation, "
            f'add `link-mode = "copy"` under [tool.uv] in {project} or export UV_LINK_MODE=copy (said once)')
