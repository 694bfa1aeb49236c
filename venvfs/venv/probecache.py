"""What a venv's interpreter said about itself, kept per interpreter binary in the user's cache.

``Venv.probe_interpreter`` starts the venv's Python to learn its tags, markers and cache tag (about
60 ms, the most of a fresh venv's implicit adopt at ``venvfs mount``). Every venv made from one
base interpreter answers the same (the answer holds nothing of the venv: no prefix, no path), so
the answer is kept under ``$XDG_CACHE_HOME/venvfs/interpreters/`` and reused while everything it
depends on is unchanged. The key is what could change the answer:

- the binary the venv's ``bin/python`` resolves to: its path and identity (device, inode, size,
  mtime, ctime): an upgrade in place installs a new file (a package manager renames one in, a
  rebuild writes it), and a copied venv (``--copies``) has a binary of its own; the ``libpython``
  beside it, where the build is shared, can be replaced alone, so its identity counts too; and
  the venv's ``pyvenv.cfg`` ``home``, which says where a copied binary finds its standard library;
- the host: the kernel (``platform_release`` and ``platform_version`` markers, the platform) and
  the C library's version (the manylinux tags the interpreter accepts);
- the probe itself: its code, venvfs's ``packaging`` version (which computes the tags) and the
  oldest Python the probe accepts; and the environment variables sysconfig reads under ``-I``.

A cache file is trusted only when it is the user's own and no one else can write it (a root
command with another user's ``$HOME`` must not take that user's word for its tags); anything
unreadable or mismatched is a miss, and a miss probes and writes the file again (atomically, not
durably: losing it costs one probe). An answer saying the Python is too old is never kept.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
from pathlib import Path
from typing import Any

from venvfs.fsutil import atomic_write_json, file_identity, read_own_json

FORMAT = 1
DISABLE_ENV = "VENVFS_PROBE_CACHE"  # "0": always start the interpreter
# sysconfig reads these even under -I (they are not PYTHON* variables).
_SYSCONFIG_ENV = ("_PYTHON_HOST_PLATFORM", "_PYTHON_SYSCONFIGDATA_NAME", "_PYTHON_PROJECT_BASE")


def cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("venvfs")) / "interpreters"


def key(python: Path, venv_root: Path, probe: str) -> dict[str, Any] | None:
    """What the answer of ``python`` (a venv's ``bin/python``) depends on; None when it cannot be
    told (the binary is missing: the probe's own error says so)."""
    if os.environ.get(DISABLE_ENV) == "0":
        return None
    try:
        real = os.path.realpath(python)
        binary = file_identity(real)
    except OSError:
        return None
    # A shared build's interpreter is a small binary over libpython, in the prefix's lib/.
    libs = {}
    for lib in sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(real)), "lib", "libpython3*.so*"))):
        with contextlib.suppress(OSError):
            libs[lib] = file_identity(lib)
    home = None
    with contextlib.suppress(OSError):
        for line in (venv_root / "pyvenv.cfg").read_text(errors="replace").splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip() == "home":
                home = value.strip()
    libc = None
    with contextlib.suppress(AttributeError, ValueError, OSError):
        libc = os.confstr("CS_GNU_LIBC_VERSION")
    uname = os.uname()
    return {"format": FORMAT, "python": real, "binary": binary, "libpython": libs, "home": home,
            "host": [uname.sysname, uname.release, uname.version, uname.machine], "libc": libc,
            "probe": hashlib.sha256(probe.encode()).hexdigest(),
            "env": {name: os.environ[name] for name in _SYSCONFIG_ENV if name in os.environ}}


def _path(k: dict[str, Any]) -> Path:
    return cache_dir() / f"{hashlib.sha256(os.fsencode(k['python'])).hexdigest()[:24]}.json"


def lookup(k: dict[str, Any]) -> dict[str, Any] | None:
    """The answer kept for ``k``, or None."""
    data = read_own_json(_path(k))
    if not isinstance(data, dict) or data.get("key") != k or not isinstance(data.get("answer"), dict):
        return None
    answer: dict[str, Any] = data["answer"]
    return answer


def remember(k: dict[str, Any], answer: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        atomic_write_json(_path(k), {"key": k, "answer": answer}, durable=False)
