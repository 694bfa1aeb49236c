"""Materialize and select: a venv's selection written as reflinks, hardlinks or copies (forced or auto,
on ext4, on a loop-mounted XFS image, across filesystems), `venvfs add`/`remove`, and `store verify`
finding an object edited through a hardlink."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import create_venv, missing_tool, run_cli
from tests.wheelbuilder import build_wheel, data_package, simple_package
from venvfs.store.records import REWRITTEN_METADATA
from venvfs.store.store import SOURCE_EPOCH, Store
from venvfs.venv.venv import Venv


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    house = tmp_path_factory.mktemp("wheels")
    return {
        "demo1": build_wheel(house / "1", simple_package("demo", "1.0")),
        "demo2": build_wheel(house / "2", simple_package("demo", "2.0")),
        "datapkg": build_wheel(house, data_package()),
    }


def managed_venv(path: Path, store: Path) -> Path:
    """An empty uv venv, adopted (so it is managed by ``store`` with an empty selection)."""
    venv = create_venv(path, "uv")
    run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
    return venv


def _py(venv: Path, code: str) -> str:
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _site(venv: Path) -> Path:
    return Venv(venv).site_packages


def _placed_files(venv: Path, store: Path) -> list[tuple[Path, Path]]:
    """(file in the venv, its store object) for every linkable site-packages file of the selection."""
    st = Store.open(store, create=False)
    pairs = []
    for key in Venv(venv).read_state().selection:
        for f in st.get_dist(key).site_files():
            if f.digest is None or os.path.basename(f.path) in REWRITTEN_METADATA:
                continue
            pairs.append((_site(venv) / f.path, st.object_path(f.digest, f.executable)))
    assert pairs
    return pairs


def _same_inode(a: Path, b: Path) -> bool:
    sa, sb = a.stat(), b.stat()
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


def _assert_mode(venv: Path, store: Path, mode: str) -> None:
    for dst, obj in _placed_files(venv, store):
        assert dst.read_bytes() == obj.read_bytes(), dst
        if mode == "hardlink":
            assert _same_inode(dst, obj), dst
        else:
            assert not _same_inode(dst, obj), dst
            st = dst.stat()
            assert st.st_nlink == 1 and int(st.st_mtime) == SOURCE_EPOCH, dst
            assert stat.S_IMODE(st.st_mode) & 0o200, f"{dst}: a {mode} belongs to the venv, so it is writable"


def _add(store: Path, venv: Path, *specs: str, mode: str = "auto", check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    return run_cli(store, "add", str(venv), *specs, "--link-mode", mode, "--json", check=check)


# -- link modes on one filesystem (ext4 under tmp_path) -------------------------------------------------


@pytest.mark.parametrize("mode", ["copy", "hardlink", "auto"])
def test_link_mode_on_one_filesystem(mode: str, tmp_path: Path, wheels: dict[str, Path]) -> None:
    store = tmp_path / "store"
    venv = managed_venv(tmp_path / "venv", store)
    out = json.loads(_add(store, venv, str(wheels["demo1"]), str(wheels["datapkg"]), mode=mode).stdout)
    assert len(out["added"]) == 2
    expected = "hardlink" if mode == "auto" else mode  # no reflinks on ext4
    _assert_mode(venv, store, expected)
    if mode == "auto":
        assert "reflink unavailable" in out["links"]
    assert Venv(venv).read_state().link_mode == expected
    # The materialized venv works, with scripts for its own interpreter.
    assert _py(venv, "import demo, datapkg_extra; print(demo.VERSION, datapkg_extra.EXTRA)").split() == ["1.0", "42"]
    tool = venv / "bin" / "datapkg-tool"
    assert tool.read_bytes().startswith(b"#!" + os.fsencode(venv / "bin" / "python") + b"\n")
    assert subprocess.run([tool], capture_output=True, text=True, check=True).stdout == "tool datapkg\n"
    assert subprocess.run([venv / "bin" / "demo-hello"], capture_output=True, text=True,
                          check=True).stdout == "demo 1.0\n"
    assert (venv / "bin" / "datapkg-gui").exists()
    assert (venv / "include" / "site" / "python3.11" / "datapkg" / "datapkg.h").read_bytes() == b"#define DATAPKG 1\n"
    assert (venv / "share" / "datapkg" / "notes.txt").read_text() == "data scheme file\n"


def test_materialized_record_files_are_valid(tmp_path: Path, wheels: dict[str, Path]) -> None:
    """Every RECORD row of a materialized distribution names an existing file with the right hash."""
    store = tmp_path / "store"
    venv = managed_venv(tmp_path / "venv", store)
    _add(store, venv, str(wheels["datapkg"]))
    rows = json.loads(_py(venv, (
        "import importlib.metadata as m, json\n"
        "d = m.distribution('datapkg')\n"
        "print(json.dumps([[str(f), str(f.locate()), f.hash.value if f.hash else None] for f in d.files]))"
    )))
    assert any(r[0].endswith("bin/datapkg-cli") for r in rows)
    checked = 0
    for rel, located, digest in rows:
        path = Path(located)
        if digest is None:
            continue
        raw = hashlib.sha256(path.read_bytes()).digest()
        import base64

        assert base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == digest, rel
        checked += 1
    assert checked >= 8
    for name in REWRITTEN_METADATA & {"INSTALLER", "RECORD"}:
        assert (_site(venv) / "datapkg-1.0.dist-info" / name).stat().st_nlink == 1


def test_relink_with_another_mode(tmp_path: Path, wheels: dict[str, Path]) -> None:
    """`materialize --link-mode copy` on a hardlinked venv gives it copies (and back)."""
    store = tmp_path / "store"
    venv = managed_venv(tmp_path / "venv", store)
    _add(store, venv, str(wheels["demo1"]), mode="hardlink")
    _assert_mode(venv, store, "hardlink")
    out = json.loads(run_cli(store, "materialize", str(venv), "--link-mode", "copy", "--json").stdout)
    assert out["link_mode"] == "copy"
    _assert_mode(venv, store, "copy")
    run_cli(store, "materialize", str(venv), "--link-mode", "hardlink")
    _assert_mode(venv, store, "hardlink")


def test_forced_reflink_on_ext4_fails_clearly(tmp_path: Path, wheels: dict[str, Path]) -> None:
    store = tmp_path / "store"
    venv = managed_venv(tmp_path / "venv", store)
    _add(store, venv, str(wheels["demo1"]), mode="copy")
    proc = run_cli(store, "materialize", str(venv), "--link-mode", "reflink", check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "reflink" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    # Nothing half-done: the venv is still all copies and still works.
    _assert_mode(venv, store, "copy")
    assert _py(venv, "import demo; print(demo.VERSION)").strip() == "1.0"


# -- across filesystems (store on tmpfs, venv on ext4) --------------------------------------------------


@pytest.fixture
def tmpfs_store() -> Iterator[Path]:
    shm = Path("/dev/shm")  # noqa: S108 - a tmpfs, for a store on another filesystem than the venv
    if not shm.is_dir():
        missing_tool("no /dev/shm tmpfs")
    base = shm.resolve() / f"venvfs-test-{os.getpid()}-{os.urandom(4).hex()}"
    base.mkdir()
    try:
        yield base / "store"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_cross_filesystem_falls_back_to_copy(tmpfs_store: Path, tmp_path: Path, wheels: dict[str, Path]) -> None:
    venv = managed_venv(tmp_path / "venv", tmpfs_store)
    assert os.stat(tmpfs_store).st_dev != os.stat(venv).st_dev
    _add(tmpfs_store, venv, str(wheels["demo1"]), mode="copy")
    out = json.loads(run_cli(tmpfs_store, "materialize", str(venv), "--json").stdout)
    # Nothing to do: every file is already a copy.
    out = json.loads(_add(tmpfs_store, venv, str(wheels["datapkg"])).stdout)
    assert "by copy" in out["links"] and "hardlink unavailable" in out["links"], out
    assert out["links"].endswith("using copy)"), out
    _assert_mode(venv, tmpfs_store, "copy")
    assert Venv(venv).read_state().link_mode == "copy"
    proc = run_cli(tmpfs_store, "materialize", str(venv), "--link-mode", "hardlink", check=False)
    if proc.returncode == 0:  # nothing needed relinking? then force it on a fresh venv
        pytest.fail(f"forcing hardlinks across filesystems succeeded: {proc.stdout}")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- XFS with reflinks (root: loop-mounted image) -------------------------------------------------------


def test_reflink_on_xfs(xfs_mount: Path, wheels: dict[str, Path]) -> None:
    base = xfs_mount / f"reflink-{os.urandom(4).hex()}"
    base.mkdir()
    try:
        store = base / "store"
        venv = managed_venv(base / "venv", store)
        out = json.loads(_add(store, venv, str(wheels["demo1"]), str(wheels["datapkg"])).stdout)
        assert "by reflink" in out["links"] and "unavailable" not in out["links"], out
        _assert_mode(venv, store, "reflink")
        assert Venv(venv).read_state().link_mode == "reflink"
        # Forcing reflink works here, and status tells the truth: reflinked files are not the venv's bytes.
        run_cli(store, "materialize", str(venv), "--link-mode", "reflink")
        status = json.loads(run_cli(store, "status", str(venv), "--json").stdout)
        assert status["link_mode"] == "reflink"
        assert _py(venv, "import demo; print(demo.VERSION)").strip() == "1.0"
        # Editing a reflinked file leaves the store object alone (copy on write).
        dst, obj = _placed_files(venv, store)[0]
        before = obj.read_bytes()
        with open(dst, "ab") as f:
            f.write(b"# edited\n")
        assert obj.read_bytes() == before
        assert run_cli(store, "store", "verify").returncode == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_xfs_store_ext4_venv_falls_back_to_copy(xfs_mount: Path, tmp_path: Path, wheels: dict[str, Path]) -> None:
    store = xfs_mount / f"store-{os.urandom(4).hex()}"
    try:
        venv = managed_venv(tmp_path / "venv", store)
        out = json.loads(run_cli(store, "add", str(venv), str(wheels["demo1"]), "--json").stdout)
        assert "by copy" in out["links"] and "unavailable" in out["links"], out
        _assert_mode(venv, store, "copy")
        proc = run_cli(store, "materialize", str(venv), "--link-mode", "reflink", check=False)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    finally:
        shutil.rmtree(store, ignore_errors=True)


# -- verify ---------------------------------------------------------------------------------------------


def test_verify_names_the_venv_using_an_object_edited_through_a_hardlink(tmp_path: Path,
                                                                         wheels: dict[str, Path]) -> None:
    store = tmp_path / "store"
    venv = managed_venv(tmp_path / "venv", store)
    other = managed_venv(tmp_path / "other", store)
    _add(store, venv, str(wheels["demo1"]), mode="hardlink")
    _add(store, other, str(wheels["datapkg"]), mode="hardlink")
    assert run_cli(store, "store", "verify").returncode == 0
    helper = _site(venv) / "demo" / "sub" / "helpers.py"
    os.chmod(helper, 0o644)  # what an editor does to a read-only file
    with open(helper, "a") as f:
        f.write("# edited through the hardlink\n")
    proc = run_cli(store, "store", "verify", check=False)
    assert proc.returncode == 5
    assert "modified" in proc.stdout and str(venv) in proc.stdout and str(other) not in proc.stdout
    report = json.loads(run_cli(store, "store", "verify", "--json", check=False).stdout)
    assert not report["ok"]
    (digest,) = report["problems"]
    assert report["affected_venvs"][digest] == [str(venv)]
    assert digest == hashlib.sha256(b"def double(x):\n    return 2 * x\n").hexdigest()


def test_verify_detects_a_missing_object(tmp_path: Path, wheels: dict[str, Path]) -> None:
    store = tmp_path / "store"
    venv = managed_venv(tmp_path / "venv", store)
    _add(store, venv, str(wheels["demo1"]), mode="copy")
    _dst, obj = _placed_files(venv, store)[0]
    obj.unlink()
    report = json.loads(run_cli(store, "store", "verify", "--json", check=False).stdout)
    assert list(report["problems"].values()) == ["missing"]
    assert list(report["affected_venvs"].values()) == [[str(venv)]]


def test_verify_checks_the_shared_bytecode(tmp_path: Path, wheels: dict[str, Path]) -> None:
    # Mounts show store bytecode as symlinks into the store, so a chmod or a write that follows one
    # reaches the shared .pyc: verify must see it, although a .pyc is not named by its own hash.
    store = tmp_path / "store"
    venv = managed_venv(tmp_path / "venv", store)
    _add(store, venv, str(wheels["demo1"]), mode="copy")
    digest = hashlib.sha256(b"def double(x):\n    return 2 * x\n").hexdigest()
    (pyc,) = (store / "bytecode").glob(f"*/*/{digest}.pyc")
    report = json.loads(run_cli(store, "store", "verify", "--json").stdout)
    assert report["ok"] and report["bytecode_checked"] >= 3
    name = f"{pyc.parent.parent.name}/{digest}"
    good = pyc.read_bytes()
    for damage, problem in ((lambda: pyc.chmod(0o644), "writable"),
                            (lambda: pyc.write_bytes(good[:-8]), "modified"),
                            (lambda: pyc.write_bytes(good[:10]), "truncated")):
        damage()
        if problem != "writable":
            pyc.chmod(0o444)
        proc = run_cli(store, "store", "verify", check=False)
        assert proc.returncode == 5 and f"{problem}: bytecode {pyc}" in proc.stdout and str(venv) in proc.stdout
        report = json.loads(run_cli(store, "store", "verify", "--json", check=False).stdout)
        assert report["bad_bytecode"] == {name: problem} and report["affected_venvs"][digest] == [str(venv)]
        pyc.chmod(0o644)
        pyc.write_bytes(good)
        pyc.chmod(0o444)
    assert run_cli(store, "store", "verify").returncode == 0


# -- add / remove (select.py) ---------------------------------------------------------------------------


def test_add_requirement_remove_and_upgrade(tmp_path: Path, wheels: dict[str, Path], compiled_wheel: Path) -> None:
    store = tmp_path / "store"
    run_cli(store, "store", "add", str(wheels["demo1"]), str(wheels["demo2"]), str(compiled_wheel))
    venv = managed_venv(tmp_path / "venv", store)
    # A requirement picks the best stored build that fits.
    out = json.loads(_add(store, venv, "demo<2", "markupsafe").stdout)
    assert sorted(k.split("-")[0] + "-" + k.split("-")[1] for k in out["added"]) == ["demo-1.0", "markupsafe-" +
                                                                                      compiled_wheel.name.split("-")[1]]
    assert _py(venv, "import demo, markupsafe; print(demo.VERSION, markupsafe.escape('<'))").split() == ["1.0", "&lt;"]
    # Upgrade replaces: 2.0's files in, 1.0's out, the console script now runs 2.0.
    out = json.loads(_add(store, venv, "demo>=2").stdout)
    assert [k.startswith("demo-1.0-") for k in out["removed"]] == [True]
    assert [k.startswith("demo-2.0-") for k in out["added"]] == [True]
    assert not (_site(venv) / "demo-1.0.dist-info").exists()
    assert (_site(venv) / "demo-2.0.dist-info" / "RECORD").exists()
    assert subprocess.run([venv / "bin" / "demo-hello"], capture_output=True, text=True,
                          check=True).stdout == "demo 2.0\n"
    # Remove deletes the files and the console script.
    json.loads(run_cli(store, "remove", str(venv), "demo", "--json").stdout)
    assert not (_site(venv) / "demo").exists()
    assert not (_site(venv) / "demo-2.0.dist-info").exists()
    assert not (venv / "bin" / "demo-hello").exists()
    assert [k.startswith("markupsafe-") for k in Venv(venv).read_state().selection] == [True]
    proc = _py(venv, "import importlib.util as u; print(u.find_spec('demo'))")
    assert proc.strip() == "None"


def test_add_unmatched_requirement_exit_8(tmp_path: Path, wheels: dict[str, Path]) -> None:
    store = tmp_path / "store"
    run_cli(store, "store", "add", str(wheels["demo1"]))
    venv = managed_venv(tmp_path / "venv", store)
    for spec in ("demo>=5", "nothing-like-this"):
        proc = _add(store, venv, spec, check=False)
        assert proc.returncode == 8, (spec, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert Venv(venv).read_state().selection == []


def test_add_invalid_requirement_one_line_error(tmp_path: Path) -> None:
    store = tmp_path / "store"
    venv = managed_venv(tmp_path / "venv", store)
    proc = _add(store, venv, "not a requirement !!", check=False)
    assert proc.returncode == 8
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_add_wheel_for_another_platform_exit_8(tmp_path: Path) -> None:
    store = tmp_path / "store"
    spec = simple_package("winonly", "1.0")
    spec.tag = "cp311-cp311-win_amd64"
    spec.wheel_metadata = "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp311-cp311-win_amd64\n"
    run_cli(store, "store", "add", str(build_wheel(tmp_path, spec)))
    venv = managed_venv(tmp_path / "venv", store)
    proc = _add(store, venv, "winonly", check=False)
    assert proc.returncode == 8 and "win_amd64" in proc.stderr, proc.stderr


def test_remove_unknown_name_exit_8(tmp_path: Path) -> None:
    store = tmp_path / "store"
    venv = managed_venv(tmp_path / "venv", store)
    proc = run_cli(store, "remove", str(venv), "absent", check=False)
    assert proc.returncode == 8 and "absent" in proc.stderr


def test_adopt_after_add_changes_nothing(tmp_path: Path, wheels: dict[str, Path]) -> None:
    """A venv materialized by `venvfs add`, adopted again, maps back to the very records it came from
    (headers, #!python scripts and generated console scripts included)."""
    store = tmp_path / "store"
    venv = managed_venv(tmp_path / "venv", store)
    added = json.loads(_add(store, venv, str(wheels["datapkg"]), str(wheels["demo1"])).stdout)["added"]
    report = json.loads(run_cli(store, "adopt", str(venv), "--no-hooks", "--json").stdout)
    assert report["new_dists"] == [] and report["new_objects"] == 0, report
    assert sorted(report["selection"]) == sorted(added)
    assert report["kept_in_venv"] == {}
