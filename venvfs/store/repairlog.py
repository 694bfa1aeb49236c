"""The store's repair log, ``STORE/repaired``: one line "<digest> <time_ns>" per object replaced
because it was damaged. Running daemons read it to drop what they cached of those objects.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from pathlib import Path


def repaired_log(root: Path) -> Path:
    return root / "repaired"


def log_repaired(root: Path, digests: Collection[str]) -> None:
    # Appended (O_APPEND: one write per line is not interleaved with another writer's), never
    # rewritten, so a daemon reading it concurrently sees whole lines of old and new repairs.
    stamp = time.time_ns()
    data = "".join(f"{d} {stamp}\n" for d in digests).encode()
    fd = os.open(repaired_log(root), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def repaired_entries(root: Path) -> set[str]:
    """The lines of the repair log (each "<digest> <time_ns>"): a reader keeps those it has seen
    and acts on the new ones."""
    try:
        text = repaired_log(root).read_text()
    except FileNotFoundError:
        return set()
    return {line for line in text.splitlines() if line.count(" ") == 1}
