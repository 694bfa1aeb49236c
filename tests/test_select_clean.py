"""Selections change cleanly (issue 15, finding 3 and outcome 5): after ``venvfs add`` and ``remove``,
upgrades and downgrades, site-packages is what a plain venv given the same packages holds, in both
layouts; no dist-info of a build that left the selection stays behind (the venv's own RECORD,
INSTALLER or REQUESTED in the upper layer or as real files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import create_venv, stop_mount, uv
from tests.sitetree import assert_same_site_packages
from tests.wheelbuilder import WheelSpec, build_wheel
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

Run = Callable[..., subprocess.CompletedProcess[str]]


def tools(version: str) -> WheelSpec:
    """Like setuptools: a package whose next version drops a module and adds one."""
    files = {"tools/__init__.py": f"VERSION = {version!r}\n".encode(), "tools/data.txt": b"table " * 50}
    files["tools/old.py" if version == "1.0" else "tools/new.py"] = b"X = 1\n"
    return WheelSpec(name="tools", version=version, files=files)


def wheelhouse(d: Path) -> Path:
    build_wheel(d, tools("1.0"))
    build_wheel(d, tools("2.0"))
    # Like pip: a console script; like torch: requires the newer tools.
    build_wheel(d, WheelSpec(name="pipish", version="1.0", files={"pipish/__init__.py": b"def main(): pass\n"},
                             entry_points="[console_scripts]\npipish = pipish:main\n"))
    build_wheel(d, WheelSpec(name="needs", version="1.0", files={"needs.py": b"import tools\n"},
                             requires=("tools>=2",)))
    return d


def _uv_pip(venv: Path, wheels: Path, *args: str) -> None:
    subprocess.run([uv(), "pip", *args, "--python", str(venv / "bin/python"), "-q",
                    *(["--no-index", "--find-links", str(wheels)] if args[0] == "install" else [])], check=True)


def _versions(venv: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps(sorted((d.metadata['Name'], d.version) for d in m.distributions())))")
    out = subprocess.run([str(venv / "bin/python"), "-c", code], check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out))


@pytest.fixture(params=["materialized", "mounted"])
def pair(request: pytest.FixtureRequest, store: Store, run_venvfs: Run, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A venvfs venv and a plain one, both with tools 1.0 and pipish 1.0 installed by uv; the venvfs
    one adopted (and mounted), the store holding the other wheels."""
    if request.param == "mounted":
        request.getfixturevalue("require_fuse")
    wheels = wheelhouse(tmp_path / "wheels")
    # The same name in both: scripts and RECORD rows name the venv's own path only through bin/.
    ours = create_venv((tmp_path / "ours").mkdir() or tmp_path / "ours" / "v", "uv")
    plain = create_venv((tmp_path / "plain").mkdir() or tmp_path / "plain" / "v", "uv")
    for v in (ours, plain):
        _uv_pip(v, wheels, "install", "tools==1.0", "pipish==1.0")
    run_venvfs("adopt", str(ours))
    run_venvfs("store", "add", str(wheels))
    try:
        if request.param == "mounted":
            run_venvfs("mount", str(ours))
        yield ours, plain
    finally:
        stop_mount(ours)


def test_add_remove_upgrade_downgrade_end_as_in_a_plain_venv(pair: tuple[Path, Path], run_venvfs: Run,
                                                            tmp_path: Path) -> None:
    ours, plain = pair
    wheels = tmp_path / "wheels"
    sp_ours, sp_plain = Venv(ours).site_packages, Venv(plain).site_packages
    assert_same_site_packages(sp_ours, sp_plain, when="after adopt")
    placed: set[str] = set()
    steps: list[tuple[str, list[str], list[str], set[str]]] = [
        # venvfs add v torch: torch's requirement replaces the selected setuptools (finding 3).
        ("add, replacing a dependency", ["add", "needs"], ["install", "needs==1.0"],
         {"needs-1.0.dist-info", "tools-2.0.dist-info"}),
        # venvfs remove v pip (finding 3).
        ("remove", ["remove", "pipish"], ["uninstall", "pipish"], set()),
        ("downgrade", ["add", "tools==1.0", "--no-deps"], ["install", "tools==1.0"], {"tools-1.0.dist-info"}),
        ("upgrade", ["add", "tools>=2"], ["install", "tools==2.0"], {"tools-2.0.dist-info"}),
    ]
    for when, ours_cmd, plain_cmd, now_placed in steps:
        run_venvfs(ours_cmd[0], str(ours), *ours_cmd[1:])
        _uv_pip(plain, wheels, *plain_cmd)
        placed = {d for d in placed | now_placed if (sp_plain / d).exists()}
        assert_same_site_packages(sp_ours, sp_plain, placed_by_venvfs=placed, when=f"after {when}")
        assert _versions(ours) == _versions(plain), when
    upper = ours / ".venvfs/upper"
    if upper.exists():
        # Nothing of a build that left: the store serves what is selected, and venvfs placed those.
        assert sorted(str(p.relative_to(upper)) for p in upper.rglob("*") if "tools" in str(p)
                      or "pipish" in str(p) or "needs" in str(p)) == []


