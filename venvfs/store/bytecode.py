"""Bytecode compiled once per (source object, Python cache tag) and shared by every venv.

Each ``.py`` object is compiled by the venv's own interpreter (bytecode is version-specific) into a
timestamp ``.pyc`` that records ``SOURCE_EPOCH`` and the source size: every store file shows that
mtime wherever it appears, so the ``.pyc`` is valid in every venv, and an edited copy (new mtime)
makes Python recompile as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from venvfs.errors import VenvError
from venvfs.fsutil import exists, importable_env
from venvfs.progress import Progress
from venvfs.store.records import DistRecord
from venvfs.store.store import SOURCE_EPOCH, Store, gc_epoch

# Runs under the target interpreter; reads [[source, out], ...] as JSON on stdin. ``out`` is named by
# the source's digest, which the bytes read are checked against (the very bytes compiled): a damaged
# object, or one a shared store below serves with other content, must not become bytecode that every
# venv then runs without its source ever being read.
_COMPILER = """
import hashlib, importlib._bootstrap_external as be, json, os, sys
mtime = int(sys.argv[1])
for src, out in json.load(sys.stdin):
    try:
        with open(src, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != os.path.basename(out):
            continue
        code = compile(data, src, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError, UnicodeDecodeError):
        continue  # e.g. Python 2 test fixtures shipped as data: Python itself would not compile them either
    with open(out, "wb") as f:
        f.write(be._code_to_timestamp_pyc(code, mtime, len(data)))
    print(out, flush=True)
"""


_MIN_CHUNK = 200  # below this many files per interpreter, starting another costs more than it saves


def pyc_relpath(py_relpath: str, cache_tag: str) -> str:
    directory, name = posixpath.split(py_relpath)
    return posixpath.join(directory, "__pycache__", f"{name[:-3]}.{cache_tag}.pyc")


def compilable(path: str) -> bool:
    return path.endswith(".py")


class Interpreter(Protocol):
    """What bytecode needs of the venv layer's ``InterpreterInfo`` (the store knows no venv)."""

    @property
    def cache_tag(self) -> str: ...


@dataclass
class Learnt:
    """Sources found compiled before the running command began, in one store: the mount service learns
    them while idle (``warm.py``); the commands it forks use them while the store's gc epoch is still
    ``epoch`` (gc removes bytecode)."""

    epoch: str
    digests: dict[str, set[str]] = field(default_factory=dict)  # per cache tag
    whole: dict[str, set[str]] = field(default_factory=dict)  # per cache tag, records all of whose are


WARM_COMPILED: dict[Path, Learnt] = {}


def _learnt(store: Store, cache_tag: str) -> tuple[set[str], set[str]]:
    """What the service learnt of ``cache_tag`` that still holds: (digests, whole record keys)."""
    warm = WARM_COMPILED.get(store.root)
    if warm is None or store.lowers or warm.epoch != gc_epoch(store):
        return set(), set()
    return warm.digests.get(cache_tag, set()), warm.whole.get(cache_tag, set())


def _compiled(store: Store, cache_tag: str) -> Callable[[str], bool]:
    """Whether a source object has its bytecode: asked for every ``.py`` of a selection at each
    ``venvfs add``, where building a Path cost twice the stat it was made for. The caller holds the
    store's shared lock (``writing()``, ``compiling()``): gc neither runs nor changes the epoch."""
    look = _look(store, cache_tag)
    seen = store.compiled_seen.get(cache_tag) or set()
    learnt = _learnt(store, cache_tag)[0]
    if learnt:
        seen = seen | learnt if seen else learnt
    if seen:
        return lambda digest: digest in seen or look(digest)
    return look


def _look(store: Store, cache_tag: str) -> Callable[[str], bool]:
    if store.lowers:
        return lambda digest: store.bytecode_path(cache_tag, digest).exists()
    base = f"{store.root}/bytecode/{cache_tag}"  # Store.local_bytecode_path, as a string
    return lambda digest: exists(f"{base}/{digest[:2]}/{digest}.pyc")


def look_ahead(store: Store, records: Iterable[DistRecord], cache_tag: str) -> None:
    """Note which sources of ``records`` have bytecode for ``cache_tag``, before ``ensure_bytecode``
    asks (one stat per module: ~17 ms for the scientific set), while an installer plans. Only under
    ``store.writing()`` held until the selection is done: gc, which alone deletes bytecode, waits."""
    seen = store.compiled_seen.setdefault(cache_tag, set())
    for record in records:
        _note_compiled(store, record, cache_tag, seen)


def learn_compiled(store: Store, record: DistRecord, cache_tag: str, epoch: str) -> bool:
    """Note in ``WARM_COMPILED`` which sources of ``record`` are compiled, as seen at the gc ``epoch``
    the caller read under the store's shared lock, which it still holds; whether all of them are."""
    learnt = WARM_COMPILED.get(store.root)
    if learnt is None or learnt.epoch != epoch:
        learnt = WARM_COMPILED[store.root] = Learnt(epoch)
    whole = _note_compiled(store, record, cache_tag, learnt.digests.setdefault(cache_tag, set()))
    if whole:
        learnt.whole.setdefault(cache_tag, set()).add(record.key)
    return whole


def _note_compiled(store: Store, record: DistRecord, cache_tag: str, seen: set[str]) -> bool:
    """Add to ``seen`` the sources of ``record`` compiled for ``cache_tag``; whether all of them are."""
    look = _look(store, cache_tag)
    whole = True
    for f in record.site_files():
        if f.digest and compilable(f.path) and f.digest not in seen:
            if look(f.digest):
                seen.add(f.digest)
            else:
                whole = False
    return whole


def ensure_bytecode(store: Store, records: Iterable[DistRecord], interp: Interpreter, python: Path,
                    *, show_progress: bool = True) -> int:
    """Compile every ``.py`` of ``records`` not yet compiled for ``interp``; returns how many were."""
    todo: dict[str, Path] = {}
    compiled = _compiled(store, interp.cache_tag)
    whole = _learnt(store, interp.cache_tag)[1]
    for record in records:
        if record.key in whole:
            continue  # ~0.5 ms a scipy-sized record to look through, for nothing
        for f in record.site_files():
            if f.digest and compilable(f.path) and f.digest not in todo and not compiled(f.digest):
                todo[f.digest] = store.object_path(f.digest, f.executable)
    if not todo:
        return 0
    # Imported only when there is bytecode to compile: threads and their queues cost every command start.
    import tempfile
    import threading
    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory(dir=store.root / "tmp", prefix="pyc.") as tmp:
        jobs = [[str(src), os.path.join(tmp, digest)] for digest, src in todo.items()]
        progress = Progress(f"compiling bytecode for {interp.cache_tag}", len(jobs),
                            enabled=None if show_progress else False)
        lock = threading.Lock()

        def compile_chunk(chunk: list[list[str]]) -> int:
            try:
                proc = subprocess.Popen(
                    [str(python), "-I", "-S", "-c", _COMPILER, str(SOURCE_EPOCH)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )
            except OSError as e:
                raise VenvError(f"cannot run {python} to compile bytecode ({e})") from e
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(chunk))
            proc.stdin.close()
            done = 0
            for line in proc.stdout:
                out = Path(line.rstrip("\n"))
                store.put_bytecode(interp.cache_tag, out.name, out)
                done += 1
                with lock:
                    progress.advance()
            if proc.wait() != 0:
                raise VenvError(f"{python} failed while compiling bytecode (exit {proc.returncode})")
            return done

        # Compiling is CPU-bound and every file is independent: one interpreter per core (a torch venv's
        # 10,000 modules take 12 s on one).
        workers = max(1, min(os.cpu_count() or 1, len(jobs) // _MIN_CHUNK))
        with ThreadPoolExecutor(workers) as pool:
            done = sum(pool.map(compile_chunk, [jobs[i::workers] for i in range(workers)]))
        progress.close()
    return done


# -- compiling after the command that needed it has returned --------------------------------------------

def compile_in_background(store: Store, keys: list[str], cache_tag: str, python: Path) -> int | None:
    """Start a detached, low-priority process that compiles the store's bytecode of ``keys`` for
    ``python``; returns its pid (None when there is nothing to compile). Each ``.pyc`` appears by an
    atomic link (``put_bytecode``), so a reader sees one whole or none; until then Python compiles
    what it imports, as it always does. The process holds ``store.compiling()`` while it works."""
    if not keys:
        return None
    argv = [sys.executable, "-m", "venvfs.store.bytecode", "--store", str(store.root), "--python", str(python),
            "--cache-tag", cache_tag, *keys]
    env = importable_env(dict(os.environ))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd="/", env=env, start_new_session=True)
    return proc.pid


@dataclass(frozen=True)
class _Tag:
    cache_tag: str


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m venvfs.store.bytecode",
                                description="compile the store's bytecode of distributions (started by adopt)")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--python", type=Path, required=True)
    p.add_argument("--cache-tag", required=True)
    p.add_argument("keys", nargs="+")
    args = p.parse_args(argv)
    with contextlib.suppress(OSError):
        os.nice(10)  # the user's foreground work first: this only saves later imports some time
    store = Store.open(args.store, create=False)
    with store.compiling():
        records = [store.get_dist(k) for k in args.keys if store.has_dist(k)]
        ensure_bytecode(store, records, _Tag(args.cache_tag), args.python, show_progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
