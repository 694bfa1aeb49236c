"""Select the stored builds of what uv is about to install, before it installs them.

uv writes every file of every wheel through the mount (about thirteen FUSE requests a file), then
venvfs ingests them and drops the copies: correct, and an order of magnitude slower than uv's
hardlinks. When the store already holds a build of the very version uv has chosen, selecting it
first makes uv find it installed and write nothing. uv says what it would do (``--dry-run``, about
70 ms), so the plan is uv's own resolution, not a second one that might disagree. ``uv add`` and
``uv run`` have no dry run; the sync each starts with has (``uv sync --dry-run``). pip's plan is its
``--report`` (``venvfs.venv.pipplan``).

Only names the venv does not hold yet are selected: an upgrade or a reinstall goes uv's way (files
through the mount, then ingest), since a selection under an installed copy would show both. A pin
the store lacks, or holds no build of that fits the venv, is left to uv.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from venvfs.errors import AmbiguousBuild, NoMatchingDistribution
from venvfs.store.bytecode import look_ahead
from venvfs.store.store import Store, keeping_records
from venvfs.venv.venv import Venv

# uv's plan lines: " + numpy==2.4.6" (install), " - numpy==2.3.0" (remove), " ~ x==1" (reinstall);
# a direct reference reads " + proj @ file:///..." and is never a stored build.
_PLAN_LINE = re.compile(r"^\s*([+\-~])\s+([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*$")
# "Using Python 3.11.7 environment at: .venv", "Would use project environment at: .venv",
# "Would create project environment at: .venv".
_ENV_LINE = re.compile(r"^(?:Using Python \S+ environment|Would (?:use|create) project environment) at: (.+)$")


_QUIET = re.compile(r"^(-q+|--quiet)$")


@dataclass(frozen=True)
class Plan:
    """What a dry run said it would do."""

    install: tuple[tuple[str, str], ...]  # (canonical name, version)
    remove: frozenset[str]
    environment: str | None

    @classmethod
    def parse(cls, output: str) -> Plan:
        install: list[tuple[str, str]] = []
        remove: set[str] = set()
        environment = None
        for line in output.splitlines():
            if m := _ENV_LINE.match(line.strip()):
                environment = m.group(1).strip()
            elif m := _PLAN_LINE.match(line):
                sign, name, version = m.groups()
                if sign == "+":
                    install.append((canonicalize_name(name), version))
                else:
                    remove.add(canonicalize_name(name))
        return cls(tuple(install), frozenset(remove), environment)


@dataclass
class Preselected:
    selected: list[str] = field(default_factory=list)  # "name==version" now served from the store
    left: list[str] = field(default_factory=list)  # what uv still installs itself


def installed_names(venv: Venv) -> set[str]:
    return {canonicalize_name(d.name.removesuffix(".dist-info").rsplit("-", 1)[0]) for d in venv.dist_info_dirs()}


def named_in(args: Sequence[str]) -> set[str]:
    """The canonical names of the requirements a uv command line gives (``uv pip install numpy
    'scipy<2'``, ``uv add jax``): what its plan most likely installs. Paths, files and URLs are none."""
    words = command_words(args)
    given = words[2:] if words[:2] in (["pip", "install"], ["pip", "sync"]) else []
    if words[:1] == ["add"]:
        given = words[1:]
    names: set[str] = set()
    for word in given:
        try:
            names.add(canonicalize_name(Requirement(word).name))
        except InvalidRequirement:
            continue
    return names


def warm(store: Store, names: Collection[str]) -> None:
    """Parse the stored records of ``names`` ahead, while uv's dry run runs (each parse checks the
    key against the whole manifest: ~40 ms for the scientific set, on a second core here), and look
    up their bytecode; the selection after the plan then finds both done. ``store`` keeps what it
    parsed from now on. Only under ``store.writing()``, held until the selection is done."""
    if not names:
        return
    store.keep_records()
    records = [store.get_dist(key) for key in store.dist_keys()
               # Keys are "name-version-digest" with the canonical name, and no dash in a version.
               if key.rsplit("-", 2)[0] in names]
    tags = os.listdir(store.root / "bytecode") if not store.lowers and (store.root / "bytecode").is_dir() else []
    if len(tags) == 1:
        # The one Python the store compiles for is almost surely the venv's: its bytecode is looked
        # up now too (the caller holds ``store.writing()`` until the selection is done).
        look_ahead(store, records, tags[0])


def preselect(venv: Venv, store: Store, plan: Plan) -> Preselected:
    """Select the stored builds of ``plan``'s new names; what cannot be, uv installs as before."""
    with keeping_records(store):
        return _preselect(venv, store, plan)


