"""Putting a damaged store object right from a copy known to be good (``venvfs store verify --repair``
finds the copies, in venvs: ``venvfs.venv.repair``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from venvfs.store.store import Store, check_object, replace_object

_CHUNK = 1 << 20


def object_problem(store: Store, digest: str, executable: bool) -> str | None:
    """What is wrong with one stored object (as ``verify`` says it), None if nothing."""
    return check_object(store.root, store.local_object_path(digest, executable), digest)


def repair_object(store: Store, digest: str, executable: bool, source: Path) -> bool:
    """Replace the damaged object ``digest`` by the content of ``source`` if that content has this
    digest; False (nothing changed) if it has not. ``source`` may be the object itself when only
    its mode or its chunk list is wrong."""
    final = store.local_object_path(digest, executable)
    problem = check_object(store.root, final, digest)
    if problem is None:
        return True
    if problem == "chunk list damaged":
        replace_object(store, None, digest, final.stat().st_size, executable, problem)
        return True
    with contextlib.suppress(OSError):
        if os.path.samestat(os.stat(source), os.stat(final)) and problem != "writable":
            return False  # the damaged inode itself (a hardlink of it) is no source
    f, tmp = store.tmpfile()
    try:
        h = hashlib.sha256()
        size = 0
        with f, open(source, "rb") as src:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                f.write(chunk)
                size += len(chunk)
        if h.hexdigest() != digest:
            return False
        final.parent.mkdir(exist_ok=True)
        replace_object(store, tmp, digest, size, executable, problem)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
