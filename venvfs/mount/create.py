"""``venvfs create``: a new venv, its distributions selected from the store, mounted, in one command.

The steps, each what a separate command already does: make the venv (``uv venv``, else ``python -m
venv``), make it managed (``adopt``: nothing to store in a fresh uv venv; pip, once, in a venv made
by ``venv``), switch it to the mounted layout while nothing is mounted yet (site-packages is empty,
so this costs nothing, and the selection that follows then needs no reload of a running daemon),
select what the store holds (``select.change_selection``, resolving requirements as ``venvfs add``
does), mount it (``daemon.mount``: through the per-user mount service where it can, with the
automount hooks), and last install what the store lacks with uv (pip without uv) into the mounted
venv and store it synchronously (``ingest_mounted``, what ``venvfs commit`` runs), so that the
command returns with everything in the store. Where FUSE cannot be used, the mount falls back to
real files as ``venvfs mount`` does, and what was installed is adopted instead.

Nothing is left half made: a failure or an interrupt (Ctrl-C) unmounts what was mounted, forgets
the registry entry, and removes what was made (the directory, or only its contents when it was an
empty directory before). Objects already stored stay: they are whole, and ``store gc`` frees them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from venvfs.errors import NoMatchingDistribution, UsageError, VenvError, VenvfsError
from venvfs.mount import daemon
from venvfs.store.store import Store, keeping_records
from venvfs.venv.venv import InterpreterInfo, Venv

log = logging.getLogger(__name__)

Say = Callable[[str], None]


@dataclass
class CreateReport:
    venv: str
    python: str = ""  # the venv interpreter's version
    made_with: str = ""  # "uv" or "venv"
    mount: str = ""  # "fuse" or "materialized" (daemon.MountResult.how)
    message: str = ""  # the mount's own line
    selected: list[str] = field(default_factory=list)  # store keys selected from the store
    installed: list[str] = field(default_factory=list)  # store keys installed by uv/pip, then stored
    installer: str | None = None  # "uv" or "pip" when something was installed
    not_copied: dict[str, str] = field(default_factory=dict)  # --like: key or dist-info -> why
    left_in_venv: dict[str, str] = field(default_factory=dict)  # installed, not stored: dist-info -> why

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Made:
    """What this create made, to be taken back if it fails."""

    path: Path
    remove: Path | None = None  # the topmost directory this create made
    empty_before: bool = False  # path was an empty directory: only its contents go
    venv_id: str | None = None
    mounted: bool = False


def find_uv() -> str | None:
    """uv on PATH: the one the user would run."""
    return shutil.which("uv")


def create(path: Path, store: Store, *, specs: Sequence[str] = (), like: Path | None = None,
           python: str | None = None, installer_options: Sequence[str] = (), install: bool = True,
           hooks: bool = True, say: Say | None = None) -> CreateReport:
    """Make the venv ``path`` with ``specs`` (requirements, store keys or wheel files) or the
    selection of the venvfs venv ``like``, mounted; see the module docstring. ``install=False``
    refuses what the store lacks (exit 8) instead of installing it."""
    say = say or (lambda _line: None)
    specs = list(specs)
    if like is not None and specs:
        raise UsageError("--like takes no packages: the venv gets what the other one selects")
    for spec in specs:
        _check_spec(spec)
    like_venv, like_keys, like_interp = _like(like) if like is not None else (None, [], None)
    if like_venv is not None and python is None:
        python = os.path.realpath(like_venv.python)  # the same interpreter the other venv runs on
    made = _claim(path)
    report = CreateReport(venv=str(made.path))
    # One parse per record for the whole command: the selection reads each several times (--like's
    # check, the add's resolution and placeability), ~2 ms a record.
    with _undo_on_failure(made, store), keeping_records(store):
        uv = find_uv()
        say(f"making {made.path} with {'uv venv' if uv else 'python -m venv'}")
        _make_venv(made.path, python, uv)
        report.made_with = "uv" if uv else "venv"
        venv = Venv.open(made.path)
        _manage(venv, store, made, hooks)
        interp = venv.read_state().interpreter
        assert interp is not None
        report.python = interp.version
        if like_interp is not None and (like_interp.cache_tag, like_interp.platform) != (interp.cache_tag,
                                                                                          interp.platform):
            raise NoMatchingDistribution(
                f"--like {like}: its builds are for Python {like_interp.version} ({like_interp.cache_tag}, "
                f"{like_interp.platform}), and {made.path} runs Python {interp.version} ({interp.cache_tag}, "
                f"{interp.platform}); leave out --python to use its interpreter")
        fuse = daemon.fuse_problem() is None
        if fuse:
            _to_mounted(venv, store)
        missing: list[tuple[str, str]] = []
        say("selecting from the store")
        if like_venv is not None:
            wanted, report.not_copied = _like_selection(store, interp, like_keys)
            _select(venv, store, wanted, dependencies=False)
        else:
            try:
                # The usual case, everything stored: resolved once, by the add itself.
                _select(venv, store, specs, dependencies=True)
            except NoMatchingDistribution:
                # Refused before it changed anything: now spec by spec, to know what to install.
                wanted, missing = _split(store, interp, specs)
                if missing and not install:
                    raise NoMatchingDistribution("not in the store (and --no-install was given): "
                                                 + "; ".join(why for _, why in missing)) from None
                _select(venv, store, wanted, dependencies=True)
        report.selected = list(venv.read_state().selection)
        say("mounting" if fuse else "placing the files (no FUSE here)")
        result = daemon.mount(made.path, store, hooks=hooks)
        made.mounted = result.how == "fuse"
        report.mount, report.message = result.how, result.message
        if missing:
            report.installer = _install(venv, missing, installer_options, say)
            say(f"storing what {report.installer} installed")
            report.left_in_venv = _store_installed(venv, store, mounted=made.mounted)
            selection = venv.read_state().selection
            report.installed = [k for k in selection if k not in report.selected]
            report.selected = [k for k in report.selected if k in selection]
    return report


# -- checking the arguments, before anything is made --------------------------------------------------

def _check_spec(spec: str) -> None:
    if spec.endswith(".whl"):
        if not Path(spec).is_file():
            raise UsageError(f"{spec}: no such wheel file")
        return
    from packaging.requirements import InvalidRequirement, Requirement

    from venvfs.venv.select import looks_like_key

    if looks_like_key(spec):
        return
    try:
        Requirement(spec)
    except InvalidRequirement as e:
        first = str(e).splitlines()[0] if str(e) else "invalid"
        raise UsageError(f"{spec!r} is neither a requirement, a store key nor a wheel file ({first})") from None


def _like(path: Path) -> tuple[Venv, list[str], InterpreterInfo | None]:
    try:
        venv = Venv.open(path)
        state = venv.read_state()
    except VenvError as e:
        raise VenvError(f"--like {path}: not a venvfs venv ({e})") from None
    return venv, list(state.selection), state.interpreter


def _claim(path: Path) -> _Made:
    """Refuse a ``path`` that holds anything; remember what this create makes. An empty directory
    is used, as ``uv venv`` and ``python -m venv`` use one (``mktemp -d``, a mount point): only what
    is made inside it goes again on failure."""
    made = _Made(Path(os.path.abspath(path)))
    if os.path.lexists(made.path):
        if (made.path / "pyvenv.cfg").exists():
            raise UsageError(f"{made.path} is already a venv: `venvfs mount {path}` and `venvfs add {path} PKG` "
                             "use it as it is")
        if made.path.is_symlink() or not made.path.is_dir():
            raise UsageError(f"{made.path} exists and is not a directory")
        try:
            if any(os.scandir(made.path)):
                raise UsageError(f"{made.path} exists and is not a venv (a directory that is not empty)")
        except OSError as e:
            raise UsageError(f"{made.path}: cannot read it ({e.strerror})") from None
        made.empty_before = True
        return made
    top = made.path
    while not os.path.lexists(top.parent) and top.parent != top:
        top = top.parent
    try:
        os.makedirs(made.path)
    except FileExistsError:
        raise UsageError(f"{made.path} appeared while venvfs create was starting") from None
    made.remove = top
    return made


# -- making, selecting, installing ----------------------------------------------------------------------

def _make_venv(path: Path, python: str | None, uv: str | None) -> None:
    from venvfs.venv import skeleton

    if uv is not None and python is not None and skeleton.make(path, python, uv):
        return  # what uv made for this interpreter before, with this venv's path (skeleton.py)
    if uv is not None:
        argv = [uv, "venv", "-q", "--allow-existing", *(["--python", python] if python else []), str(path)]
    else:
        argv = [_python_for_venv(python), "-m", "venv", str(path)]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tool = "uv venv" if uv else "python -m venv"
        raise UsageError(f"{tool} failed{' for --python ' + python if python else ''}: {_one_line(proc.stderr)}")


def _python_for_venv(python: str | None) -> str:
    """What ``python -m venv`` runs under: as uv reads ``--python``, a path, a command, or a version
    (``3.12`` is ``python3.12`` on PATH); by default ``python3`` on PATH, as uv takes it."""
    if python is None:
        return shutil.which("python3") or sys.executable
    if os.sep in python:
        if not os.access(python, os.X_OK):
            raise UsageError(f"--python {python}: no such interpreter")
        return python
    name = f"python{python}" if python[:1].isdigit() else python
    found = shutil.which(name)
    if found is None:
        raise UsageError(f"--python {python}: no {name} on PATH (install uv to let it find or fetch one)")
    return found


def _manage(venv: Venv, store: Store, made: _Made, hooks: bool) -> None:
    from venvfs.venv.adopt import adopt

    try:
        adopt(venv, store, bytecode="now", install_hooks=hooks)
    finally:
        with contextlib.suppress(VenvfsError, OSError):
            made.venv_id = venv.read_state().id


def _to_mounted(venv: Venv, store: Store) -> None:
    from venvfs.venv import layout

    with venv.locked(wait=True):
        state = venv.read_state()
        if state.layout == "materialized":
            layout.to_mounted(venv, store, state)


def _select(venv: Venv, store: Store, specs: list[str], *, dependencies: bool) -> None:
    from venvfs.venv.select import change_selection

    if specs:
        change_selection(venv, store, add=specs, dependencies=dependencies)


def _like_selection(store: Store, interp: InterpreterInfo, keys: list[str]) -> tuple[list[str], dict[str, str]]:
    """The other venv's selection, as keys; builds no other venv can share (adopted with files
    edited or missing) are left out and said."""
    from venvfs.venv.select import tag_rank

    wanted: list[str] = []
    skipped: dict[str, str] = {}
    for key in keys:
        record = store.get_dist(key)
        if not record.is_complete:
            skipped[key] = "an incomplete adopted build (its files were edited or missing): not shared"
        elif tag_rank(record, interp) is None:
            skipped[key] = f"built for {', '.join(record.tags)}"
        else:
            wanted.append(key)
    return wanted, skipped


def _split(store: Store, interp: InterpreterInfo, specs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The specs the store can serve with all they require, and the rest with why (for the
    installer). Wheel files go into the store first, as ``venvfs add`` stores them."""
    from packaging.requirements import Requirement

    from venvfs.venv.select import by_key, resolve, with_dependencies

    served: list[str] = []
    missing: list[tuple[str, str]] = []
    for spec in specs:
        if spec.endswith(".whl"):
            served.append(spec)
            continue
        try:
            record = by_key(store, interp, spec)
            extras: set[str] = set()
            if record is None:
                extras = set(Requirement(spec).extras)
                record = resolve(store, interp, spec)
            with_dependencies(store, interp, [(record, extras)], [])
        except NoMatchingDistribution as e:
            missing.append((spec, str(e)))
            continue
        served.append(spec)
    return served, missing


