"""A new venv's skeleton written from what ``uv venv`` made before, instead of running it again.

For one uv and one interpreter, ``uv venv --python PYTHON DIR`` writes the same twenty small files
every time, and DIR's absolute path is the only thing in them that depends on DIR: the activate
scripts set ``VIRTUAL_ENV`` to it, and compute the prompt when they run. Running uv costs 15 to 20 ms
(an exec, uv's discovery of the interpreter), a fifth of ``venvfs create``. So create runs it once per
key, in a directory whose name cannot be mistaken for anything else, keeps what it made in the user's
cache (``$XDG_CACHE_HOME/venvfs/skeletons/``), and writes that for later venvs with their path in
place of the directory's.

The key is what the files could depend on: uv's binary and the interpreter's (path and identity: an
upgrade in place changes them), uv's ``UV_*`` environment, and the umask (uv's files take it, and so
do these). Where the textual substitution would not give what uv writes, uv runs as before:

- a path with a character some shell quotes: uv escapes the path for each script's shell, and the
  substitution cannot; only ``[A-Za-z0-9_./+@,=-]`` is written the same way in every script;
- a skeleton whose files name the directory other than by its whole path, or hold anything but
  small files, directories and symlinks (uv's output changed in a way this module does not know);
- a cache file that is not the user's own, or that someone else could write: its activate scripts
  run in the user's shell.

The cache keeps itself small where it grows, when a new skeleton is kept (a new uv, a new Python, a
new ``UV_*`` setting): skeletons whose uv or interpreter is gone or changed can never be used again
and go, and of the rest the ``_KEEP`` most recently made stay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from venvfs.fsutil import UnsafePath, atomic_write_json, file_identity, read_own_json, safe_relpath

FORMAT = 1
_SAFE = re.compile(r"[A-Za-z0-9_./+@,=-]+")
_MAX_ENTRIES = 200
_MAX_FILE = 256 * 1024
_TOKEN = "venvfs-skeleton-"
_KEEP = 16  # skeletons kept (each ~35 kB): a uv and a few interpreters, with room for UV_* settings
_ABANDONED_S = 86_400  # a capture's work directory this old was left by a killed create


def cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("venvfs")) / "skeletons"


def make(dest: Path, python: str, uv: str) -> bool:
    """Write the skeleton ``uv venv --python python`` would make into the empty directory ``dest``;
    False (nothing written) when only uv itself can: the caller runs it."""
    if not _SAFE.fullmatch(str(dest)) or not os.path.isabs(python):
        return False
    k = _key(python, uv)
    if k is None:
        return False
    skeleton = _lookup(k) or _capture(k, python, uv)
    if skeleton is None:
        return False
    _write(skeleton, dest)
    return True


def _umask() -> int | None:
    # Read, not set and restored: os.umask would change it for every thread of the process meanwhile.
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return None


def _key(python: str, uv: str) -> dict[str, Any] | None:
    umask = _umask()
    try:
        ids = {p: file_identity(p) for p in (os.path.realpath(uv), os.path.realpath(python))}
    except OSError:
        return None
    if umask is None:
        return None
    return {"format": FORMAT, "uv": uv, "python": python, "binaries": ids, "umask": umask,
            "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("UV_")}}


def _path(k: dict[str, Any]) -> Path:
    return cache_dir() / f"{hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:24]}.json"


def _lookup(k: dict[str, Any]) -> dict[str, Any] | None:
    data = read_own_json(_path(k))
    if not isinstance(data, dict) or data.get("key") != k or not isinstance(data.get("made_at"), str):
        return None
    entries = data.get("entries")
    try:
        if not isinstance(entries, list) or not all(
                len(e) == 4 and safe_relpath(e[0]) == e[0] and e[1] in "dfl" and isinstance(e[2], int)
                and isinstance(e[3], str) for e in entries):
            return None
    except (TypeError, UnsafePath):
        return None
    return data


def _capture(k: dict[str, Any], python: str, uv: str) -> dict[str, Any] | None:
    """Run uv once where its output can be read back, and keep it."""
    parent = cache_dir()
    with contextlib.suppress(OSError):
        parent.mkdir(parents=True, exist_ok=True)
    try:
        work = tempfile.mkdtemp(dir=parent, prefix=".make-")
    except OSError:
        return None
    try:
        made_at = os.path.join(work, _TOKEN + os.urandom(8).hex())
        if not _SAFE.fullmatch(made_at):
            return None
        proc = subprocess.run([uv, "venv", "-q", "--python", python, made_at], stdin=subprocess.DEVNULL,
                              capture_output=True, check=False)
        if proc.returncode != 0:
            return None  # uv's own run, next, says why
        entries = _read(made_at)
        if entries is None:
            return None
        skeleton = {"key": k, "made_at": made_at, "entries": entries}
        with contextlib.suppress(OSError):
            atomic_write_json(_path(k), skeleton, durable=False, indent=None)
        _prune(_path(k))
        return skeleton
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prune(kept: Path) -> None:
    """Remove the skeletons no create can use again (their uv or interpreter changed or went), those
    beyond the ``_KEEP`` most recent, and capture directories a killed create left. Only the user's
    own files are touched; anything unreadable is left as it is."""
    now = time.time()
    current: list[tuple[float, Path]] = []
    with contextlib.suppress(OSError), os.scandir(kept.parent) as it:
        for entry in it:
            path = Path(entry.path)
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if st.st_uid != os.getuid():
                    continue
                if entry.name.startswith(".make-") and stat.S_ISDIR(st.st_mode):
                    if now - st.st_mtime > _ABANDONED_S:
                        shutil.rmtree(path, ignore_errors=True)
                    continue
                if not entry.name.endswith(".json") or path == kept:
                    continue
                data = read_own_json(path)
                key = data.get("key") if isinstance(data, dict) else None
                if isinstance(key, dict) and _still_there(key):
                    current.append((st.st_mtime, path))
                elif data is not None:
                    path.unlink()
    for _mtime, path in sorted(current, reverse=True)[_KEEP - 1:]:
        with contextlib.suppress(OSError):
            path.unlink()


def _still_there(key: dict[str, Any]) -> bool:
    """Whether the uv and the interpreter a skeleton was made with are still the files it names."""
    binaries = key.get("binaries")
    if not isinstance(binaries, dict) or not binaries:
        return False
    try:
        return all(file_identity(path) == ident for path, ident in binaries.items())
    except OSError:
        return False


def _read(root: str) -> list[list[Any]] | None:
    """The tree below ``root``, parents first: ``[rel, "d"|"f"|"l", mode, text or target]``; None when
    it is not what this module can write again with another path."""
    token = os.path.basename(root)
    entries: list[list[Any]] = []
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries.append([rel, "l", 0, os.readlink(path)])
            elif stat.S_ISDIR(st.st_mode):
                entries.append([rel, "d", mode, ""])
            elif stat.S_ISREG(st.st_mode) and st.st_size <= _MAX_FILE:
                with open(path, "rb") as f:
                    entries.append([rel, "f", mode, f.read().decode("utf-8", "surrogateescape")])
            else:
                return None
            if len(entries) > _MAX_ENTRIES or token in rel:
                return None
            if entries[-1][3].count(token) != entries[-1][3].count(root):
                return None  # the directory named some other way (relative, escaped): not a substitution
    return entries


def _write(skeleton: dict[str, Any], dest: Path) -> None:
    made_at = str(skeleton["made_at"])
    root = str(dest)
    for rel, kind, mode, value in skeleton["entries"]:
        path = os.path.join(root, rel)
        if kind == "d":
            os.mkdir(path, mode)
        elif kind == "l":
            os.symlink(value.replace(made_at, root), path)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
            with open(fd, "wb") as f:
                f.write(value.replace(made_at, root).encode("utf-8", "surrogateescape"))
