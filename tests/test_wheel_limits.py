"""Issue 13, point 7: limits on ingest. A zip bomb (one member, or many small ones), a wheel that
unpacks to more than the limit, and names or paths too long to be placed are refused with one line and
exit code 3, naming the limit and the flag that raises it; nothing is stored. The test wheels are small:
the limits are lowered by the flags rather than GiBs written.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.wheelbuilder import WheelSpec, build_wheel
from venvfs.errors import InvalidWheel, UsageError
from venvfs.store.limits import IngestLimits, parse_ratio, parse_size


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def keys(store: Path, *names: str) -> list[str]:
    rows = json.loads(run_cli(store, "store", "list", "--json").stdout)
    by_name = {r["name"]: r["key"] for r in rows}
    return [by_name[n] for n in names]


def zeros_wheel(directory: Path, name: str, members: dict[str, int]) -> Path:
    return build_wheel(directory, WheelSpec(name=name, files={p: bytes(n) for p, n in members.items()},
                                            compress_type=zipfile.ZIP_DEFLATED))


def stored_objects(store: Path) -> list[Path]:
    return [p for p in (store / "objects").rglob("*") if p.is_file()] if (store / "objects").exists() else []


def test_zip_bomb_member_refused_unless_raised(tmp_path: Path) -> None:
    wheel = zeros_wheel(tmp_path / "wheels", "bomb", {"bomb/zeros.bin": 8 << 20})
    assert wheel.stat().st_size < 64 << 10
    store = tmp_path / "store"
    proc = run_cli(store, "store", "add", str(wheel), check=False)
    line = one_line(proc)
    assert proc.returncode == InvalidWheel.exit_code, proc.stderr
    assert "bomb/zeros.bin" in line and "--max-ratio" in line and "100:1" in line, line
    assert stored_objects(store) == []
    run_cli(store, "store", "add", str(wheel), "--max-ratio", "5000")
    assert keys(store, "bomb")


def test_zip_bomb_of_small_members_refused_as_a_whole(tmp_path: Path) -> None:
    wheel = zeros_wheel(tmp_path / "wheels", "smallbombs", {f"s/z{i}.bin": 3 << 20 for i in range(3)})
    store = tmp_path / "store"
    proc = run_cli(store, "store", "add", str(wheel), check=False)
    assert proc.returncode == InvalidWheel.exit_code and "--max-ratio" in one_line(proc), proc.stderr
    run_cli(store, "store", "add", str(wheel), env={"VENVFS_MAX_RATIO": "5000"})


def test_unpacked_size_limit_and_flag(tmp_path: Path, make_venv: Callable[..., Path]) -> None:
    wheel = zeros_wheel(tmp_path / "wheels", "big", {"big/zeros.bin": 2 << 20})
    store = tmp_path / "store"
    proc = run_cli(store, "store", "add", str(wheel), "--max-unpacked-size", "1M", check=False)
    line = one_line(proc)
    assert proc.returncode == InvalidWheel.exit_code, proc.stderr
    assert "--max-unpacked-size" in line and "1.0 MiB" in line, line
    assert stored_objects(store) == []
    proc = run_cli(store, "store", "add", str(wheel), env={"VENVFS_MAX_UNPACKED_SIZE": "1M"}, check=False)
    assert proc.returncode == InvalidWheel.exit_code, proc.stderr
    venv = make_venv()
    proc = run_cli(store, "add", str(venv), str(wheel), "--max-unpacked-size", "1M", check=False)
    assert proc.returncode == InvalidWheel.exit_code and "--max-unpacked-size" in one_line(proc), proc.stderr
    run_cli(store, "add", str(venv), str(wheel), "--max-unpacked-size", "3M")
    proc = run_cli(store, "store", "add", str(wheel), "--max-unpacked-size", "lots", check=False)
    assert proc.returncode == UsageError.exit_code and "--max-unpacked-size" in one_line(proc), proc.stderr


@pytest.mark.parametrize(("path", "ok"), [
    ("longname/" + "n" * 220 + ".py", True),  # 223 bytes
    ("longname/" + "n" * 221 + ".py", False),  # 224 bytes: eats into the room for derived names
    ("longname/" + "n" * 300 + ".py", False),  # the 303-byte name of the issue
    ("longname/" + "/".join(["d" * 200] * 16) + "/x.py", False),  # 3,229 bytes of path
])
def test_name_and_path_limits(tmp_path: Path, path: str, ok: bool) -> None:
    wheel = build_wheel(tmp_path / "wheels", WheelSpec(name="longname", files={path: b"x = 1\n"}))
    proc = run_cli(tmp_path / "store", "store", "add", str(wheel), check=False)
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == InvalidWheel.exit_code and "bytes long" in one_line(proc), proc.stderr


def test_limit_parsing() -> None:
    assert parse_size("8G") == 8 << 30 and parse_size("512MiB") == 512 << 20 and parse_size("1000") == 1000
    assert parse_ratio("500:1") == 500 and parse_ratio("100") == 100
    for bad in ("", "lots", "-1", "1X"):
        with pytest.raises(UsageError):
            parse_size(bad)
    with pytest.raises(UsageError):
        parse_ratio("0.5")
    assert IngestLimits.from_env("1M", None).max_unpacked == 1 << 20
