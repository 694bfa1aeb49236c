"""What every hook needs: the names and markers hooks share, and ``HookTarget``, everything a hook
needs to know resolved at install time into absolute paths, with the command line that runs this
venvfs installation's ``venvfs mount``."""

from __future__ import annotations

import json
import site
import sys
from dataclasses import dataclass
from pathlib import Path

import venvfs

PTH_NAME = "_venvfs_automount.pth"


BEGIN = "# >>> venvfs automount >>>"


END = "# <<< venvfs automount <<<"


# Set in the environment of the `venvfs mount` a hook starts: if that process (or anything it runs)
# starts the venv's own interpreter, its hook must not mount again.
GUARD_ENV = "VENVFS_AUTOMOUNT_ACTIVE"


# Set by the user to switch every hook off for a session without uninstalling anything.
OPTOUT_ENV = "VENVFS_NO_AUTOMOUNT"


# An interpreter start or an activation must not hang forever on a mount that never answers.
MOUNT_TIMEOUT = 120


# layout.TO_MOUNTED: while it exists, site-packages may be half emptied into the upper layer whatever
# the state says, and `venvfs mount` is what finishes the switch.
SWITCH_MARKER = "converting-to-mounted"


@dataclass(frozen=True)
class HookTarget:
    """Everything a hook needs, resolved at install time into absolute paths (hooks start no Python
    just to find out where things are)."""

    venv: Path
    site_packages: Path
    store: str
    argv: tuple[str, ...]  # the `venvfs mount` command, venvfs's interpreter first
    # In the mounted layout: export UV_LINK_MODE=copy while activated (see UV_LINK_MODE_WHY).
    uv_copy: bool = False

    @property
    def pth(self) -> Path:
        return self.site_packages / PTH_NAME

    @property
    def state_file(self) -> Path:
        return self.venv / ".venvfs" / "state.json"

    @property
    def switch_marker(self) -> Path:
        """Present while a switch to the mounted layout is unfinished (see venvfs/venv/layout.py)."""
        return self.venv / ".venvfs" / SWITCH_MARKER

    @property
    def python(self) -> str:
        return self.argv[0]


# uv links from its cache into site-packages: a reflink or a hardlink, else a copy with a warning on
# every install ("Failed to hardlink files; falling back to full copy"). Neither can reach into a
# FUSE mount: link(2) and FICLONE between two mounts fail with EXDEV in the VFS before FUSE sees
# them. UV_LINK_MODE=copy is uv's own way to say a copy is intended; it silences the warning and
# skips two failing system calls per file. Set only while a mounted venvfs venv is active, and only
# where the user has not set it, and taken away again by deactivate.
UV_LINK_MODE_WHY = "uv cannot hardlink or reflink into a FUSE mount (EXDEV)"
UV_MARK_ENV = "_VENVFS_UV_LINK_MODE"


# The mount service's program (``python -m``): it lives in the CLI layer, as it also runs whole commands
# (``cli/service.py``); the units and the commands that start it only name it.
SERVICE_MODULE = "venvfs.cli.service"


def venvfs_argv(*args: str) -> tuple[str, ...]:
    """The command line that runs this venvfs installation's CLI from anywhere.

    ``-I`` keeps the user's PYTHONPATH, user site-packages and current directory (all likely to be
    set inside an activated venv) away from venvfs. A venvfs that is importable only thanks to one
    of those (a source checkout) puts its own directory on sys.path explicitly.
    """
    return module_argv("venvfs", *args, entry="from venvfs.cli import main; sys.exit(main())")


def module_argv(module: str, *args: str, entry: str | None = None) -> tuple[str, ...]:
    """``python -I -m MODULE ARGS`` of this venvfs installation, runnable from anywhere (see
    ``venvfs_argv``); ``entry`` is the code a source checkout runs instead of ``-m``."""
    python = sys.executable
    package_parent = str(Path(venvfs.__file__).resolve().parent.parent)
    site_dirs = {str(Path(p).resolve()) for p in site.getsitepackages()}
    if package_parent in site_dirs:
        return (python, "-I", "-m", module, *args)
    run = entry or f"import runpy; runpy.run_module({json.dumps(module)}, run_name='__main__', alter_sys=True)"
    bootstrap = f"import sys; sys.path.insert(0, {json.dumps(package_parent)}); {run}"
    return (python, "-I", "-c", bootstrap, *args)


def gone_message(t: HookTarget) -> str:
    return (f"venvfs: cannot mount {t.venv}: venvfs's interpreter {t.python} is gone "
            f"(reinstall venvfs or run: venvfs hook uninstall {t.venv})")