def _preselect(venv: Venv, store: Store, plan: Plan) -> Preselected:
    from venvfs.venv.select import change_selection, resolve

    result = Preselected()
    state = venv.read_state()
    interp = state.interpreter or venv.probe_interpreter()
    held = installed_names(venv) | plan.remove
    stored = store.dist_keys()  # listed once, not once a name
    keys: list[str] = []
    for name, version in plan.install:
        spec = f"{name}=={version}"
        if name in held:
            result.left.append(spec)
            continue
        try:
            keys.append(resolve(store, interp, spec, selected=state.selection, venv=venv.root, keys=stored).key)
        except (NoMatchingDistribution, AmbiguousBuild):
            result.left.append(spec)
            continue
        result.selected.append(spec)
    if keys:
        # Each pin is exact and the installer's plan already holds its dependencies: the builds
        # resolved above are selected by key, with no resolution of our own.
        change_selection(venv, store, add=keys, dependencies=False)
    return result


# Options that take the next word as their value: uv's global ones (``uv --help``) and --python/-p,
# which most commands have. Other options' values come after the command words that matter here.
_UV_WITH_VALUE = frozenset({"--directory", "--project", "--config-file", "--cache-dir", "--color",
                            "--allow-insecure-host", "--python", "-p"})


def command_words(args: Sequence[str]) -> list[str]:
    """The words of a uv command line that are no option and no option's value: ``["pip", "install",
    …]`` for ``uv --directory proj pip install …``."""
    words: list[str] = []
    value = False
    for a in args:
        if value:
            value = False
        elif a in _UV_WITH_VALUE:
            value = True
        elif not a.startswith("-"):
            words.append(a)
    return words


# uv commands that end in a command of their own (``uv run [OPTIONS] <COMMAND> [ARGS]``): every word
# from that command on is the command's, however much it looks like uv's (``--directory`` of a tool).
_RUNS_A_COMMAND = (["run"], ["tool", "run"])


def uv_own_args(args: Sequence[str]) -> list[str]:
    """The words of a uv command line that are uv's own: all of them up to ``--`` (after which uv
    reads none as an option), and for ``uv run`` and ``uv tool run`` only those before the command
    it runs. An option's value stays with its option (``--with --directory`` is one pair)."""
    own: list[str] = []
    words: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            break
        if a.startswith("-") and a != "-":
            takes = a in _RUN_WITH_VALUE and i + 1 < len(args)
            own += args[i:i + 2] if takes else [a]
            i += 2 if takes else 1
            continue
        if words in _RUNS_A_COMMAND:
            break
        words.append(a)
        own.append(a)
        i += 1
    return own


def uv_options(args: Sequence[str], names: Collection[str]) -> list[tuple[str, str, list[str]]]:
    """The options ``names`` (each taking a value) among uv's own words of ``args``, in order: the
    option, its value, and the words that gave it (``--directory D`` or ``--directory=D``)."""
    own = uv_own_args(args)
    found: list[tuple[str, str, list[str]]] = []
    i = 0
    while i < len(own):
        a = own[i]
        name, eq, value = a.partition("=")
        if a in names and i + 1 < len(own):
            found.append((a, own[i + 1], [a, own[i + 1]]))
        elif eq and name in names:
            found.append((name, value, [a]))
        # Another option's value is no option (``--with --directory`` names a package).
        i += 2 if (a in names or a in _RUN_WITH_VALUE) and i + 1 < len(own) else 1
    return found


