"""``venvfs add`` resolves what a distribution requires from the store, with markers and extras."""

from __future__ import annotations

from pathlib import Path

import pytest

from venvfs.venv.venv import Venv

from conftest import create_venv, run_cli
from wheelbuilder import WheelSpec, build_wheel, simple_package


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    house = tmp_path / "wheels"
    specs = [
        simple_package("app", "1.0", requires=("lib>=2", "util", "never; python_version < '3'",
                                               "fancy; extra == 'x'")),
        simple_package("lib", "1.0"),
        simple_package("lib", "2.0"),
        simple_package("util", "1.0", requires=("lib",)),
        simple_package("fancy", "1.0"),
        simple_package("orphan", "1.0", requires=("absent>=1",)),
    ]
    for spec in specs:
        build_wheel(house, spec)
    return house


def _selected(venv: Path) -> list[str]:
    return sorted(key.rsplit("-", 1)[0] for key in Venv(venv).read_state().selection)


def _fresh(tmp_path: Path, store: Path, wheelhouse: Path) -> Path:
    run_cli(store, "store", "add", str(wheelhouse))
    return create_venv(tmp_path / "venv", "uv")


def test_add_brings_the_dependencies_it_needs(tmp_path: Path, wheelhouse: Path) -> None:
    store = tmp_path / "store"
    venv = _fresh(tmp_path, store, wheelhouse)
    run_cli(store, "add", str(venv), "app")
    # lib 2.0 (app needs >=2; util's bare "lib" is satisfied by it), util; no marker-excluded "never",
    # no "fancy" without the extra.
    assert _selected(venv) == ["app-1.0", "lib-2.0", "util-1.0"]
    out = (venv / "bin" / "app-hello")
    assert out.exists()


def test_add_with_an_extra_and_without_dependencies(tmp_path: Path, wheelhouse: Path) -> None:
    store = tmp_path / "store"
    venv = _fresh(tmp_path, store, wheelhouse)
    run_cli(store, "add", str(venv), "app[x]")
    assert "fancy-1.0" in _selected(venv)
    other = create_venv(tmp_path / "other", "uv")
    run_cli(store, "add", str(other), "app", "--no-deps")
    assert _selected(other) == ["app-1.0"]


def test_names_after_and_between_options(tmp_path: Path, wheelhouse: Path) -> None:
    """As pip takes them (argparse alone filled the names from the words before the first option, and
    left the later ones unrecognized, exit 2)."""
    store = tmp_path / "store"
    wheels = sorted(wheelhouse.glob("*.whl"))
    run_cli(store, "store", "add", str(wheels[0]), "--json", *map(str, wheels[1:]))
    venv = create_venv(tmp_path / "venv", "uv")
    run_cli(store, "add", str(venv), "util", "--no-deps", "lib==1.0", "--json", "fancy")
    assert _selected(venv) == ["fancy-1.0", "lib-1.0", "util-1.0"]
    run_cli(store, "remove", str(venv), "util", "--json", "fancy")
    assert _selected(venv) == ["lib-1.0"]


def test_a_missing_dependency_is_one_clear_error_and_changes_nothing(tmp_path: Path, wheelhouse: Path) -> None:
    store = tmp_path / "store"
    venv = _fresh(tmp_path, store, wheelhouse)
    proc = run_cli(store, "add", str(venv), "orphan", check=False)
    assert proc.returncode == 8
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "orphan requires absent>=1" in proc.stderr and "--no-deps" in proc.stderr
    assert _selected(venv) == []


def test_an_already_selected_dependency_is_kept_when_it_fits(tmp_path: Path, wheelhouse: Path) -> None:
    store = tmp_path / "store"
    venv = _fresh(tmp_path, store, wheelhouse)
    run_cli(store, "add", str(venv), "lib==1.0")
    run_cli(store, "add", str(venv), "util")  # "lib" is satisfied by the selected 1.0
    assert _selected(venv) == ["lib-1.0", "util-1.0"]
    run_cli(store, "add", str(venv), "app")  # app needs lib>=2: the selected 1.0 is upgraded
    assert _selected(venv) == ["app-1.0", "lib-2.0", "util-1.0"]


def test_wheel_files_bring_their_dependencies_too(tmp_path: Path, wheelhouse: Path) -> None:
    store = tmp_path / "store"
    venv = _fresh(tmp_path, store, wheelhouse)
    wheel = build_wheel(tmp_path / "more", WheelSpec(name="tool", version="0.1", requires=("util",),
                                                     files={"tool.py": b"X = 1\n"}))
    run_cli(store, "add", str(venv), str(wheel))
    assert _selected(venv) == ["lib-2.0", "tool-0.1", "util-1.0"]
