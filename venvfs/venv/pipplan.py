"""How ``venvfs pip`` reads a pip command line: the venv it installs into, the pip that runs, and
the dry run whose report is pip's plan.

pip's general options (``--python``, ``-q``, ``--log FILE``…) come before the command word; only
they are read before it, so the command is the first word that is no option and no option's value.
The venv: ``--python`` when given (pip installs there, whichever pip runs), else ``$VIRTUAL_ENV``,
else ``./.venv``. The pip: the venv's own (``VENV/bin/python -m pip``), as an activated ``pip`` would
be; a venv made by ``uv venv`` has none, and then the pip venvfs runs with installs into it through
``--python`` (pip >= 22.3), as ``pip --python`` would from outside.

The plan is ``pip install --dry-run --quiet --report -`` with the user's arguments: pip's own
resolution, JSON on stdout, every distribution it would install under ``install`` (new names,
upgrades and reinstalls alike; ``is_direct`` for a URL, a path or an editable, which no stored build
can stand for). pip resolves twice then, the plan and the real run: on the scientific set (18 wheels
from a local wheelhouse, two shared cores) the dry run took 1.8 to 3.4 s and the whole ``venvfs pip``
into an empty mounted venv 3.4 s, against 60 to 155 s for pip writing the same through the mount
(and 27 s into a plain venv), so the plan costs a few percent of what it saves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from venvfs.errors import UsageError
from venvfs.venv.preselect import Plan, installed_names
from venvfs.venv.venv import Venv

# pip's general options that take a value (pip 22 to 25, ``pip --help``), spelled out: optparse
# accepts unambiguous prefixes too, which only change which word is the command in odd cases.
_GENERAL_WITH_VALUE = frozenset({
    "--python", "--log", "--log-file", "--local-log", "--keyring-provider", "--proxy", "--retries", "--timeout",
    "--exists-action", "--trusted-host", "--cert", "--client-cert", "--cache-dir", "--use-feature",
    "--use-deprecated"})
# Output options: the dry run's stdout must be the report alone.
_CHATTER = re.compile(r"^(-q+|--quiet|-v+|--verbose|--progress-bar(=.*)?)$")
# Installs whose plan no selection can serve: elsewhere than the venv's site-packages, or every
# distribution through the mount whatever is installed (a selection would only be uninstalled again).
_NOT_PLANNED = frozenset({"--dry-run", "--target", "-t", "--prefix", "--root", "--user", "--force-reinstall",
                          "--ignore-installed", "-I", "-h", "--help"})
PIP_WITH_PYTHON = Version("22.3")


@dataclass(frozen=True)
class PipCommand:
    """A pip command line, split where pip splits it."""

    general: tuple[str, ...]  # the options before the command, without --python
    python: str | None  # --python's value
    command: str | None
    rest: tuple[str, ...]  # the command's own arguments

    @classmethod
    def parse(cls, args: Sequence[str]) -> PipCommand:
        general: list[str] = []
        python = None
        i = 0
        while i < len(args):
            a = args[i]
            if not a.startswith("-"):
                return cls(tuple(general), python, a, tuple(args[i + 1:]))
            name, eq, value = a.partition("=")
            if name == "--python":
                if eq:
                    python = value
                elif i + 1 < len(args):
                    python = args[i + 1]
                    i += 1
            elif not eq and name in _GENERAL_WITH_VALUE and i + 1 < len(args):
                general += [a, args[i + 1]]
                i += 1
            else:
                general.append(a)
            i += 1
        return cls(tuple(general), python, None, ())

    def argv(self) -> list[str]:
        return [*self.general, *([self.command] if self.command else []), *self.rest]

    def dry_run(self) -> list[str] | None:
        """pip's arguments for the plan of this command, or None when it has none to serve."""
        if self.command != "install" or _NOT_PLANNED & {a.partition("=")[0] for a in self.rest}:
            return None
        rest: list[str] = []
        skip = False
        for a in self.rest:
            if skip:
                skip = False
            elif a == "--report":
                skip = True  # the user's report file is written by the real run, not the plan's
            elif not (_CHATTER.match(a) or a.startswith("--report=")):
                rest.append(a)
        general = [a for a in self.general if not _CHATTER.match(a)]
        return [*general, "install", *rest, "--dry-run", "--quiet", "--report", "-"]


def target_venv(cmd: PipCommand, environ: Mapping[str, str], cwd: Path) -> Path:
    """The venv pip installs into (see the module docstring)."""
    if cmd.python:
        # Not resolved: VENV/bin/python is a symlink to the base interpreter, which is no venv.
        given = Path(os.path.abspath(cwd / cmd.python))
        if given.is_dir():
            return given
        if given.parent.name == "bin" and (given.parent.parent / "pyvenv.cfg").is_file():
            return given.parent.parent
        raise UsageError(f"--python {cmd.python}: not a virtual environment or its bin/python")
    if environ.get("VIRTUAL_ENV"):
        return Path(environ["VIRTUAL_ENV"])
    if (cwd / ".venv" / "pyvenv.cfg").is_file():
        return cwd / ".venv"
    raise UsageError("no virtual environment: activate one, make ./.venv, or give pip --python VENV")


def pip_argv(venv: Venv) -> list[str]:
    """The pip that installs into ``venv``: its own, else this interpreter's through --python."""
    python = str(venv.root / "bin" / "python")
    if "pip" in installed_names(venv) or _imports_pip(python, venv.site_packages):
        return [python, "-m", "pip"]
    try:
        version = Version(metadata.version("pip"))
    except (metadata.PackageNotFoundError, InvalidVersion):
        version = None
    if version is None or version < PIP_WITH_PYTHON:
        have = f"pip {version}" if version else "no pip"
        raise UsageError(f"{venv.root} has no pip, and venvfs's interpreter {sys.executable} has {have} to install "
                         f"into it with --python (needs pip >= {PIP_WITH_PYTHON}): run {python} -m ensurepip")
    return [sys.executable, "-m", "pip", "--python", python]


def _imports_pip(python: str, site_packages: Path) -> bool:
    # A listing of an unmounted venvfs venv's site-packages shows the mount point's own directory
    # (the automount .pth): its interpreter, which mounts it as it starts, is the one that can tell.
    from venvfs.hooks.target import PTH_NAME

    if not (site_packages / PTH_NAME).exists():
        return False
    return subprocess.run([python, "-c", "import pip"], capture_output=True).returncode == 0


def parse_report(text: str) -> Plan:
    """The plan in ``pip install --dry-run --report -``'s JSON."""
    try:
        report = json.loads(text)
        install = [(canonicalize_name(item["metadata"]["name"]), str(item["metadata"]["version"]))
                   for item in report.get("install", []) if not item.get("is_direct")]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"pip's report is not what pip >= 22.2 writes ({e})") from None
    return Plan(tuple(install), frozenset(), None)
