"""Wheel ingest: the malicious/corrupt corpus is refused with nothing written, good wheels are stored
faithfully (every scheme, entry points, read-only objects, dedup), and concurrent ingest is safe."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import tree_snapshot
from tests.wheelbuilder import WheelSpec, build_wheel, data_package, record_hash, simple_package
from venvfs.errors import InvalidWheel
from venvfs.store.store import SOURCE_EPOCH, Store
from venvfs.store.verify import verify
from venvfs.store.wheel import ingest_wheel

Builder = Callable[[Path], Path]


def _spec(**kwargs: object) -> Builder:
    def build(d: Path) -> Path:
        spec = simple_package()
        for key, value in kwargs.items():
            setattr(spec, key, value)
        return build_wheel(d, spec)

    return build


def _extra_file(path: str, data: bytes = b"x = 1\n") -> Builder:
    def build(d: Path) -> Path:
        spec = simple_package()
        spec.files = {**spec.files, path: data}
        return build_wheel(d, spec)

    return build


def _truncated(d: Path) -> Path:
    wheel = build_wheel(d, simple_package())
    data = wheel.read_bytes()
    wheel.write_bytes(data[: len(data) * 2 // 3])
    return wheel


def _not_a_zip(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    wheel = d / "demo-1.0-py3-none-any.whl"
    wheel.write_text("this is not a zip archive\n" * 50)
    return wheel


def _corrupt_member(d: Path) -> Path:
    """A member's compressed bytes flipped: the zip directory is fine, the CRC is not."""
    spec = simple_package()
    wheel = build_wheel(d, spec)
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo("demo/data/table.txt")
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(wheel.read_bytes())
    for i in range(offset + 2, offset + 12):
        data[i] ^= 0xFF
    wheel.write_bytes(bytes(data))
    return wheel


def _symlink(target: str, link: str = "demo/evil") -> Builder:
    return lambda d: build_wheel(d, WheelSpec(files={"demo/__init__.py": b""}, symlinks={link: target}))


def _through_symlink(d: Path) -> Path:
    """Each symlink stays inside on its own, but a member path goes through one: writing it would follow
    the link (and a chain of such links climbs out of site-packages)."""
    return build_wheel(d, WheelSpec(
        files={"demo/__init__.py": b"", "demo/up/up/evil.py": b"owned = True\n"},
        symlinks={"demo/up": ".."},
    ))


def _symlink_dotdot_after_link(d: Path) -> Path:
    """``demo/root -> ..`` is inside, ``demo/x -> root/../..`` looks inside lexically but ``root/..``
    resolves physically above site-packages."""
    return build_wheel(d, WheelSpec(files={"demo/__init__.py": b""},
                                    symlinks={"demo/root": "..", "demo/x": "root/../.."}))


def _raw_zip(members: list[tuple[str, bytes]], name: str = "demo-1.0-py3-none-any.whl") -> Builder:
    """A wheel whose members are written verbatim (with a RECORD listing them all)."""

    def build(d: Path) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        di = "demo-1.0.dist-info"
        all_members = [
            *members,
            (f"{di}/METADATA", b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"),
            (f"{di}/WHEEL", b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        ]
        record = "".join(f"{p},{record_hash(b)},{len(b)}\n" for p, b in all_members) + f"{di}/RECORD,,\n"
        out = d / name
        with zipfile.ZipFile(out, "w") as zf:
            for path, data in all_members:
                zf.writestr(zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0)), data)
            zf.writestr(f"{di}/RECORD", record)
        return out

    return build


