"""Build real wheels for tests, including deliberately broken and malicious ones."""

from __future__ import annotations

import base64
import hashlib
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@dataclass
class WheelSpec:
    name: str = "demo"
    version: str = "1.0"
    tag: str = "py3-none-any"
    files: Mapping[str, bytes] = field(default_factory=dict)  # archive path -> content (dist-info added)
    executables: frozenset[str] = frozenset()
    entry_points: str | None = None  # text of entry_points.txt
    symlinks: Mapping[str, str] = field(default_factory=dict)  # archive path -> target
    # Faults: RECORD lines to use instead of the computed ones, entries appended after RECORD, etc.
    record_override: str | None = None
    corrupt_hash_of: str | None = None
    omit_from_record: str | None = None
    duplicate: str | None = None
    wheel_metadata: str | None = None
    wrong_size_of: str | None = None  # RECORD lists this file with a size one byte too large
    omit: frozenset[str] = frozenset()  # archive paths (e.g. "WHEEL", "RECORD" in dist-info) left out
    dist_info_override: str | None = None
    filename_override: str | None = None
    requires: tuple[str, ...] = ()  # Requires-Dist lines of METADATA
    # Members are stored uncompressed unless this says otherwise (zipfile.ZIP_DEFLATED for a zip bomb).
    compress_type: int = zipfile.ZIP_STORED

    @property
    def dist_info(self) -> str:
        if self.dist_info_override is not None:
            return self.dist_info_override
        return f"{self.name.replace('-', '_')}-{self.version}.dist-info"

    @property
    def data_dir(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}.data"

    @property
    def filename(self) -> str:
        if self.filename_override is not None:
            return self.filename_override
        return f"{self.name.replace('-', '_')}-{self.version}-{self.tag}.whl"


def build_wheel(directory: Path, spec: WheelSpec) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    di = spec.dist_info
    contents: dict[str, bytes] = dict(spec.files)
    contents[f"{di}/METADATA"] = (f"Metadata-Version: 2.1\nName: {spec.name}\nVersion: {spec.version}\n"
                                  + "".join(f"Requires-Dist: {r}\n" for r in spec.requires)).encode()
    contents[f"{di}/WHEEL"] = (
        spec.wheel_metadata
        if spec.wheel_metadata is not None
        else f"Wheel-Version: 1.0\nGenerator: venvfs-tests\nRoot-Is-Purelib: true\nTag: {spec.tag}\n"
    ).encode()
    if spec.entry_points is not None:
        contents[f"{di}/entry_points.txt"] = spec.entry_points.encode()
    for omitted in spec.omit:
        contents.pop(f"{di}/{omitted}", None)
    lines = []
    for path, data in contents.items():
        if path == spec.omit_from_record:
            continue
        digest = record_hash(b"tampered" if path == spec.corrupt_hash_of else data)
        size = len(data) + (1 if path == spec.wrong_size_of else 0)
        lines.append(f"{path},{digest},{size}")
    for path, target in spec.symlinks.items():
        lines.append(f"{path},{record_hash(target.encode())},{len(target.encode())}")
    lines.append(f"{di}/RECORD,,")
    record = spec.record_override if spec.record_override is not None else "\n".join(lines) + "\n"
    out = directory / spec.filename
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in contents.items():
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            mode = 0o755 if path in spec.executables else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = spec.compress_type
            zf.writestr(info, data)
        for path, target in spec.symlinks.items():
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
        if spec.duplicate is not None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns about the duplicate name we want
                zf.writestr(spec.duplicate, contents.get(spec.duplicate, b"second copy"))
        if "RECORD" not in spec.omit:
            zf.writestr(f"{di}/RECORD", record)
    return out


def simple_package(name: str = "demo", version: str = "1.0", **kwargs: object) -> WheelSpec:
    """A small pure-Python distribution with a module, a subpackage, a console script and data."""
    mod = name.replace("-", "_")
    files = {
        f"{mod}/__init__.py": f"VERSION = {version!r}\n\ndef main():\n    print('{name} ' + VERSION)\n".encode(),
        f"{mod}/sub/__init__.py": b"",
        f"{mod}/sub/helpers.py": b"def double(x):\n    return 2 * x\n",
        f"{mod}/data/table.txt": b"shared bytes " * 100,
    }
    return WheelSpec(
        name=name, version=version, files=files,
        entry_points=f"[console_scripts]\n{name}-hello = {mod}:main\n", **kwargs,  # type: ignore[arg-type]
    )


def data_package(name: str = "datapkg", version: str = "1.0") -> WheelSpec:
    """A pure distribution using every ``.data`` scheme: scripts (one with a ``#!python`` shebang to be
    rewritten for each venv), headers, data and purelib, plus a console and a GUI entry point."""
    mod = name.replace("-", "_")
    data = f"{mod}-{version}.data"
    files = {
        f"{mod}/__init__.py": b"from pathlib import Path\n\ndef main():\n    print('main of " + mod.encode()
        + b"')\n\ndef gui():\n    pass\n",
        f"{data}/scripts/{mod}-tool": b"#!python\nimport " + mod.encode() + b"\nprint('tool', "
        + mod.encode() + b".__name__)\n",
        f"{data}/scripts/{mod}-sh": b"#!/bin/sh\necho shell-script\n",
        f"{data}/headers/{mod}.h": b"#define DATAPKG 1\n",
        f"{data}/data/share/{mod}/notes.txt": b"data scheme file\n",
        f"{data}/purelib/{mod}_extra.py": b"EXTRA = 42\n",
    }
    return WheelSpec(
        name=name, version=version, files=files,
        executables=frozenset({f"{data}/scripts/{mod}-tool", f"{data}/scripts/{mod}-sh"}),
        entry_points=f"[console_scripts]\n{mod}-cli = {mod}:main\n\n[gui_scripts]\n{mod}-gui = {mod}:gui\n",
    )
