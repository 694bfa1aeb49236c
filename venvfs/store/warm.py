"""What the mount service learns about its store while idle, for the commands it forks.

A command that selects distributions (``venvfs create``, ``add``, ``uv``) reads the record of each one
(its parse checks the key against the whole manifest: ~30 ms for the scientific set) and looks for
the bytecode of every module (a stat each: ~16 ms). Both are facts about content the store never
rewrites, so a process that outlives commands can learn them once: the service does, between
requests, for the selections of the venvs the store's registry names, and each command it forks
starts with what it knows (``store.WARM_RECORDS``, ``bytecode.WARM_COMPILED``).

Why the facts stay true:
- A record file, once published, is never changed; gc unlinks it. Each record is kept with the
  identity of the file it was parsed from (device, inode, size, mtime), which ``get_dist`` checks with
  one stat at every use, as it does for the records one command keeps.
- A ``.pyc`` exists until gc removes it, and gc changes the store's epoch (``bump_gc_epoch``), under
  its exclusive lock, before it removes any. The service reads the epoch and stats the files
  under the store's shared lock, so no gc runs in between; a command uses the facts only while the
  epoch it reads under its own shared lock is the one they were learnt at. Stores with lower layers
  get none: others collect those.

Work comes in steps of one record (a few ms for the largest), so a request waits at most that long
behind it. The service holds what it learns for as long as it runs: ``MAX_FILES`` caps it (about
0.4 kB a file: ~40 MB at the cap), beyond which commands parse as they did.
"""

from __future__ import annotations

import os
from pathlib import Path

from venvfs.errors import Busy, StoreError
from venvfs.fsutil import flock
from venvfs.store import bytecode
from venvfs.store.records import DistRecord
from venvfs.store.store import WARM_RECORDS, Store, gc_epoch, registry_entry

MAX_FILES = 100_000


class Warmer:
    """The service's learning, a step at a time: ``refresh`` after each request, ``step`` while idle
    and ``pending``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._store: Store | None = None
        self._registry_mtime: int | None = None
        self._todo: list[tuple[str, str]] = []  # (record key, cache tag), taken from the end
        self._files = 0
        # Learnt, with every module compiled, at the epoch ``_whole_epoch``: not planned again, since
        # each command changes the registry and a plan of everything would compete with it for the CPU.
        self._whole: set[tuple[str, str]] = set()
        self._whole_epoch = ""
        self._stopped = False

    def pending(self) -> bool:
        return bool(self._todo)

    def stop(self) -> None:
        """Learn nothing more (the service calls it when learning failed: it is only ever a shortcut)."""
        self._todo.clear()
        self._stopped = True

    def refresh(self) -> None:
        """Plan again when the registry changed (a venv registered, or its selection did: each is a
        rename into ``venvs/``, which changes the directory's mtime)."""
        if self._stopped:
            return
        try:
            mtime = os.stat(self.root / "venvs").st_mtime_ns
        except OSError:
            return
        if mtime == self._registry_mtime:
            return
        self._registry_mtime = mtime
        store = self._open()
        if store is None:
            return
        wanted: dict[tuple[str, str], None] = {}
        for file in sorted((self.root / "venvs").glob("*.json")):
            entry = registry_entry(store, file.stem)
            state = entry.state if entry is not None else None
            if not state:
                continue
            interp = state.get("interpreter")
            tag = interp.get("cache_tag", "") if isinstance(interp, dict) else ""
            for key in state.get("selection") or ():
                if isinstance(key, str) and isinstance(tag, str):
                    wanted[(key, tag)] = None
        epoch = gc_epoch(store)
        if epoch != self._whole_epoch:
            self._whole, self._whole_epoch = set(), epoch
        self._todo = [job for job in reversed(wanted) if job not in self._whole]

    def step(self) -> None:
        """Learn one record and which of its modules are compiled."""
        key, tag = self._todo.pop()
        store = self._open()
        if store is None or self._files >= MAX_FILES:
            self._todo.clear()
            return
        known = WARM_RECORDS.setdefault(store.root, {})
        store._records = known
        try:
            fresh = key not in known
            record = store.get_dist(key)
        except StoreError:
            return  # gone, or unreadable: the command that needs it says so
        if fresh:
            self._files += len(record.files)
            record.is_normalized  # noqa: B018 - a cached property every selection asks for (~0.3 ms a record)
        if tag and not store.lowers and self._compiled(store, record, tag):
            self._whole.add((key, tag))

    def _compiled(self, store: Store, record: DistRecord, tag: str) -> bool:
        """Note which modules of ``record`` are compiled for ``tag``; whether all of them are."""
        try:
            with flock(store.root / "lock", exclusive=False, wait=False):
                epoch = gc_epoch(store)
                return bytecode.learn_compiled(store, record, tag, epoch) and epoch == self._whole_epoch
        except Busy:
            return False  # gc runs: the next request's commands look for themselves

    def _open(self) -> Store | None:
        if self._store is None:
            try:
                self._store = Store.open(self.root, create=False)
            except StoreError:
                return None
        return self._store
