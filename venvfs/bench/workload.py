"""The workload: which wheels one venv receives and which modules its import measurement loads.

The default scientific set is downloaded once into the user cache directory, then used offline; a
requirements file is downloaded the same way (keyed by its content); a wheelhouse is used as given.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from venvfs.bench import wheels as synth

SCI_REQUIREMENTS = ["numpy", "scipy", "pandas", "scikit-learn", "matplotlib"]
SCI_IMPORTS = ["numpy", "scipy", "pandas", "sklearn", "matplotlib"]


class WorkloadError(Exception):
    """The workload cannot be prepared (download failed, empty wheelhouse, bad requirements file)."""


@dataclass
class Workload:
    name: str
    wheelhouse: Path
    requirements: list[str]  # what the installer is asked for, resolved offline against the wheelhouse
    imports: list[str]  # empty: derived from the installed distributions (see ``derive_imports``)
    extra_wheel: Path  # the "one more package" of the pip install measurement
    source: str = ""
    skipped_imports: dict[str, str] = field(default_factory=dict)

    @property
    def wheels(self) -> list[Path]:
        return sorted(self.wheelhouse.glob("*.whl"))

    def describe(self) -> dict[str, Any]:
        wheels = self.wheels
        return {
            "name": self.name,
            "source": self.source,
            "wheelhouse": str(self.wheelhouse),
            "requirements": self.requirements,
            "wheels": [w.name for w in wheels],
            "wheel_bytes": sum(w.stat().st_size for w in wheels),
            "imports": self.imports,
            "skipped_imports": self.skipped_imports,
        }


def cache_root() -> Path:
    return Path(platformdirs.user_cache_dir("venvfs")) / "bench"


def _python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def _download(requirements: list[str], dest: Path, extra_args: list[str]) -> None:
    """``pip download`` binary wheels into ``dest`` (atomically: a half download is never reused)."""
    if (dest / "complete.json").exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".part."))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
               "--only-binary", ":all:", "-d", str(tmp), *extra_args, *requirements]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise WorkloadError(f"pip download failed ({tail}); give a local --wheelhouse DIR instead")
        (tmp / "complete.json").write_text(json.dumps({"requirements": requirements}) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _extra(workdir: Path) -> Path:
    return synth.extra_wheel(workdir / "extra-wheel")


def scientific(workdir: Path) -> Workload:
    dest = cache_root() / f"wheelhouse-sci-{_python_tag()}"
    _download(SCI_REQUIREMENTS, dest, [])
    return Workload("scientific", dest, list(SCI_REQUIREMENTS), list(SCI_IMPORTS), _extra(workdir),
                    source="default set, cached in " + str(dest))


def from_requirements(path: Path, workdir: Path) -> Workload:
    try:
        text = path.read_text()
    except OSError as e:
        raise WorkloadError(f"cannot read {path}: {e}") from e
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    dest = cache_root() / f"wheelhouse-req-{_python_tag()}-{key}"
    _download([], dest, ["-r", str(path.absolute())])
    # The requirements file itself, not the downloaded closure, is what a user asks for.
    return Workload(f"requirements:{path.name}", dest, ["-r", str(path.absolute())], [], _extra(workdir),
                    source=str(path))


def from_wheelhouse(directory: Path, workdir: Path) -> Workload:
    names: dict[str, None] = {}
    for whl in sorted(directory.glob("*.whl")):
        try:
            name = parse_wheel_filename(whl.name)[0]
        except InvalidWheelFilename:
            continue
        names[str(name)] = None
    if not names:
        raise WorkloadError(f"{directory}: no wheel files")
    return Workload(f"wheelhouse:{directory.name}", directory.absolute(), list(names), [], _extra(workdir),
                    source=str(directory))


def synthetic(workdir: Path, *, packages: int, files_per_package: int, data_bytes: int, name: str) -> Workload:
    wh = workdir / f"wheelhouse-{name}"
    _, imports = synth.synthetic_wheelhouse(wh, packages=packages, files_per_package=files_per_package,
                                            data_bytes=data_bytes)
    reqs = [f"vfsbench-p{i}" for i in range(packages)]
    return Workload(name, wh, reqs, imports, _extra(workdir),
                    source=f"{packages} synthetic packages x {files_per_package} files")


def quick(workdir: Path) -> Workload:
    return synthetic(workdir, packages=3, files_per_package=60, data_bytes=2 << 20, name="quick")


def top_level_names(site_packages: Path) -> list[str]:
    """Importable top-level names of the installed distributions (top_level.txt, else RECORD)."""
    names: dict[str, None] = {}
    for di in sorted(site_packages.glob("*.dist-info")):
        candidates: list[str] = []
        tl = di / "top_level.txt"
        if tl.exists():
            candidates = [n.strip() for n in tl.read_text().splitlines() if n.strip()]
        elif (di / "RECORD").exists():
            for line in (di / "RECORD").read_text().splitlines():
                first = line.split(",", 1)[0].split("/", 1)
                if (len(first) == 2 and first[1] == "__init__.py") or (
                    len(first) == 1 and first[0].endswith(".py")
                ):
                    candidates.append(first[0].removesuffix(".py"))
        for n in candidates:
            if n.isidentifier() and not n.startswith("_") and (
                (site_packages / n).is_dir() or (site_packages / f"{n}.py").exists()
            ):
                names[n] = None
    return list(names)


def derive_imports(workload: Workload, python: Path, site_packages: Path) -> None:
    """Fill ``workload.imports`` with the top-level modules that import cleanly in the seed venv.

    Some distributions ship modules that need optional dependencies; those would fail in every venv
    alike, so they are left out and reported, rather than failing the whole import measurement.
    """
    if workload.imports:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    for name in top_level_names(site_packages):
        proc = subprocess.run([str(python), "-I", "-c", f"import {name}"], capture_output=True, text=True,
                              env=env, timeout=300)
        if proc.returncode == 0:
            workload.imports.append(name)
        else:
            lines = proc.stderr.strip().splitlines() or ["failed"]
            workload.skipped_imports[name] = lines[-1][:200]
    if not workload.imports:
        raise WorkloadError("no installed module imports cleanly; give --import NAMES")