def test_a_killed_add_finished_later_leaves_no_stale_dist_info(pair: tuple[Path, Path], run_venvfs: Run,
                                                              store: Store, tmp_path: Path) -> None:
    """An add killed before it removed anything (``select:removing``) is finished by the next command,
    which clears what the replaced build left in the venv as the add would have."""
    ours, plain = pair
    wheels = tmp_path / "wheels"
    killed = subprocess.run([sys.executable, "-m", "venvfs", "add", str(ours), "needs"], capture_output=True,
                            text=True, env={**os.environ, "VENVFS_STORE": str(store.root),
                                            "VENVFS_TEST_CRASH_AT": "select:removing"})
    assert killed.returncode == 137, killed.stderr
    run_venvfs("remove", str(ours), "pipish")  # finishes the add first
    _uv_pip(plain, wheels, "install", "needs==1.0")
    _uv_pip(plain, wheels, "uninstall", "pipish")
    assert_same_site_packages(Venv(ours).site_packages, Venv(plain).site_packages,
                              placed_by_venvfs={"needs-1.0.dist-info", "tools-2.0.dist-info"})
    assert _versions(ours) == _versions(plain)


def test_switching_to_another_build_of_the_same_version_leaves_nothing_of_the_first(
        pair: tuple[Path, Path], run_venvfs: Run, tmp_path: Path) -> None:
    """``venvfs add VENV KEY`` of a build with other content but the same dist-info name: the venv's
    copies of the first build's RECORD and INSTALLER would shadow the second's."""
    ours, plain = pair
    other = tools("1.0")
    other.files = {**other.files, "tools/__init__.py": b"VERSION = '1.0'  # rebuilt\n"}
    wheel = build_wheel(tmp_path / "rebuilt", other)
    added = run_venvfs("store", "add", str(wheel))
    (key,) = [w for w in added.stdout.split() if w.startswith("tools-1.0-")]
    run_venvfs("add", str(ours), key)
    subprocess.run([uv(), "pip", "install", "-q", "--reinstall", "--no-deps", "--python", str(plain / "bin/python"),
                    str(wheel)], check=True)
    assert_same_site_packages(Venv(ours).site_packages, Venv(plain).site_packages,
                              placed_by_venvfs={"tools-1.0.dist-info"})


def test_a_file_the_user_deleted_comes_back_with_a_fresh_install(pair: tuple[Path, Path], run_venvfs: Run,
                                                                 tmp_path: Path) -> None:
    """The whiteout a deletion left goes with its build, also from a directory the daemon has not
    visited since it started: re-adding the build shows the file, as a plain reinstall does."""
    ours, plain = pair
    wheels = tmp_path / "wheels"
    for v in (ours, plain):
        (Venv(v).site_packages / "tools/old.py").unlink()
    if (ours / ".venvfs/upper").exists():
        run_venvfs("umount", str(ours))
        run_venvfs("mount", str(ours))  # a new daemon: tools/ never looked at
    run_venvfs("remove", str(ours), "tools")
    _uv_pip(plain, wheels, "uninstall", "tools")
    assert_same_site_packages(Venv(ours).site_packages, Venv(plain).site_packages, when="after remove")
    run_venvfs("add", str(ours), "tools==1.0")
    _uv_pip(plain, wheels, "install", "tools==1.0")
    assert_same_site_packages(Venv(ours).site_packages, Venv(plain).site_packages,
                              placed_by_venvfs={"tools-1.0.dist-info"}, when="after add")
    assert (Venv(ours).site_packages / "tools/old.py").read_bytes() == b"X = 1\n"


@pytest.mark.parametrize("pair", ["mounted"], indirect=True)
@pytest.mark.parametrize("unmounted", [True, False], ids=["unmounted", "mounted"])
def test_remove_takes_an_opaque_package_directory_along(pair: tuple[Path, Path], run_venvfs: Run, tmp_path: Path,
                                                        unmounted: bool) -> None:
    """uv -U replaces tools/ (an opaque directory in the upper layer, which commit leaves: finding 1),
    then venvfs remove, with the venv unmounted or mounted: no empty tools/ may stay, nor hide a
    later build's."""
    ours, plain = pair
    wheels = tmp_path / "wheels"
    for v in (ours, plain):
        _uv_pip(v, wheels, "install", "-U", "tools")
    run_venvfs("commit", str(ours))
    if unmounted:
        run_venvfs("umount", str(ours))
    run_venvfs("remove", str(ours), "tools")
    _uv_pip(plain, wheels, "uninstall", "tools")
    if unmounted:
        run_venvfs("mount", str(ours))
    assert_same_site_packages(Venv(ours).site_packages, Venv(plain).site_packages, when="after remove")
    run_venvfs("add", str(ours), "tools==2.0")
    _uv_pip(plain, wheels, "install", "tools==2.0")
    assert_same_site_packages(Venv(ours).site_packages, Venv(plain).site_packages,
                              placed_by_venvfs={"tools-2.0.dist-info"}, when="after add")
