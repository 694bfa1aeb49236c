"""Progress for long work (adopting a torch venv takes seconds): a single updating line on a terminal;
elsewhere (a pipe, a CI log) one plain line every ``log_interval()`` seconds once the work has taken
that long, so a long silent command is never mistaken for a hung one and short ones stay quiet."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

INTERVAL_ENV = "VENVFS_PROGRESS_INTERVAL"


def log_interval() -> float:
    """Seconds between plain progress lines; read per command, as a command may run in a long-lived
    fork of the mount service (``cli/thin.py``) whose import-time environment is not the caller's."""
    return float(os.environ.get(INTERVAL_ENV, "10"))


class Progress:
    """Counts units of work (files or bytes) and redraws one status line at most 10 times a second."""

    silenced = False  # -q on the command line: no progress line even on a terminal

    def __init__(self, label: str, total: int = 0, *, unit: str = "files", stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        tty = self.stream.isatty()
        self.enabled = (tty and not Progress.silenced) if enabled is None else enabled
        # Plain lines only where nobody asked for silence: enabled=False is a caller's choice.
        self._lines = enabled is None and not tty and not Progress.silenced
        self._interval = log_interval() if self._lines else 0.0  # per command; not per file (an environ lookup)
        self._start = self._logged = time.monotonic()
        self._last = 0.0

    def advance(self, n: int = 1, *, note: str = "") -> None:
        self.done += n
        if not self.enabled:
            if self._lines:
                now = time.monotonic()
                if now - self._logged >= self._interval:
                    self._logged = now
                    amount = _fmt(self.done, self.unit) + (f" of {_fmt(self.total, self.unit)}" if self.total else "")
                    self.stream.write(f"{self.label}: {amount} after {now - self._start:.0f} s\n")
                    self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last < 0.1 and self.done < self.total:
            return
        self._last = now
        amount = _fmt(self.done, self.unit) + (f"/{_fmt(self.total, self.unit)}" if self.total else "")
        self.stream.write(f"\r\x1b[K{self.label}: {amount} {note[:60]}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _fmt(n: int, unit: str) -> str:
    if unit == "bytes":
        return human_bytes(n)
    return f"{n} {unit}" if unit else str(n)


def human_bytes(n: float) -> str:
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or suffix == "GiB":
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1024
    return f"{n:.1f} TiB"
