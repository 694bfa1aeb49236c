"""A virtual environment on disk: its layout, its interpreter, and venvfs's state inside it.

venvfs keeps its per-venv state in ``VENV/.venvfs/``::

    state.json    which store, which distributions are selected, how site-packages is laid out; the
                  venv's id in the store's registry, and a checksum of the rest
    upper/        the upper layer of a mounted site-packages (a plain directory, readable unmounted)
    lock          held by every venvfs command that changes this venv
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import packaging

from venvfs.errors import StateDamaged, VenvError
from venvfs.fsutil import atomic_write_json, flock
from venvfs.store.store import Store

STATE_DIR = ".venvfs"
STATE_FORMAT = 1

Layout = Literal["materialized", "mounted"]

# Runs under the venv's own interpreter with only the stdlib and venvfs's own packaging, which needs
# the Python its Requires-Python names (argv[2]): an older one must say so before importing it. The
# first lines therefore stay valid Python 2.7.
_PROBE = """
import json, sys, sysconfig
if sys.version_info[:2] < tuple(int(p) for p in sys.argv[2].split(".")):
    print(json.dumps({"too_old": "%d.%d.%d" % sys.version_info[:3]}))
    sys.exit(0)
sys.path.insert(0, sys.argv[1])
from packaging import markers, tags
print(json.dumps({
    "markers": markers.default_environment(),
    "version": "%d.%d.%d" % sys.version_info[:3],
    "cache_tag": sys.implementation.cache_tag,
    "magic": __import__("importlib.util").util.MAGIC_NUMBER.hex(),
    "tags": [str(t) for t in tags.sys_tags()],
    "platform": sysconfig.get_platform(),
    "purelib": sysconfig.get_path("purelib"),
}))
"""


@dataclass(frozen=True)
class InterpreterInfo:
    version: str
    cache_tag: str
    magic: str
    tags: tuple[str, ...]  # most preferred first
    platform: str
    markers: dict[str, str] = field(default_factory=dict)  # PEP 508 environment, for requirement markers

    @property
    def python_version(self) -> tuple[int, int]:
        major, minor = self.version.split(".")[:2]
        return int(major), int(minor)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies each of the ~900 tags, 3 ms a state write.
        return {"version": self.version, "cache_tag": self.cache_tag, "magic": self.magic, "tags": list(self.tags),
                "platform": self.platform, "markers": dict(self.markers)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InterpreterInfo:
        return cls(
            version=data["version"], cache_tag=data["cache_tag"], magic=data["magic"],
            tags=tuple(data["tags"]), platform=data["platform"], markers=dict(data.get("markers") or {}),
        )


def state_checksum(data: dict[str, Any]) -> str:
    """sha256 of a state's canonical JSON without its checksum: anything but venvfs that writes the file
    (a wheel's data file through pip, an editor) cannot keep it matching by accident."""
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def new_venv_id() -> str:
    import uuid

    return uuid.uuid4().hex


# The states this process read, by file, with the file's identity. A command reads its venv's state a
# dozen times (create: 12 reads, each parsing ~30 kB and checking its checksum, ~0.25 ms). venvfs
# replaces the file at every write (a new inode); anything that writes it in place changes its size or
# its times, and a state read again after that is parsed and checked again.
_READ_STATES: dict[str, tuple[tuple[int, int, int, int, int], VenvState]] = {}
_READ_STATES_MAX = 64


@dataclass
class VenvState:
    store: str
    selection: list[str] = field(default_factory=list)  # dist keys, in install order
    layout: Layout = "materialized"
    link_mode: str | None = None  # the link mode last used to materialize
    interpreter: InterpreterInfo | None = None
    hooks: bool = True  # install activation/interpreter hooks (issue: automount)
    id: str | None = None  # names the venv in the store's registry; None in states older than ids

    def to_json(self) -> dict[str, Any]:
        data = {
            "format": STATE_FORMAT,
            "id": self.id,
            "store": self.store,
            "selection": self.selection,
            "layout": self.layout,
            "link_mode": self.link_mode,
            "interpreter": self.interpreter.to_json() if self.interpreter else None,
            "hooks": self.hooks,
        }
        data["checksum"] = state_checksum(data)
        return data

    def registry_copy(self) -> dict[str, Any]:
        """The state as the store's registry keeps it: without the interpreter's tags and markers
        (a probe finds them again), which are most of its size: one entry per venv must stay small."""
        interp = self.interpreter
        slim = dataclasses.replace(self, interpreter=dataclasses.replace(interp, tags=(), markers={})
                                   if interp is not None else None)
        return slim.to_json()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VenvState:
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported state format {data.get('format')!r}")
        # A state written before ids has neither field; one with an id and no checksum was edited.
        if ("checksum" in data or "id" in data) and data.get("checksum") != state_checksum(data):
            raise ValueError("its checksum does not match: something other than venvfs changed it")
        interp = data.get("interpreter")
        return cls(
            store=data["store"],
            selection=list(data["selection"]),
            layout=data["layout"],
            link_mode=data.get("link_mode"),
            interpreter=InterpreterInfo.from_json(interp) if interp else None,
            hooks=bool(data.get("hooks", True)),
            id=data.get("id"),
        )


@functools.lru_cache(maxsize=1)
def _min_probe_python() -> str:
    """The oldest Python the probe runs on: what venvfs's packaging declares (packaging 26 needs 3.10)."""
    import re

    # Its own METADATA first, beside the package: importlib.metadata costs ~40 ms to import and search.
    meta = Path(packaging.__file__).parent.parent / f"packaging-{packaging.__version__}.dist-info" / "METADATA"
    try:
        head = meta.read_text(errors="replace").partition("\n\n")[0]
        requires = next((line.partition(":")[2] for line in head.splitlines()
                         if line.lower().startswith("requires-python:")), "")
    except OSError:
        from importlib import metadata

        requires = ""
        with contextlib.suppress(metadata.PackageNotFoundError, TypeError):
            requires = metadata.metadata("packaging")["Requires-Python"] or ""
    found = re.search(r">=\s*(\d+\.\d+)", requires)
    return found.group(1) if found else "3.8"


def state_problem(err: BaseException) -> str:
    """Why a state file could not be used, in a few words."""
    if isinstance(err, json.JSONDecodeError):
        return "invalid JSON"
    if isinstance(err, KeyError):
        return f"no {err.args[0]!r} field"
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err)