def _install(venv: Venv, missing: list[tuple[str, str]], options: Sequence[str], say: Say) -> str:
    """Install the ``missing`` specs into the venv with uv (pip without it); the installer's name."""
    specs = [spec for spec, _ in missing]
    uv = find_uv()
    env = dict(os.environ)
    if uv is not None:
        tool = "uv"
        # No link can cross into a FUSE mount: uv would warn and copy anyway.
        env["UV_LINK_MODE"] = "copy"
        argv = [uv, "pip", "install", "-q", "--python", str(venv.python), *options, *specs]
    else:
        tool = "pip"
        argv = [str(venv.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *options, *specs]
    say(f"installing with {tool} what the store lacks: {', '.join(specs)}")
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        said = _one_line(proc.stderr or proc.stdout)
        raise NoMatchingDistribution(f"not in the store, and {tool} could not install it either: "
                                     f"{'; '.join(why for _, why in missing)}; {tool}: {said}")
    return tool


def _store_installed(venv: Venv, store: Store, *, mounted: bool) -> dict[str, str]:
    """What was just installed, into the store and the selection; returns what stayed the venv's own."""
    if mounted:
        from venvfs.mount.ingest import ingest_mounted

        return ingest_mounted(venv, store).skipped
    from venvfs.venv.adopt import adopt

    return adopt(venv, store, bytecode="now").skipped


_TREE = "\u00d7\u2570\u2500\u25b6\u2502\u251c "


def _one_line(text: str) -> str:
    """An installer's multi-line error as one line: its lines joined, decoration dropped."""
    # uv draws its error as a tree: the marks go, the words stay.
    lines = [line.strip().lstrip(_TREE).strip() for line in text.splitlines()]
    joined = " ".join(line for line in lines if line)
    return (joined[:400] + "…") if len(joined) > 400 else joined or "no output"


# -- undoing ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _undo_on_failure(made: _Made, store: Store) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with _no_interrupts():
            _undo(made, store)
        raise


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """A second Ctrl-C during the clean-up would leave it half done: it waits (main thread only:
    signal handlers belong to it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _undo(made: _Made, store: Store) -> None:
    from venvfs.venv.mountinfo import venvfs_mounts_below

    try:
        daemon.umount(made.path)
    except (VenvfsError, OSError) as e:
        log.warning("cleaning up %s: %s", made.path, e)
    if made.venv_id is not None:
        store.registry_path(made.venv_id).unlink(missing_ok=True)
    still = venvfs_mounts_below(made.path)
    if still:
        # Removing the tree through a live mount would walk into it: leave it, and say so.
        log.warning("cleaning up %s: %s is still mounted; remove the directory after `venvfs umount`",
                    made.path, still[0])
        return
    if made.remove is not None:
        shutil.rmtree(made.remove, ignore_errors=True)
    elif made.empty_before:
        for child in list(os.scandir(made.path)):
            if child.is_dir(follow_symlinks=False):
                shutil.rmtree(child.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(child.path)


__all__ = ["CreateReport", "create", "find_uv"]
