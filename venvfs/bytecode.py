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
from collections.abc import Iterable
from pathlib import Path

from venvfs.errors import VenvError
from venvfs.progress import Progress
from venvfs.records import DistRecord
from venvfs.store import SOURCE_EPOCH, Store
from venvfs.venv import InterpreterInfo

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


def pyc_relpath(py_relpath: str, cache_tag: str) -> str:
    directory, name = posixpath.split(py_relpath)
    return posixpath.join(directory, "__pycache__", f"{name[:-3]}.{cache_tag}.pyc")


def compilable(path: str) -> bool:
    return path.endswith(".py")


def ensure_bytecode(store: Store, records: Iterable[DistRecord], interp: InterpreterInfo, python: Path,
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
        progress = Progress(f"compiling bytecode for {interp.cache_tag}", len(jobs), enabled=None if show_progress
                            else False)
        try:
            proc = subprocess.Popen(
                [str(python), "-I", "-S", "-c", _COMPILER, str(SOURCE_EPOCH)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
        except OSError as e:
            raise VenvError(f"cannot run {python} to compile bytecode ({e})") from e
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(jobs))
        proc.stdin.close()
        done = 0
        for line in proc.stdout:
            out = Path(line.rstrip("\n"))
            store.put_bytecode(interp.cache_tag, out.name, out)
            done += 1
            progress.advance()
        progress.close()
        if proc.wait() != 0:
            raise VenvError(f"{python} failed while compiling bytecode (exit {proc.returncode})")
    return done