CORPUS: dict[str, Builder] = {
    "truncated-zip": _truncated,
    "not-a-zip": _not_a_zip,
    "corrupt-member-crc": _corrupt_member,
    "missing-WHEEL": _spec(omit=frozenset({"WHEEL"})),
    "missing-RECORD": _spec(omit=frozenset({"RECORD"})),
    "missing-METADATA": _spec(omit=frozenset({"METADATA"})),
    "RECORD-hash-mismatch": _spec(corrupt_hash_of="demo/sub/helpers.py"),
    "RECORD-size-mismatch": _spec(wrong_size_of="demo/data/table.txt"),
    "file-not-in-RECORD": _spec(omit_from_record="demo/sub/helpers.py"),
    "RECORD-garbage": _spec(record_override="\x00\x01 not,a,record,at,all\n"),
    "WHEEL-version-2": _spec(wheel_metadata="Wheel-Version: 2.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    "WHEEL-no-tags": _spec(wheel_metadata="Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"),
    "WHEEL-tag-mismatch": _spec(wheel_metadata="Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: cp27-none-any\n"),
    "dotdot-traversal": _raw_zip([("../evil.py", b"owned = True\n")]),
    "dotdot-inside-path": _raw_zip([("demo/../../evil.py", b"owned = True\n")]),
    "absolute-path": _raw_zip([("/etc/evil.conf", b"owned\n")]),
    "drive-letter": _raw_zip([("C:/x", b"owned\n")]),
    "backslash-path": _raw_zip([("demo\\..\\..\\evil.py", b"owned\n")]),
    "dot-segments": _raw_zip([("demo/./x.py", b"x\n")]),
    "symlink-absolute": _symlink("/etc/passwd"),
    "symlink-escaping": _symlink("../../../../etc/passwd"),
    "member-through-symlink": _through_symlink,
    "symlink-dotdot-after-link": _symlink_dotdot_after_link,
    "duplicate-entry": _spec(duplicate="demo/__init__.py"),
    "bad-filename": _spec(filename_override="demo-1.0.whl"),
    "bad-filename-not-whl-name": _spec(filename_override="not a wheel.whl"),
    "dist-info-name-mismatch": _spec(dist_info_override="other-1.0.dist-info"),
    "data-escape": _extra_file("demo-1.0.data/data/../../etc/evil", b"owned\n"),
    "data-unknown-scheme": _extra_file("demo-1.0.data/evil/x", b"owned\n"),
    "data-scripts-escape": _extra_file("demo-1.0.data/scripts/../../../bin/evil", b"#!/bin/sh\n"),
    "data-into-venvfs-state": _extra_file("demo-1.0.data/data/.venvfs/state.json", b"{}"),
    "entry-point-name-path": _spec(entry_points="[console_scripts]\n../../evil = demo:main\n"),
}


@pytest.fixture
def populated(store: Store, tmp_path: Path) -> Store:
    """A store that already holds something, so "nothing written" is checked against a real store."""
    ingest_wheel(store, build_wheel(tmp_path / "good", simple_package("already", "0.1")))
    return store


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_wheel_refused_by_ingest(case: str, populated: Store, tmp_path: Path) -> None:
    wheel = CORPUS[case](tmp_path / "bad")
    before = tree_snapshot(populated.root)
    with pytest.raises(InvalidWheel) as exc:
        ingest_wheel(populated, wheel)
    message = str(exc.value)
    assert message and "\n" not in message
    assert tree_snapshot(populated.root) == before, "a refused wheel wrote to the store"


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_wheel_refused_by_cli(case: str, populated: Store, tmp_path: Path,
                                  run_venvfs: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    wheel = CORPUS[case](tmp_path / "bad")
    before = tree_snapshot(populated.root)
    proc = run_venvfs("store", "add", str(wheel), check=False)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("venvfs: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree_snapshot(populated.root) == before, "a refused wheel wrote to the store"


def test_cli_json_reports_refusal_and_success(populated: Store, tmp_path: Path,
                                              run_venvfs: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    bad = CORPUS["RECORD-hash-mismatch"](tmp_path / "bad")
    good = build_wheel(tmp_path / "good2", simple_package("fine", "2.0"))
    proc = run_venvfs("store", "add", "--json", str(bad), str(good), check=False)
    assert proc.returncode == 3
    results = json.loads(proc.stdout)
    assert [("error" in r) for r in results] == [True, False]
    assert results[1]["new"] is True and results[1]["key"].startswith("fine-2.0-")


def _object_files(store: Store) -> list[Path]:
    return [p for _d, _x, p in store.iter_objects()]


def test_data_schemes_entry_points_and_object_modes(store: Store, tmp_path: Path) -> None:
    spec = data_package()
    record, new = ingest_wheel(store, build_wheel(tmp_path, spec))
    assert new
    by_path = {(f.scheme, f.path): f for f in record.files}
    assert ("purelib", "datapkg/__init__.py") in by_path
    assert ("purelib", "datapkg_extra.py") in by_path  # .data/purelib lands in site-packages
    assert ("headers", "datapkg.h") in by_path
    assert ("data", "share/datapkg/notes.txt") in by_path
    tool = by_path[("scripts", "datapkg-tool")]
    assert tool.executable
    assert store.object_path(tool.digest or "", True).read_bytes().startswith(b"#!python\n")
    assert by_path[("scripts", "datapkg-sh")].executable
    assert not by_path[("purelib", "datapkg/__init__.py")].executable
    # RECORD is written per venv, never stored; INSTALLER says who installed it.
    assert ("purelib", f"{spec.dist_info}/RECORD") not in by_path
    installer_file = by_path[("purelib", f"{spec.dist_info}/INSTALLER")]
    assert store.object_path(installer_file.digest or "").read_bytes() == b"venvfs\n"
    assert {(ep.name, ep.module, ep.attr, ep.section) for ep in record.entry_points} == {
        ("datapkg-cli", "datapkg", "main", "console"), ("datapkg-gui", "datapkg", "gui", "gui")}
    assert record.tags == ("py3-none-any",)
    for f in record.files:
        assert f.digest is not None
        obj = store.object_path(f.digest, f.executable)
        st = obj.stat()
        assert stat.S_IMODE(st.st_mode) == (0o555 if f.executable else 0o444), f.path
        assert int(st.st_mtime) == SOURCE_EPOCH, f.path
        assert st.st_size == f.size
    assert list((store.root / "tmp").iterdir()) == []
    assert store.get_dist(record.key) == record


def test_ingest_twice_is_one_record(store: Store, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, simple_package())
    first, new1 = ingest_wheel(store, wheel)
    objects = tree_snapshot(store.root / "objects")
    second, new2 = ingest_wheel(store, wheel)
    assert (new1, new2) == (True, False)
    assert first.key == second.key
    assert store.dist_keys() == [first.key]
    assert tree_snapshot(store.root / "objects") == objects


def test_dedup_across_versions(store: Store, tmp_path: Path) -> None:
    r1, _ = ingest_wheel(store, build_wheel(tmp_path / "a", simple_package("demo", "1.0")))
    n1 = len(_object_files(store))
    r2, _ = ingest_wheel(store, build_wheel(tmp_path / "b", simple_package("demo", "2.0")))
    n2 = len(_object_files(store))
    assert r1.key != r2.key and len(store.dist_keys()) == 2
    shared = {f.digest for f in r1.files} & {f.digest for f in r2.files}
    # helpers.py, sub/__init__.py, the data table and INSTALLER are identical in both versions.
    assert len(shared) >= 4
    assert n2 - n1 == len({f.digest for f in r2.files} - {f.digest for f in r1.files})
    table = next(f for f in r1.files if f.path == "demo/data/table.txt")
    assert table.digest in {f.digest for f in r2.files}


def test_symlink_inside_wheel_is_kept(store: Store, tmp_path: Path) -> None:
    spec = WheelSpec(files={"demo/__init__.py": b"", "demo/real.py": b"X = 1\n"},
                     symlinks={"demo/alias.py": "real.py"})
    record, _ = ingest_wheel(store, build_wheel(tmp_path, spec))
    link = next(f for f in record.files if f.path == "demo/alias.py")
    assert link.symlink == "real.py" and link.digest is None


def test_compiled_extension_wheel(store: Store, compiled_wheel: Path) -> None:
    record, new = ingest_wheel(store, compiled_wheel)
    assert new and record.name == "markupsafe"
    assert all("none-any" not in t for t in record.tags)
    exts = [f for f in record.files if f.path.endswith(".so")]
    assert exts and all(f.scheme == "platlib" for f in exts)
    with zipfile.ZipFile(compiled_wheel) as zf:
        for f in exts:
            assert store.object_path(f.digest or "", f.executable).read_bytes() == zf.read(f.path)


def test_missing_file_is_invalid(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InvalidWheel, match="no such file"):
        ingest_wheel(store, tmp_path / "absent-1.0-py3-none-any.whl")


_RACE = """
import sys
from pathlib import Path
from venvfs.store.store import Store
from venvfs.store.wheel import ingest_wheel
store = Store.open(Path(sys.argv[1]))
sys.stdin.readline()  # start together
record, new = ingest_wheel(store, Path(sys.argv[2]))
print(record.key, new)
"""


@pytest.mark.parametrize("round_", range(4))
def test_concurrent_ingest_same_wheel(store: Store, tmp_path: Path, round_: int) -> None:
    spec = simple_package("racer", f"1.{round_}")
    spec.files = {**spec.files, **{f"racer/m{i}.py": (f"V = {i}\n" * 2000).encode() for i in range(40)}}
    wheel = build_wheel(tmp_path, spec)
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(store.root), str(wheel)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path.cwd())
             for _ in range(3)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1] for o in outs]
    keys = {o[0].split()[0] for o in outs}
    assert len(keys) == 1
    assert sum(o[0].split()[1] == "True" for o in outs) >= 1
    assert store.dist_keys() == sorted(keys)
    report = verify(store, {})
    assert report.ok, report.problems
    assert list((store.root / "tmp").iterdir()) == []
    # No half-written temporaries left beside the records either.
    assert [p.name for p in (store.root / "dists").iterdir()] == [f"{next(iter(keys))}.json"]


def test_two_cli_processes_ingesting_at_once(store: Store, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, simple_package("pair", "1.0"))
    env = {**os.environ, "VENVFS_STORE": str(store.root)}
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "venvfs", "store", "add", "--json", str(wheel)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
        assert len({json.loads(o[0])[0]["key"] for o in outs}) == 1
    assert len(store.dist_keys()) == 1
    verify = subprocess.run([sys.executable, "-m", "venvfs", "store", "verify"], env=env, capture_output=True,
                            text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