class Venv:
    """A venv made by ``python -m venv``, virtualenv or uv (anything with a ``pyvenv.cfg``)."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    @classmethod
    def open(cls, path: Path) -> Venv:
        venv = cls(path)
        if not (venv.root / "pyvenv.cfg").is_file():
            raise VenvError(f"{venv.root} is not a virtual environment (no pyvenv.cfg)")
        venv.site_packages  # noqa: B018 - fail early on an odd layout
        return venv

    @classmethod
    def default_path(cls) -> Path:
        env = os.environ.get("VIRTUAL_ENV")
        return Path(env) if env else Path(".venv")

    @property
    def config(self) -> dict[str, str]:
        cfg: dict[str, str] = {}
        for line in (self.root / "pyvenv.cfg").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                cfg[key.strip()] = value.strip()
        return cfg

    @property
    def bin_dir(self) -> Path:
        return self.root / ("Scripts" if sys.platform == "win32" else "bin")

    @property
    def python(self) -> Path:
        return self.bin_dir / "python"

    @functools.cached_property
    def site_packages(self) -> Path:
        # Cached: adopt asks for it once per file. Listed from the parent, never stat'ed: a dead FUSE
        # mount on site-packages answers ENOTCONN.
        candidates = sorted(p / "site-packages" for p in self.root.glob("lib/python*")
                            if p.is_dir() and "site-packages" in os.listdir(p))
        if len(candidates) != 1:
            # Without a python version in the name we cannot tell which one the interpreter uses.
            found = ", ".join(str(c) for c in candidates) or "none"
            raise VenvError(f"{self.root}: expected one lib/pythonX.Y/site-packages, found {found}")
        return candidates[0]

    # -- venvfs state ------------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def upper_dir(self) -> Path:
        return self.state_dir / "upper"

    @property
    def state_path(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def is_managed(self) -> bool:
        return self.state_path.exists()

    def read_state(self) -> VenvState:
        """The venv's state; ``StateDamaged`` when the file is not one venvfs wrote (see
        ``venvfs.venv.registry`` for the cross-check with the store and the repair)."""
        path = self.state_path
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                known = _READ_STATES.get(str(path))
                if known is not None and known[0] == ident:
                    return dataclasses.replace(known[1], selection=list(known[1].selection))
                state = VenvState.from_json(json.load(f))
        except FileNotFoundError:
            raise VenvError(f"{self.root} is not managed by venvfs (run `venvfs adopt {self.root}`)") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StateDamaged(f"{path} is damaged ({state_problem(e)}); "
                               f"`venvfs mount {self.root}` restores it from the store's registry") from e
        if len(_READ_STATES) >= _READ_STATES_MAX:
            _READ_STATES.clear()
        _READ_STATES[str(path)] = (ident, dataclasses.replace(state, selection=list(state.selection)))
        return state

    def write_state(self, state: VenvState) -> None:
        """Write the state, and first its copy in the store's registry: the copy is what gc keeps alive
        while the venv cannot be read, and what a damaged state is restored from."""
        if state.id is None:
            state.id = new_venv_id()
        data = state.to_json()
        store = Store(Path(state.store))
        if (store.root / "venvs").is_dir():
            # The copy of an empty selection keeps nothing alive in gc, and the state it would restore
            # is written durably next: not worth two journal commits (a new venv's adopt and mount
            # write it twice). What a crash can leave is the older copy (keeping more alive) or none.
            store.register_venv(state.id, self.root, state.registry_copy(), checksum=data["checksum"],
                                durable=bool(state.selection))
        # Without indentation: the interpreter's ~900 tags made the pretty-printed file 33 kB, which
        # json writes with its Python encoder (~0.3 ms a write) where the C one serves compact output.
        atomic_write_json(self.state_path, data, indent=None)

    def locked(self, *, wait: bool = False) -> contextlib.AbstractContextManager[None]:
        return flock(self.state_dir / "lock", exclusive=True, wait=wait, what=f"venv {self.root}")

    # -- interpreter -------------------------------------------------------------------------------

    def probe_interpreter(self) -> InterpreterInfo:
        """Ask the venv's own interpreter for its tags and bytecode cache tag (one subprocess, unless
        the answer of the same binary on this host is cached: ``venvfs.venv.probecache``)."""
        from venvfs.venv import probecache

        packaging_parent = str(Path(packaging.__file__).parent.parent)
        minimum = _min_probe_python()
        key = probecache.key(self.python, self.root, f"{_PROBE}\0{minimum}\0{packaging.__version__}")
        cached = probecache.lookup(key) if key is not None else None
        if cached is not None:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                return InterpreterInfo.from_json(cached)
        try:
            proc = subprocess.run(
                [str(self.python), "-I", "-S", "-c", _PROBE, packaging_parent, minimum],
                capture_output=True, text=True, timeout=60,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise VenvError(f"{self.root}: cannot run its interpreter {self.python} ({e})") from e
        try:
            data = json.loads(proc.stdout) if proc.returncode == 0 else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise VenvError(f"{self.root}: its interpreter {self.python} could not report its tags "
                            f"(exit {proc.returncode}: {lines[-1] if lines else 'no output'})")
        if "too_old" in data:
            raise VenvError(f"venvfs needs Python >= {minimum} in the venv (found {data['too_old']} in {self.root})")
        info = InterpreterInfo.from_json(data)
        if key is not None:
            probecache.remember(key, info.to_json())
        return info

    def dist_info_dirs(self) -> Iterator[Path]:
        sp = self.site_packages
        yield from sorted(p for p in sp.glob("*.dist-info") if p.is_dir())

