"""``venvfs create`` writes a venv's skeleton from what ``uv venv`` made once for the same uv and
interpreter (``venv/skeleton.py``): it must be what uv itself would make at that path, byte for byte.
Venv tier: real uv, real venvs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import uv
from venvfs.venv import skeleton

PYTHON = os.path.realpath(sys.executable)


@pytest.fixture
def counted_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """uv behind a script that counts its runs; the user's cache in the test's directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    log = tmp_path / "uv-runs"
    wrapper = tmp_path / "bin" / "uv"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\necho run >> {log}\nexec {uv()} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper), log


def _runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _tree(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every entry below ``root``: kind, mode, and content or target with ``root`` written as ROOT."""
    out: dict[str, tuple[str, int, bytes]] = {}
    here = os.fsencode(root)
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(path, root)] = ("l", 0, os.fsencode(os.readlink(path)).replace(here, b"ROOT"))
            elif stat.S_ISDIR(st.st_mode):
                out[os.path.relpath(path, root)] = ("d", stat.S_IMODE(st.st_mode), b"")
            else:
                data = Path(path).read_bytes().replace(here, b"ROOT")
                out[os.path.relpath(path, root)] = ("f", stat.S_IMODE(st.st_mode), data)
    return out


def test_a_skeleton_is_what_uv_makes_at_that_path(counted_uv: tuple[str, Path], tmp_path: Path) -> None:
    wrapper, log = counted_uv
    made = [tmp_path / "first", tmp_path / "second"]
    for dest in made:
        dest.mkdir()
        assert skeleton.make(dest, PYTHON, wrapper)
    assert _runs(log) == 1  # once to learn the skeleton, never again for the same uv and interpreter
    by_uv = tmp_path / "by-uv"
    subprocess.run([uv(), "venv", "-q", "--python", PYTHON, str(by_uv)], check=True)
    assert len(_tree(by_uv)) > 10
    for dest in made:
        assert _tree(dest) == _tree(by_uv)
    out = subprocess.run(["sh", "-c", f". {made[1]}/bin/activate && echo $VIRTUAL_ENV && python -c "
                          "'import sys; print(sys.prefix)'"], check=True, capture_output=True, text=True).stdout
    assert out.split() == [str(made[1])] * 2


def test_a_path_a_shell_would_quote_is_left_to_uv(counted_uv: tuple[str, Path], tmp_path: Path) -> None:
    wrapper, log = counted_uv
    dest = tmp_path / "with space"
    dest.mkdir()
    assert not skeleton.make(dest, PYTHON, wrapper)
    assert not any(dest.iterdir()) and _runs(log) == 0
    assert not skeleton.make(tmp_path / "rel", "python3", wrapper)  # uv finds that one: only a path is a key


def test_a_kept_skeleton_anyone_else_could_write_is_not_used(counted_uv: tuple[str, Path], tmp_path: Path) -> None:
    """Its activate scripts run in the user's shell."""
    wrapper, log = counted_uv
    (tmp_path / "a").mkdir()
    assert skeleton.make(tmp_path / "a", PYTHON, wrapper)
    [kept] = skeleton.cache_dir().glob("*.json")
    kept.write_text(kept.read_text().replace("VIRTUAL_ENV", "EVIL_ENV"))
    kept.chmod(0o664)
    (tmp_path / "b").mkdir()
    assert skeleton.make(tmp_path / "b", PYTHON, wrapper)
    assert _runs(log) == 2 and "EVIL_ENV" not in (tmp_path / "b/bin/activate").read_text()
    assert stat.S_IMODE(kept.stat().st_mode) & stat.S_IWGRP == 0  # learnt again, the user's own


def test_keeping_a_new_skeleton_prunes_the_ones_no_create_can_use(
        counted_uv: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new uv or Python adds a skeleton: those of a uv or interpreter that changed go, and of the
    rest the most recent stay, so the cache does not grow with every upgrade."""
    import json

    wrapper, log = counted_uv
    (tmp_path / "first").mkdir()
    assert skeleton.make(tmp_path / "first", PYTHON, wrapper)
    cache = skeleton.cache_dir()
    (made,) = list(cache.glob("*.json"))
    data = json.loads(made.read_text())
    stale = cache / "stale.json"  # made by a uv that has since been upgraded in place
    for path in data["key"]["binaries"]:
        data["key"]["binaries"][path][2] += 1
    stale.write_text(json.dumps(data))
    current = []
    for i in range(20):  # still usable, made one after another (mtime i seconds after the epoch)
        copy = cache / f"current-{i:02}.json"
        copy.write_bytes(made.read_bytes())
        os.utime(copy, (1_000_000 + i, 1_000_000 + i))
        current.append(copy)
    abandoned, working = cache / ".make-abandoned", cache / ".make-working"
    abandoned.mkdir()
    working.mkdir()
    os.utime(abandoned, (1_000_000, 1_000_000))
    monkeypatch.setenv("UV_VENVFS_TEST_SETTING", "1")  # a new key: uv runs and its skeleton is kept
    (tmp_path / "second").mkdir()
    assert skeleton.make(tmp_path / "second", PYTHON, wrapper)
    assert _runs(log) == 2
    left = sorted(p.name for p in cache.glob("*.json"))
    assert not stale.exists() and not abandoned.exists() and working.exists()
    assert len(left) == skeleton._KEEP, left
    # The new one, the first one (made now: newer than the copies), and the most recent copies.
    assert made.name in left and {c.name for c in current[-(skeleton._KEEP - 2):]} <= set(left)
    assert not any(c.exists() for c in current[:-(skeleton._KEEP - 2)])
