"""Limits on what a wheel may unpack to, checked before anything of it is read or stored.

A zip member's declared size is what its reader yields at most (``zipfile`` stops there, and a
member that inflates to more fails its CRC), so the central directory alone bounds the work and the
disk an ingest can cost: the limits are checked on it, before a byte is inflated.

Defaults, from the 985 real wheels of the development machine's package mirror (2026-12):

- unpacked size: 8 GiB per wheel. The largest seen unpack to 1.2 GiB (tensorflow-cpu, torch, cudnn).
- compression ratio: 100:1, for a member that unpacks to more than 4 MiB and for the wheel as a whole
  once it unpacks to more than 4 MiB. Members over 4 MiB reached 36:1 at most, whole wheels 18:1;
  smaller members reach deflate's ceiling of about 1000:1 (onnx's test tensors), which is why they
  are exempt: alone they cannot be a bomb, and together they count towards the wheel's ratio.
- names: 223 bytes per path component. NAME_MAX is 255 on every Linux filesystem (and on APFS), and
  venvfs derives longer names from a member's: its temporary name while placed (``.NAME.venvfs.tmp``,
  +12), its bytecode (``NAME.cpython-313.pyc`` for ``NAME.py``, +13, and that placed under a
  temporary name, +25) and whiteouts (``.wh.NAME``, +4); 32 bytes leave room for longer cache tags.
- paths: 3072 bytes below the scheme's root. PATH_MAX is 4096 with its NUL; the rest is for the
  venv's own prefix (``/home/you/project/.venv/lib/python3.13/site-packages/``, or the upper layer's
  ``.venvfs/upper/``) and the ``__pycache__/`` and temporary names derived from it. A venv whose
  prefix is longer than that is caught before its files are placed (``materialize.check_placeable``).

The size and ratio limits can be raised per command (``--max-unpacked-size``, ``--max-ratio``) or
for a shell (``VENVFS_MAX_UNPACKED_SIZE``, ``VENVFS_MAX_RATIO``); the name limits cannot: past them a
file cannot be placed in every venv.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from venvfs.errors import UsageError

NAME_MAX = 255
PATH_MAX = 4096
NAME_ROOM = 32  # bytes venvfs may add to a member's name (see the module docstring)
MAX_NAME_BYTES = NAME_MAX - NAME_ROOM
MAX_PATH_BYTES = PATH_MAX - 1024
PATH_ROOM = 64  # bytes added to a placed path: __pycache__/, a cache tag and a temporary name

DEFAULT_MAX_UNPACKED = 8 << 30
DEFAULT_MAX_RATIO = 100.0
RATIO_FLOOR = 4 << 20  # members (and wheels) unpacking to no more than this are not ratio-checked

SIZE_ENV = "VENVFS_MAX_UNPACKED_SIZE"
RATIO_ENV = "VENVFS_MAX_RATIO"

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, what: str = "size") -> int:
    """``8G``, ``512MiB``, ``1000000``: binary units, as ``du -h`` prints them."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if m is None:
        raise UsageError(f"{what}: {text!r} is no size (examples: 8G, 512M, 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_ratio(text: str, what: str = "ratio") -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?::\s*1)?\s*", text)
    if m is None or float(m.group(1)) < 1:
        raise UsageError(f"{what}: {text!r} is no compression ratio of at least 1 (examples: 100, 500:1)")
    return float(m.group(1))


@dataclass(frozen=True)
class IngestLimits:
    max_unpacked: int = DEFAULT_MAX_UNPACKED
    max_ratio: float = DEFAULT_MAX_RATIO
    max_name: int = MAX_NAME_BYTES
    max_path: int = MAX_PATH_BYTES

    @classmethod
    def from_env(cls, max_unpacked: str | None = None, max_ratio: str | None = None) -> IngestLimits:
        """The limits a command line asks for: its flags, else the environment, else the defaults."""
        size_text = max_unpacked if max_unpacked is not None else os.environ.get(SIZE_ENV)
        ratio_text = max_ratio if max_ratio is not None else os.environ.get(RATIO_ENV)
        size_what = "--max-unpacked-size" if max_unpacked is not None else SIZE_ENV
        ratio_what = "--max-ratio" if max_ratio is not None else RATIO_ENV
        return cls(
            max_unpacked=parse_size(size_text, size_what) if size_text else DEFAULT_MAX_UNPACKED,
            max_ratio=parse_ratio(ratio_text, ratio_what) if ratio_text else DEFAULT_MAX_RATIO,
        )


def name_problem(path: str, max_name: int = MAX_NAME_BYTES, max_path: int = MAX_PATH_BYTES) -> str | None:
    """Why a relative path's names are too long to be placed in every venv, or None."""
    encoded = os.fsencode(path)
    if len(encoded) > max_path:
        return f"path {path[:60]!r}... is {len(encoded)} bytes long, more than the {max_path} venvfs can place"
    for part in encoded.split(b"/"):
        if len(part) > max_name:
            shown = os.fsdecode(part[:40])
            return (f"name {shown!r}... is {len(part)} bytes long, more than the {max_name} venvfs can "
                    f"place (filesystems allow {NAME_MAX}, less the room venvfs needs for derived names)")
    return None
