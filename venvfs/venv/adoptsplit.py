"""Adopt's distributions shared out between this process and one forked child (``venvfs.venv.adopt``).

Storing a small file is mostly Python between short system calls (open, hash, chmod, link, restamp
its .pyc). Threads give that no second core: the GIL runs one of them at a time, and a first adopt
measured no faster with its thread pool than without it. A forked child is an interpreter of its
own: it adopts whole distributions while this process adopts the others, both into the same store,
which is built for concurrent writers (objects appear by link(2); a racing writer's EEXIST means
"already stored").

What the child did comes back through a pipe, pickled: its results, the objects it published (so
that a failure on either side takes back both sides' objects, see ``Store.writing``), and its
exception, which is raised here. This process always waits for the child before it goes on: the
child shares the store's flock (one open file description), which a take-back must see released.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar, cast

T = TypeVar("T")


def share_out(weights: list[int]) -> tuple[list[int], list[int]]:
    """Indices of ``weights`` in two groups of about equal sum (heaviest first, each to the lighter
    group), each in its original order."""
    groups: tuple[list[int], list[int]] = ([], [])
    sums = [0, 0]
    for i in sorted(range(len(weights)), key=lambda i: -weights[i]):
        lighter = 0 if sums[0] <= sums[1] else 1
        groups[lighter].append(i)
        sums[lighter] += weights[i]
    return sorted(groups[0]), sorted(groups[1])


class ChildResult(NamedTuple, Generic[T]):
    value: T | None
    error: BaseException | None
    state: object  # what ``child_state`` said once the child's work ended, well or not (None: lost)


def in_two(parent_work: Callable[[], T], child_work: Callable[[], T], child_state: Callable[[], object],
           merge_state: Callable[[object], None]) -> tuple[T, T]:
    """Run ``child_work`` in a forked child while this process runs ``parent_work``; both results.

    The child's ``child_state()`` reaches ``merge_state`` on every path, once the child has ended and
    before anything is raised; then this process's exception is raised, else the child's.
    """
    child: ForkedChild[T] = ForkedChild(child_work, child_state)
    try:
        mine = parent_work()
    except BaseException:
        lost = child.collect(interrupt=True)
        if lost.state is not None:
            merge_state(lost.state)
        raise
    theirs = child.collect()
    if theirs.state is not None:
        merge_state(theirs.state)
    if theirs.error is not None:
        raise theirs.error
    return mine, cast("T", theirs.value)  # no error: the child's work returned it


class ForkedChild(Generic[T]):
    """A child running ``work``; ``collect`` waits for it and returns what it sent."""

    def __init__(self, work: Callable[[], T], state: Callable[[], object]) -> None:
        read_end, write_end = os.pipe()
        # SIGINT is blocked across the fork: until the child has its own handler, Python's default one
        # would raise KeyboardInterrupt into the caller's stack, copied into the child.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child's coverage is not collected)
                try:
                    os.close(read_end)
                    _child(work, state, write_end, blocked)
                finally:
                    # A Ctrl-C the parent had already taken in (another thread's, so not blocked) is
                    # raised at the child's first check, before its handler: never up the caller's stack.
                    os._exit(1)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(write_end)
        self.pid = pid
        self._read = read_end
        self.result: ChildResult[T] | None = None

    def collect(self, *, interrupt: bool = False) -> ChildResult[T]:
        """The child's result once it has ended; with ``interrupt`` (this side failed), it is asked
        to stop first (SIGINT: it ends its work by KeyboardInterrupt and still reports)."""
        if self.result is not None:
            return self.result
        if interrupt:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
        chunks = []
        try:
            while data := os.read(self._read, 1 << 20):
                chunks.append(data)
        finally:
            os.close(self._read)
            _, status = os.waitpid(self.pid, 0)
        try:
            value, error, state = pickle.loads(b"".join(chunks))
        except Exception:
            why = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exit status {os.waitstatus_to_exitcode(status)}")
            value, error, state = None, RuntimeError(f"adopt's helper process ended without a result ({why})"), None
        self.result = ChildResult(value, error, state)
        return self.result


class _OneInterrupt:
    """The child's SIGINT handler: one KeyboardInterrupt at most, and none once disarmed.

    Python's own handler raises at every SIGINT, wherever the child is. A SIGINT that landed after
    the work had raised, while its error was being kept, escaped the report: the parent then never
    heard of the objects the child had published, and its take-back left them in the store (a
    full disk fails both sides at nearly the same moment; 1 run in 100 in a stress test)."""

    def __init__(self) -> None:
        self.armed = True

    def __call__(self, signum: int, frame: object) -> None:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt


def _child(work: Callable[[], object], state: Callable[[], object], fd: int,
           mask: set[int | signal.Signals]) -> None:  # pragma: no cover
    """The child's whole life: it never returns into the caller's stack (no second run of the
    parent's cleanup, no flush of the parent's buffered output), whatever happens."""
    code = 0
    try:
        interrupt = _OneInterrupt()
        signal.signal(signal.SIGINT, interrupt)
        value: object = None
        error: BaseException | None = None
        try:
            try:
                # Unblocked inside the try: a SIGINT that came before is delivered here, and reported.
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                value = work()
            except BaseException as e:  # reported to the parent, which raises it
                error = e
            interrupt.armed = False
        except KeyboardInterrupt as e:  # the one interrupt, landing as the work's own error was kept
            error = error or e
        # From here no KeyboardInterrupt is raised: the handler is disarmed, by us or by itself.
        try:
            data = pickle.dumps((value, error, state()))
        except Exception as e:  # an exception that does not pickle
            data = pickle.dumps((None, RuntimeError(f"{error or e!r}"), state()))
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        code = 1
    finally:
        os._exit(code)
