"""``DirectLoop``: the event loop pyfuse3 can run on in place of trio (``VENVFS_FUSE_LOOP=direct``).

pyfuse3 calls its loop through its module attribute ``trio``; this stand-in offers the few calls it
makes, and serves one request at a time to its end (no handler of ours ever waits for anything).
Measured (interleaved, ``scripts/perf_mount.py``): same import times, about half the daemon's CPU per
import and ~0.1 s off mount time; trio stays the default because the hook is pyfuse3's internal.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import select
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

# "direct": run pyfuse3 on DirectLoop instead of trio. Measured (interleaved, scripts/perf_mount.py): same
# import times, about half the daemon's CPU per import (163 vs 364 ms) and ~0.1 s off mount time. It
# stands in for pyfuse3's internal ``trio`` attribute, so trio stays the default until pyfuse3 offers
# that hook officially. Here, not in daemon.py: the keeper reads it too, and daemon imports the keeper.
LOOP_ENV = "VENVFS_FUSE_LOOP"


class _ClosedResourceError(Exception):
    pass


class _NoLock:
    """One reader only: the lock pyfuse3 takes around waiting for the FUSE fd guards nothing here."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Task:
    name = "venvfs-fuse"


class _Nursery:
    """Runs what is started in it one after another, at the end of the ``async with`` (pyfuse3 starts
    one worker; with ``max_tasks=1`` it never starts a second)."""

    def __init__(self) -> None:
        self._tasks: list[tuple[Callable[..., Awaitable[object]], tuple[object, ...]]] = []

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object, name: object = None) -> None:
        self._tasks.append((fn, args))

    async def __aenter__(self) -> _Nursery:
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        while exc_type is None and self._tasks:
            fn, args = self._tasks.pop(0)
            await fn(*args)


class DirectLoop:
    """The event loop pyfuse3 runs on, in place of trio: one task that blocks in ``poll`` on the FUSE
    fd and the signal wakeup pipe, and then handles the request to its end (no handler of ours ever
    waits for anything). pyfuse3 calls it as its ``trio`` module (``pyfuse3.asyncio`` uses the same
    hook). Per request: one ``poll`` that returns at once when a request is queued, against trio's
    lock, epoll registration and scheduler pass. It also spares the daemon importing trio (~0.1 s).

    Signals are queued by their handlers and dealt with between requests, never inside one.
    """

    ClosedResourceError = _ClosedResourceError
    Lock = _NoLock

    def __init__(self) -> None:
        self.lowlevel = self
        self.from_thread = self
        self._closing = False
        self._pending: list[int] = []
        self._on_signal: Callable[[int], None] = lambda signum: None
        self._poll: select.poll | None = None
        self._wake = -1

    # -- what pyfuse3 calls ------------------------------------------------------------------------

    def current_trio_token(self) -> str:
        return "venvfs"

    def current_task(self) -> _Task:
        return _Task()

    def open_nursery(self) -> _Nursery:
        return _Nursery()

    def notify_closing(self, fd: int) -> None:
        self._closing = True

    async def wait_readable(self, fd: int) -> None:
        poll = self._poll
        if poll is None:
            poll = self._poll = select.poll()
            poll.register(fd, select.POLLIN)
            poll.register(self._wake, select.POLLIN)
        while True:
            while self._pending:
                self._on_signal(self._pending.pop(0))
            if self._closing:
                raise _ClosedResourceError
            ready = False
            for rfd, _ in poll.poll():
                if rfd == fd:
                    ready = True
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake, 4096)
            if ready and not self._pending:
                return

    # -- the daemon's side --------------------------------------------------------------------------

    def run(self, pyfuse3: Any, on_signal: Callable[[int], None], ready: Callable[[str], None]) -> None:
        """Serve until ``pyfuse3.terminate()`` (a SIGTERM/SIGINT, through ``on_signal``) or an unmount."""
        self._on_signal = on_signal
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake = r
        signums = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
        old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        old = {s: signal.signal(s, lambda signum, frame: self._pending.append(signum)) for s in signums}
        try:
            ready("ok")
            coro = pyfuse3.main(min_tasks=1, max_tasks=1)
            try:
                coro.send(None)
            except StopIteration:
                pass
            else:
                coro.close()
                raise RuntimeError("a FUSE request handler waited for something; the direct loop cannot")
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            signal.set_wakeup_fd(old_wakeup)
            os.close(r)
            os.close(w)
            self._poll = None


def import_pyfuse3(direct: DirectLoop | None) -> Any:
    """pyfuse3, running on ``direct`` (when given) instead of trio, which then is not even imported:
    pyfuse3 imports trio when it loads, so a stand-in sits in ``sys.modules`` just for that."""
    if direct is None:
        import pyfuse3

        pyfuse3.trio = importlib.import_module("trio")  # type: ignore[attr-defined]
        return pyfuse3
    stand_in = "trio" not in sys.modules
    if stand_in:
        sys.modules["trio"] = direct  # type: ignore[assignment]
    try:
        import pyfuse3
    finally:
        if stand_in:
            del sys.modules["trio"]
    pyfuse3.trio = direct  # type: ignore[attr-defined]
    return pyfuse3
