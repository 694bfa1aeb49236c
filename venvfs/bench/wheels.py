"""Small synthetic wheels: the ``--quick`` workload, scale runs (``--synthetic-files``), and the extra
package of the ``pip install`` measurement. Deterministic, built offline, with a valid RECORD."""

from __future__ import annotations

import base64
import hashlib
import random
import stat
import zipfile
from pathlib import Path

_DATE = (2020, 1, 1, 0, 0, 0)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(directory: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """Write ``name-version-py3-none-any.whl`` holding ``files`` (archive path -> content)."""
    directory.mkdir(parents=True, exist_ok=True)
    norm = name.replace("-", "_")
    dist_info = f"{norm}-{version}.dist-info"
    contents = dict(files)
    contents[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    contents[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: venvfs-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    contents[f"{dist_info}/top_level.txt"] = f"{norm}\n".encode()
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in contents.items())
    record += f"{dist_info}/RECORD,,\n"
    out = directory / f"{norm}-{version}-py3-none-any.whl"
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in [*contents.items(), (f"{dist_info}/RECORD", record.encode())]:
            info = zipfile.ZipInfo(path, date_time=_DATE)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    tmp.replace(out)
    return out


def synthetic_package(index: int, n_files: int, data_bytes: int = 0) -> dict[str, bytes]:
    """A package ``vfsbench_pN`` of ``n_files`` files: modules the import touches, plus one data blob.

    Modules are importable and import each other in a chain, so ``import vfsbench_pN`` loads them all,
    the way a real package's ``__init__`` pulls in its submodules.
    """
    mod = f"vfsbench_p{index}"
    files: dict[str, bytes] = {}
    n_modules = max(1, n_files - 2)
    per_dir = 50
    imports = []
    for i in range(n_modules):
        sub = f"d{i // per_dir}"
        rel = f"{mod}/{sub}/m{i}.py"
        files[rel] = (
            f'"""synthetic module {i} of {mod}"""\n\n'
            f"VALUE = {i}\n\n\ndef f{i}(x: int) -> int:\n    return x * {i} + VALUE\n"
        ).encode() + b"# padding\n" * (i % 7)
        if i < 400:  # importing thousands of modules would measure the interpreter, not the filesystem
            imports.append(f"from .{sub} import m{i}")
    for d in range(0, (n_modules + per_dir - 1) // per_dir):
        files[f"{mod}/d{d}/__init__.py"] = b""
    body = "\n".join(imports) + "\n"
    files[f"{mod}/__init__.py"] = body.encode()
    # Incompressible but reproducible, so the wheel's size matches what lands on disk.
    files[f"{mod}/data.bin"] = random.Random(index).randbytes(data_bytes)
    return files


def synthetic_wheelhouse(directory: Path, *, packages: int, files_per_package: int,
                         data_bytes: int = 0) -> tuple[list[Path], list[str]]:
    """Build ``packages`` wheels; returns the wheel paths and the module names to import."""
    wheels = []
    names = []
    for p in range(packages):
        name = f"vfsbench-p{p}"
        wheels.append(build_wheel(directory, name, "1.0", synthetic_package(p, files_per_package, data_bytes)))
        names.append(f"vfsbench_p{p}")
    return wheels, names


def extra_wheel(directory: Path) -> Path:
    """The one more small package that ``pip install`` puts into each venv under test."""
    files = {f"vfsbench_extra/m{i}.py": f"X = {i}\n".encode() for i in range(20)}
    files["vfsbench_extra/__init__.py"] = b"from . import m0\n"
    return build_wheel(directory, "vfsbench-extra", "1.0", files)
