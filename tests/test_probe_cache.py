"""The interpreter probe's cache (``venvfs.venv.probecache``): one answer per interpreter binary,
reused by every venv made from it, and not trusted once the binary or the cache file changed.

Real venvs (uv's, and ``python -m venv --copies`` for a binary the test may touch); a cached answer
is told from a probe's by an edited version in the cache file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from venvfs.venv import probecache
from venvfs.venv.venv import Venv

REAL = ".".join(map(str, sys.version_info[:3]))
MARK = "3.999.0"  # what no probe answers


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(probecache.DISABLE_ENV, raising=False)
    return tmp_path / "cache"


def cache_files() -> list[Path]:
    return sorted(probecache.cache_dir().glob("*.json"))


def mark_cached() -> Path:
    """Edit the one cached answer so that a hit shows."""
    (path,) = cache_files()
    data = json.loads(path.read_text())
    data["answer"]["version"] = MARK
    path.write_text(json.dumps(data))
    return path


def test_venvs_of_one_interpreter_share_one_answer(make_venv: Callable[..., Path]) -> None:
    first = Venv.open(make_venv("a", tool="uv"))
    assert first.probe_interpreter().version == REAL
    mark_cached()
    second = Venv.open(make_venv("b", tool="uv"))
    assert second.probe_interpreter().version == MARK  # not started: the answer came from the cache
    os.environ[probecache.DISABLE_ENV] = "0"
    try:
        assert second.probe_interpreter().version == REAL
    finally:
        del os.environ[probecache.DISABLE_ENV]


def test_a_changed_binary_or_an_untrusted_cache_file_is_probed_again(tmp_path: Path) -> None:
    root = tmp_path / "copies"
    subprocess.run([sys.executable, "-m", "venv", "--copies", "--without-pip", str(root)], check=True)
    venv = Venv.open(root)
    binary = Path(os.path.realpath(venv.python))
    assert binary.is_relative_to(root)  # its own copy: the test may touch it
    assert venv.probe_interpreter().version == REAL
    path = mark_cached()
    assert venv.probe_interpreter().version == MARK

    # A cache file others can write is not the user's word.
    path.chmod(0o666)
    assert venv.probe_interpreter().version == REAL  # and written again, the user's own
    assert oct(cache_files()[0].stat().st_mode & 0o777) == oct(0o644)

    # The binary replaced or rewritten (a new mtime): the answer may be another Python's.
    mark_cached()
    st = binary.stat()
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert venv.probe_interpreter().version == REAL

    # A damaged cache file is a miss, never an error.
    cache_files()[0].write_text("{not json")
    assert venv.probe_interpreter().version == REAL
