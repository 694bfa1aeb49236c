"""Bytecode compiled once per (source object, Python cache tag) and shared by every venv.

Each ``.py`` object is compiled by the venv's own interpreter (bytecode is version-specific) into a
timestamp ``.pyc`` that records ``SOURCE_EPOCH`` and the source size: every store file shows that
mtime wherever it appears, so the ``.pyc`` is valid in every venv, and an edited copy (new mtime)
makes Python recompile as usual.
"""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from venvfs.errors import VenvError
from venvfs.progress import Progress
from venvfs.store.records import DistRecord
from venvfs.store.store import SOURCE_EPOCH, Store

# Runs under the target interpreter; reads [[source, out], ...] as JSON on stdin.
_COMPILER = """
import importlib._bootstrap_external as be, json, sys
mtime = int(sys.argv[1])
for src, out in json.load(sys.stdin):
    try:
        with open(src, "rb") as f:
            data = f.read()
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


def ensure_bytecode(store: Store, records: Iterable[DistRecord], interp: Interpreter, python: Path,
                    *, show_progress: bool = True) -> int:
    """Compile every ``.py`` of ``records`` not yet compiled for ``interp``; returns how many were."""
    todo: dict[str, Path] = {}
    for record in records:
        for f in record.site_files():
            if (f.digest and compilable(f.path) and f.digest not in todo
                    and not store.bytecode_path(interp.cache_tag, f.digest).exists()):
                todo[f.digest] = store.object_path(f.digest, f.executable)
    if not todo:
        return 0
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
