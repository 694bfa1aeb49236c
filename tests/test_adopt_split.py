"""Adopt shares a large venv's distributions out to a forked process (``venvfs.venv.adoptsplit``):
the same records as one process makes, and a failure on either side takes back both sides' objects."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from tests.conftest import create_venv
from tests.wheelbuilder import WheelSpec, build_wheel, data_package, simple_package
from venvfs.errors import VenvfsError
from venvfs.store.store import Store
from venvfs.venv import adopt as adopt_module
from venvfs.venv import adoptsplit
from venvfs.venv.adopt import adopt
from venvfs.venv.venv import Venv


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    house = tmp_path_factory.mktemp("wheels")
    big = {f"big/m{i:03}.py": f"N = {i}\n".encode() + b"#" * (300 * 1024 if i == 0 else 100 * i)
           for i in range(60)}
    big["big/__init__.py"] = b"from big.m007 import N\n"
    return [build_wheel(house, simple_package("demo", "1.0")), build_wheel(house, data_package()),
            build_wheel(house, simple_package("other", "2.0")),
            build_wheel(house, WheelSpec(name="big", version="1.0", files=big))]


def _venv(path: Path, wheels: list[Path]) -> Path:
    create_venv(path)
    subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                    "--disable-pip-version-check", *map(str, wheels)], check=True)
    return path


def _records(store: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for path in (store / "dists").glob("*.json"):
        record = json.loads(path.read_text())
        record.pop("source", None)  # names the venv adopted
        record.pop("stored_at", None)
        out[path.name] = record
    return out


def _objects(store: Path) -> list[Path]:
    return sorted(p for p in (store / "objects").rglob("*") if p.is_file())


def _by_process(monkeypatch: pytest.MonkeyPatch, log: Path, fail: str | None = None) -> None:
    """Every distribution adopted is logged with the pid that adopted it; ``fail``: the helper
    ("helper") or this process ("parent") fails once it has stored one."""
    real = adopt_module._DistAdopter.adopt
    parent = os.getpid()

    def logged(self: adopt_module._DistAdopter) -> object:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {self.dist_info.name}\n")
        record = real(self)
        if fail == "helper" and os.getpid() != parent:
            raise OSError(errno.EIO, "injected failure")
        if fail == "parent" and os.getpid() == parent:
            deadline = time.monotonic() + 30
            while len({line.split()[0] for line in log.read_text().splitlines()}) < 2:
                assert time.monotonic() < deadline, "no second process adopted anything"
                time.sleep(0.01)
            raise OSError(errno.EIO, "injected failure")
        return record

    monkeypatch.setattr(adopt_module._DistAdopter, "adopt", logged)
    # Every venv is large enough to be shared out (raising=False: before the split, nothing to set).
    monkeypatch.setattr(adopt_module, "_SPLIT_MIN", 0, raising=False)
    # And the machine counts as one with two cores: a fork runs on one core too, so the test runs anywhere.
    monkeypatch.setattr(os, "cpu_count", lambda: 2)


def _pids(log: Path) -> set[str]:
    return {line.split()[0] for line in log.read_text().splitlines()}


def test_adopt_shared_out_to_a_second_process_stores_what_one_process_does(
        tmp_path: Path, wheels: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    one = _venv(tmp_path / "one", wheels)
    two = _venv(tmp_path / "two", wheels)
    alone = adopt(Venv(one), Store.open(tmp_path / "store1"), bytecode="none", install_hooks=False)
    log = tmp_path / "pids"
    _by_process(monkeypatch, log)
    shared = adopt(Venv(two), Store.open(tmp_path / "store2"), bytecode="none", install_hooks=False)
    assert len(_pids(log)) == 2, log.read_text()  # this process and a forked one
    assert shared.selection == alone.selection
    assert (shared.new_objects, shared.new_bytes, shared.link_summary, shared.restamped) == (
        alone.new_objects, alone.new_bytes, alone.link_summary, alone.restamped)
    assert _records(tmp_path / "store2") == _records(tmp_path / "store1")
    assert [p.name for p in _objects(tmp_path / "store2")] == [p.name for p in _objects(tmp_path / "store1")]
    out = subprocess.run([str(two / "bin" / "python"), "-c", "import demo, other, big; print(big.N)"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "7\n"


@pytest.mark.parametrize("side", ["helper", "parent"])
def test_a_failure_on_either_side_takes_back_both_sides_objects(
        tmp_path: Path, wheels: list[Path], monkeypatch: pytest.MonkeyPatch, side: str) -> None:
    venv = _venv(tmp_path / "venv", wheels)
    store = Store.open(tmp_path / "store")
    log = tmp_path / "pids"
    _by_process(monkeypatch, log, fail=side)
    with pytest.raises(VenvfsError, match="injected failure"):
        adopt(Venv(venv), store, bytecode="none", install_hooks=False)
    assert len(_pids(log)) == 2, log.read_text()
    assert _objects(tmp_path / "store") == []  # no record refers to any: all taken back
    assert not any((tmp_path / "store" / "dists").glob("*.json"))
    # Nothing of the venv was lost: its files are all there and it still imports.
    subprocess.run([str(venv / "bin" / "python"), "-c", "import demo, other, big"], check=True)



@pytest.mark.parametrize("line", range(6))
def test_the_helper_reports_what_it_published_when_interrupted_as_it_fails(line: int) -> None:
    """A full disk fails both processes at nearly the same moment: the parent's SIGINT then reaches a
    helper whose own error is being kept. The helper must still report the objects it published, or
    the take-back leaves them in the store (CI found 123 so). The SIGINT is sent at the helper's
    ``line``-th line after its work raised, by a trace function set on the helper's frame."""

    def helper() -> list[str]:
        count = iter(range(1_000))

        def tracer(frame: types.FrameType, event: str, arg: object) -> object:
            if event == "line" and next(count) == line:
                os.kill(os.getpid(), signal.SIGINT)
            return tracer

        sys.settrace(lambda *_: None)  # line events on: only the frame given a tracer gets them
        sys._getframe(1).f_trace = tracer  # the helper process's frame that called this work
        raise OSError(errno.ENOSPC, "No space left on device")

    reported: list[object] = []
    with pytest.raises((OSError, KeyboardInterrupt)):
        adoptsplit.in_two(list, helper, lambda: ["the helper's object"], reported.append)
    assert reported == [["the helper's object"]]
