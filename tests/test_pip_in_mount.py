"""pip and uv inside a mounted venv end with the same files as a plain venv given the same commands."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import stop_mount, uv
from tests.wheelbuilder import WheelSpec, build_wheel, simple_package
from venvfs.mount import daemon
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

pytestmark = pytest.mark.fuse

Run = Callable[..., subprocess.CompletedProcess[str]]


def tree(venv: Path) -> dict[str, str]:
    """site-packages and bin: relative path -> sha256 (+ exec bit), or the symlink target.

    Left out: ``__pycache__`` (a .pyc embeds its source's mtime, which differs between any two
    installs, and so do their hashes in RECORD), the hashes of scripts in RECORD (their shebang holds the
    venv's path), the activation scripts (venvfs adds its automount block to them) and ``.venvfs``
    (venvfs's own state, which only the mounted venv has). The venv's own path inside generated scripts
    is replaced by a placeholder, as the two venvs live in different places.
    """
    out: dict[str, str] = {}
    for top in (Venv(venv).site_packages, venv / "bin"):
        for dirpath, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".venvfs"))
            for name in names:
                if top.name == "bin" and name.lower().startswith("activate"):
                    continue
                path = Path(dirpath) / name
                rel = str(path.relative_to(venv))
                if path.is_symlink():
                    out[rel] = "-> " + os.readlink(path).replace(str(venv), "VENV")
                    continue
                data = path.read_bytes().replace(os.fsencode(venv), b"VENV")
                if name == "RECORD":
                    data = b"".join(line.split(b",")[0] + b"\n" if line.startswith(b"../../../bin/") else line
                                    for line in data.splitlines(keepends=True) if b"__pycache__" not in line)
                out[rel] = hashlib.sha256(data).hexdigest() + ("x" if os.access(path, os.X_OK) else "")
            for d in dirs:
                out[str((Path(dirpath) / d).relative_to(venv)) + "/"] = "dir"
    return out


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    d = tmp_path / "wheels"
    build_wheel(d, simple_package("demo", "1.0"))
    spec2 = simple_package("demo", "2.0")
    spec2.files = {**spec2.files, "demo/new_in_2.py": b"NEW = 2\n"}
    spec2.files.pop("demo/data/table.txt")
    build_wheel(d, spec2)
    build_wheel(d, WheelSpec(name="other", version="1.0", files={"other.py": b"print('other')\n"},
                             entry_points="[console_scripts]\nother-run = other:main\n"))
    return d


@pytest.fixture
def pair(fuse_mode: str, store: Store, make_venv: Callable[..., Path], run_venvfs: Run,
         wheels: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    # The same name in two places: activation scripts embed the name as the prompt.
    plain = make_venv("venv", parent=(tmp_path / "plain").mkdir() or tmp_path / "plain")
    mounted = make_venv("venv", parent=(tmp_path / "mounted").mkdir() or tmp_path / "mounted")
    for v in (plain, mounted):
        _pip(v, wheels, "install", "demo==1.0")
    try:
        run_venvfs("mount", str(mounted))
        assert daemon.mount_state(Venv(mounted)) == "mounted"
        yield plain, mounted
    finally:
        stop_mount(mounted)


def _pip(venv: Path, wheels: Path, *args: str) -> str:
    cmd = [str(venv / "bin/python"), "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    if args[0] == "install":
        cmd += ["--no-index", "--find-links", str(wheels)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _uv(venv: Path, wheels: Path, *args: str) -> None:
    subprocess.run([uv(), "pip", *args, "--python", str(venv / "bin/python"), "--no-index", "--find-links",
                    str(wheels), "-q"], check=True)


def test_pip_and_uv_inside_the_mount_match_a_plain_venv(pair: tuple[Path, Path], wheels: Path,
                                                        tmp_path: Path) -> None:
    plain, mounted = pair
    assert tree(mounted) == tree(plain)
    steps: list[Callable[[Path], object]] = [
        lambda v: _pip(v, wheels, "install", "other==1.0"),  # a new distribution
        lambda v: _pip(v, wheels, "install", "demo==2.0"),  # upgrade an adopted one
        lambda v: _pip(v, wheels, "install", "demo==1.0"),  # and downgrade it again
        lambda v: _pip(v, wheels, "uninstall", "-y", "other"),
        lambda v: _uv(v, wheels, "install", "other==1.0"),
    ]
    for i, step in enumerate(steps):
        for v in (plain, mounted):
            step(v)
        assert tree(mounted) == tree(plain), f"after step {i}"
    listing = {v: _pip(v, wheels, "list", "--format=freeze") for v in (plain, mounted)}
    assert listing[plain] == listing[mounted] and "other==1.0" in listing[mounted]
    for v in (plain, mounted):
        _pip(v, wheels, "check")
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("demo==2.0\n")
    for v in (plain, mounted):
        _uv(v, wheels, "sync", str(reqs))
    assert tree(mounted) == tree(plain)
    out = subprocess.run([str(mounted / "bin/python"), "-c", "import demo, demo.new_in_2; print(demo.VERSION)"],
                         check=True, capture_output=True, text=True).stdout
    assert out.strip() == "2.0"
    # The upper layer holds what changed, readable without the mount.
    assert (mounted / ".venvfs/upper/demo/new_in_2.py").read_bytes() == b"NEW = 2\n"
    assert sys.executable
