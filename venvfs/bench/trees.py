"""Making venvs from a seed venv: the empty skeleton, site-packages populated file by file by copy,
hardlink, symlink or reflink, console scripts re-pointed at the new interpreter, and the split of a
site-packages into one directory per distribution (the lower layers of the overlay references)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from venvfs.bench.scratch import FICLONE


def uv_binary() -> str | None:
    return shutil.which("uv")


def make_skeleton(python: str, dest: Path) -> Path:
    """An empty venv (interpreter links, pyvenv.cfg, no packages); returns its site-packages."""
    uv = uv_binary()
    if uv:
        # uv venv takes ~20 ms, python -m venv ~50 ms: the floor every strategy pays alike.
        subprocess.run([uv, "venv", "-q", "--python", python, str(dest)], check=True, capture_output=True)
    else:
        subprocess.run([python, "-m", "venv", "--without-pip", str(dest)], check=True, capture_output=True)
    return site_packages(dest)


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    if len(found) != 1:
        raise RuntimeError(f"{venv}: expected one lib/python*/site-packages, found {len(found)}")
    return found[0]


def _reflink(src: str, dst: str) -> None:
    with open(src, "rb") as s, open(dst, "wb") as d:
        fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
    shutil.copystat(src, dst)


def _symlink(src: str, dst: str) -> None:
    os.symlink(src, dst)


def _copy(src: str, dst: str) -> None:
    # copy2 keeps mtimes, so the seed's timestamp .pyc files stay valid in the copy.
    shutil.copy2(src, dst)


LINKERS: dict[str, Callable[[str, str], None]] = {
    "copy": _copy, "hardlink": os.link, "symlink": _symlink, "reflink": _reflink,
}


def populate(seed_sp: Path, dest_sp: Path, mode: str) -> int:
    """Fill ``dest_sp`` with every entry of ``seed_sp`` (directories are always real); returns files."""
    link = LINKERS[mode]
    count = 0
    seed = str(seed_sp)
    for dirpath, dirnames, filenames in os.walk(seed):
        rel = os.path.relpath(dirpath, seed)
        target = os.path.join(dest_sp, rel) if rel != "." else str(dest_sp)
        os.makedirs(target, exist_ok=True)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            src = os.path.join(dirpath, name)
            dst = os.path.join(target, name)
            if os.path.lexists(dst):
                continue  # the skeleton's own file (uv's _virtualenv.pth): already there
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            else:
                link(src, dst)
            count += 1
    return count


def copy_scripts(seed: Path, dest: Path) -> None:
    """Console scripts of the seed, re-pointed at the new venv's interpreter (as an installer writes)."""
    old = os.fsencode(seed)
    new = os.fsencode(dest)
    for entry in sorted((seed / "bin").iterdir()):
        target = dest / "bin" / entry.name
        if target.exists() or target.is_symlink() or entry.is_symlink() or not entry.is_file():
            continue
        data = entry.read_bytes()
        if data.startswith(b"#!"):
            first, _, rest = data.partition(b"\n")
            data = first.replace(old, new) + b"\n" + rest
        target.write_bytes(data)
        target.chmod(entry.stat().st_mode & 0o7777)


def _record_owners(seed_sp: Path) -> dict[str, str]:
    """Relative path -> distribution (dist-info dir name), from every RECORD in site-packages."""
    owners: dict[str, str] = {}
    for di in sorted(seed_sp.glob("*.dist-info")):
        owners[di.name] = di.name
        with contextlib.suppress(OSError):
            for line in (di / "RECORD").read_text().splitlines():
                path = line.rsplit(",", 2)[0].strip()
                if path and not path.startswith(("..", "/")):
                    owners[os.path.normpath(path)] = di.name
    return owners


def split_layers(seed_sp: Path, layers: Path) -> list[str]:
    """Hardlink the seed's site-packages into one directory per distribution, as an image builder or
    a store would lay them out; returns the layer names, lowest priority last (overlayfs order).

    Bytecode belongs to the distribution of its source; files no RECORD names go to a last layer.
    """
    owners = _record_owners(seed_sp)
    names: dict[str, str] = {}
    seed = str(seed_sp)
    for dirpath, dirnames, filenames in os.walk(seed):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, seed)
            owner = owners.get(rel)
            if owner is None and "__pycache__" in rel:
                parent = os.path.dirname(os.path.dirname(rel))
                source = name.split(".", 1)[0] + ".py"
                owner = owners.get(os.path.join(parent, source))
            if owner is None:
                # A file inside a .dist-info directory that its RECORD does not list (uv's REQUESTED).
                owner = owners.get(rel.split(os.sep, 1)[0]) or "zz-unowned"
            layer = names.setdefault(owner, f"{len(names):02d}")
            dst = layers / layer / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            else:
                os.link(src, dst)
    return sorted(names.values(), reverse=True)
