"""The foundation's acceptance test: a uv-made venv with numpy, pandas and scipy is adopted and keeps
working; a second such venv adds (almost) nothing to the store, and status tells the truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from venvfs.store.store import Store

from conftest import uv_pip

pytestmark = pytest.mark.slow

PACKAGES = ("numpy", "pandas", "scipy")
CHECK = "import numpy, pandas, scipy.linalg; print(pandas.DataFrame({'a': numpy.arange(3)}).a.sum())"


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def store_bytes(store: Store) -> int:
    return sum(p.lstat().st_blocks * 512 for p in store.root.rglob("*") if p.is_file())


def pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # uv venvs carry no pip: drive the test runner's pip at the venv's interpreter, as users of uv do.
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *args],
                          capture_output=True, text=True, check=True)


def test_two_scientific_venvs_share_one_store(
    store: Store, make_venv: Callable[..., Path], run_venvfs: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    first = make_venv("first", tool="uv")
    uv_pip(first, *PACKAGES)
    before = pip(first, "list", "--format=json").stdout

    run_venvfs("adopt", str(first), "--compile-now")
    out = subprocess.run([first / "bin" / "python", "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"
    assert pip(first, "list", "--format=json").stdout == before
    config = subprocess.run([first / "bin" / "numpy-config", "--version"], capture_output=True, text=True,
                            check=True)
    assert config.stdout.strip()
    numpy_init = next(first.glob("lib/python*/site-packages/numpy/__init__.py"))
    assert numpy_init.stat().st_nlink >= 2 or json.loads(run_venvfs("status", str(first), "--json").stdout)[
        "link_mode"] == "reflink"
    assert not os.access(numpy_init, os.W_OK) or os.geteuid() == 0  # the object is read-only (root bypasses)
    assert numpy_init.stat().st_mode & 0o222 == 0

    stored_after_first = store_bytes(store)
    second = make_venv("second", tool="uv")
    uv_pip(second, *PACKAGES)
    size_second = tree_bytes(second)
    run_venvfs("adopt", str(second), "--compile-now")
    growth = store_bytes(store) - stored_after_first
    assert growth < 0.01 * size_second, f"second venv grew the store by {growth} of {size_second} bytes"

    status = json.loads(run_venvfs("status", str(second), "--json").stdout)
    assert {d["name"] for d in status["distributions"]} >= set(PACKAGES)
    assert all(d["shared_with_other_venvs"] for d in status["distributions"])
    assert status["owned_alone_bytes"] == 0
    assert status["shared_bytes"] == status["store_bytes"] > 0.5 * status["logical_bytes"]
    store_status = json.loads(run_venvfs("store", "status", "--json").stdout)
    assert store_status["dedupe_ratio"] > 1.8

    # Uninstalling in one venv removes its files and leaves the other, and the store, intact.
    pip(second, "uninstall", "-y", "pandas")
    assert not list(second.glob("lib/python*/site-packages/pandas"))
    subprocess.run([first / "bin" / "python", "-c", CHECK], check=True, capture_output=True)
    assert run_venvfs("store", "verify").returncode == 0
