"""``Activity``: what the automatic ingest needs to know of the requests, at the cost of a timestamp.

In the kernel's "no open" mode no request says that a file was closed, so an install's end is seen
as a quiet period after a change of a top-level ``*.dist-info`` (installers write RECORD last).
"""

from __future__ import annotations

import threading
import time


class Activity:
    def __init__(self) -> None:
        self.last = 0.0  # time.monotonic() of the last change through the mount
        # Set on any change of a top-level dist-info (an install's RECORD, an uninstall); the
        # ingest scheduler's thread waits on it.
        self.dist_info_changed = threading.Event()

    def touch(self) -> None:
        # A float store: atomic under the GIL, no lock on the write path.
        self.last = time.monotonic()

    def names(self, parent_is_root: bool, parent_name: str, name: str) -> None:
        """A name changed in a directory: note whether that is part of a dist-info."""
        self.last = time.monotonic()
        if (parent_is_root and name.endswith(".dist-info")) or parent_name.endswith(".dist-info"):
            # parent_name is only given for a directory directly below the root.
            self.dist_info_changed.set()