def dry_run_argv(uv: str, args: Sequence[str], cwd: Path | None = None) -> list[str] | None:
    """The dry run of a uv command that installs, or None for one that has none to plan. ``cwd``:
    where uv runs (a ``uv run`` of a script is looked at there)."""
    words = command_words(args)
    if words[:2] in (["pip", "install"], ["pip", "sync"]) or words[:1] == ["sync"]:
        # The plan is what uv prints: a quiet dry run prints none.
        return [uv, *(a for a in args if not _QUIET.match(a)), "--dry-run"]
    if words[:1] == ["run"]:
        return _run_dry_run_argv(uv, args, cwd or Path.cwd())
    return None


# `uv run`'s options that take the next word as their value (uv 0.13, `uv run --help`).
_RUN_WITH_VALUE = _UV_WITH_VALUE | frozenset({
    "--extra", "--no-extra", "--group", "--no-group", "--only-group", "--no-editable-package", "--env-file",
    "-w", "--with", "--with-editable", "--with-requirements", "--package", "--python-platform", "--index",
    "--default-index", "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--index-strategy",
    "--keyring-provider", "-P", "--upgrade-package", "--upgrade-group", "--resolution", "--prerelease",
    "--prerelease-package", "--fork-strategy", "--exclude-newer", "--exclude-newer-package",
    "--no-sources-package", "--reinstall-package", "--link-mode", "-C", "--config-setting",
    "--config-settings-package", "--no-build-isolation-package", "--no-build-package", "--no-binary-package",
    "--refresh-package"})
# A run that syncs no project environment, or not the way `uv sync` would plan it.
_RUN_UNPLANNED = frozenset({"--no-sync", "--isolated", "--active", "--no-project", "-s", "--script", "--gui-script",
                            "--reinstall", "--reinstall-package", "--dry-run"})
# `uv run` options `uv sync` does not take: the rest carry over (extras, groups, index, lock options).
_RUN_ONLY = frozenset({"--env-file", "--no-env-file", "-w", "--with", "--with-editable", "--with-requirements",
                       "-m", "--module", "--exact"})


def _run_dry_run_argv(uv: str, args: Sequence[str], cwd: Path) -> list[str] | None:
    """``uv run`` has no dry run, but syncs the project environment first, inexactly unless
    ``--exact``, with its own extras, groups and lock options: ``uv sync --dry-run`` with those is
    that sync's plan. Everything after the command it runs is that command's."""
    kept: list[str] = []
    i, command = 0, None
    while i < len(args):
        a = args[i]
        name = a.partition("=")[0]
        takes = a in _RUN_WITH_VALUE and i + 1 < len(args)
        if not a.startswith("-"):
            if "sync" in kept:
                command = a
                break
            kept.append("sync")  # the first word is `run` (command_words said so)
        elif name in _RUN_UNPLANNED:
            return None
        elif name not in _RUN_ONLY and not _QUIET.match(a):
            kept += [a, args[i + 1]] if takes else [a]
        i += 2 if takes else 1
    if "sync" not in kept or (command is not None and _is_script(cwd / command)):
        return None
    exact = "--exact" in args[:i]
    return [uv, *kept, *([] if exact else ["--inexact"]), "--dry-run"]


def _is_script(path: Path) -> bool:
    # PEP 723: a script with inline metadata runs in an environment of its own, not the project's.
    if path.suffix not in (".py", ".pyw"):
        return False
    try:
        with path.open(errors="replace") as f:
            return any(line.startswith("# /// script") for line in f)
    except OSError:
        return False


def venv_of(plan: Plan, cwd: Path) -> Path | None:
    if not plan.environment:
        return None
    path = (cwd / plan.environment).resolve()
    return path.parent.parent if path.name.startswith("python") and path.parent.name == "bin" else path
