"""Compare a venvfs venv's site-packages with a plain venv's given the same packages (issue 15, outcome 5).

Names, types, bytes and symlink targets must be the same, with these exceptions and no others:

- ``__pycache__``: a ``.pyc`` embeds its source's mtime, so two installs never agree on it (bytecode
  is a cache; the store serves its own).
- ``VENVFS_OWN``: files venvfs puts in site-packages by design (the automount hook, which the mount
  hides and a materialized venv shows).
- distributions venvfs placed from the store (``venvfs add``, named by their dist-info directory in
  ``placed_by_venvfs``) carry venvfs's record of the install, not pip's or uv's: ``INSTALLER`` says
  ``venvfs`` (checked), pip's ``REQUESTED`` and ``direct_url.json`` are absent (they describe an
  install venvfs did not do), and ``RECORD`` is venvfs's rendering: it must list the same
  site-packages files with the same hashes and sizes as the plain venv's, leaving out bytecode rows,
  rows of the installer files above.
- in every ``RECORD``, rows outside site-packages (console scripts) are compared by name only: a
  script's bytes hold its venv's path (and for placed ones, the generator's template).

A distribution pip or uv installed in the venvfs venv (and then committed or adopted) has no
exception: its ``INSTALLER``, ``REQUESTED``, ``direct_url.json`` and ``RECORD`` are what that
installer wrote, byte for byte (``RECORD``'s script rows aside, as above).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterable
from pathlib import Path

VENVFS_OWN = frozenset({"_venvfs_automount.pth"})
INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "direct_url.json", "RECORD", "uv_cache.json", "uv_build.json"})


def snapshot(site_packages: Path) -> dict[str, tuple[str, str]]:
    """relative path -> ("dir", ""), ("link", target) or ("file", sha256 + "x" if executable)."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirs, files in os.walk(site_packages):
        rel_dir = os.path.relpath(dirpath, site_packages)
        prefix = "" if rel_dir == "." else rel_dir + "/"
        keep = []
        for d in dirs:
            path = os.path.join(dirpath, d)
            if os.path.islink(path):
                out[prefix + d] = ("link", os.readlink(path))
            elif d != "__pycache__":
                out[prefix + d] = ("dir", "")
                keep.append(d)
        dirs[:] = keep
        for name in files:
            if not prefix and name in VENVFS_OWN:
                continue
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                out[prefix + name] = ("link", os.readlink(path))
                continue
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[prefix + name] = ("file", digest + ("x" if os.access(path, os.X_OK) else ""))
    return out


def _record_rows(path: Path, dist_info: str, *, placed: bool) -> set[tuple[str, ...]]:
    rows = set()
    for row in csv.reader(io.StringIO(path.read_text())):
        if not row:
            continue
        name = row[0]
        if name.startswith("../"):
            rows.add((name,))  # a script holds its venv's path: the name must match, the bytes cannot
            continue
        if placed and ("__pycache__/" in name
                       or (os.path.dirname(name) == dist_info and os.path.basename(name) in INSTALLER_FILES)):
            continue
        rows.add(tuple(row))
    return rows


def site_packages_diff(venvfs_sp: Path, plain_sp: Path, *, placed_by_venvfs: Iterable[str] = ()) -> list[str]:
    """The differences, one line each (empty: the same, within the documented exceptions)."""
    placed = set(placed_by_venvfs)
    ours, theirs = snapshot(venvfs_sp), snapshot(plain_sp)
    problems: list[str] = []
    for rel in sorted(set(ours) | set(theirs)):
        head, _, name = rel.partition("/")
        if (head.endswith(".dist-info") and name == "RECORD") or (head in placed and name in INSTALLER_FILES):
            continue  # checked below
        if rel not in theirs:
            problems.append(f"only in the venvfs venv: {rel} {ours[rel]}")
        elif rel not in ours:
            problems.append(f"only in the plain venv: {rel} {theirs[rel]}")
        elif ours[rel] != theirs[rel]:
            problems.append(f"differs: {rel}: {ours[rel]} != {theirs[rel]}")
    for rel in sorted(set(ours) | set(theirs)):
        head, _, name = rel.partition("/")
        if head.endswith(".dist-info") and name == "RECORD" and head not in placed:
            if rel not in ours or rel not in theirs:
                problems.append(f"only in the {'plain' if rel in theirs else 'venvfs'} venv: {rel}")
            elif (_record_rows(venvfs_sp / rel, head, placed=False)
                    != _record_rows(plain_sp / rel, head, placed=False)):
                problems.append(f"differs: {rel}")
    for dist_info in sorted(placed):
        if dist_info not in theirs or dist_info not in ours:
            problems.append(f"{dist_info}: placed by venvfs, but missing in one venv")
            continue
        installer = venvfs_sp / dist_info / "INSTALLER"
        says = installer.read_bytes() if installer.is_file() else None
        if says != b"venvfs\n":
            problems.append(f"{dist_info}/INSTALLER: not venvfs's ({says!r})")
        if not (plain_sp / dist_info / "INSTALLER").is_file():
            problems.append(f"{dist_info}/INSTALLER: missing in the plain venv")
        for extra in ("REQUESTED", "direct_url.json", "uv_cache.json", "uv_build.json"):
            if (venvfs_sp / dist_info / extra).exists():
                problems.append(f"{dist_info}/{extra}: written by an installer venvfs did not run")
        ours_rows = _record_rows(venvfs_sp / dist_info / "RECORD", dist_info, placed=True)
        theirs_rows = _record_rows(plain_sp / dist_info / "RECORD", dist_info, placed=True)
        if ours_rows != theirs_rows:
            problems.append(f"{dist_info}/RECORD: only venvfs's lists {sorted(ours_rows - theirs_rows)}, "
                            f"only the plain one {sorted(theirs_rows - ours_rows)}")
    return problems


def assert_same_site_packages(venvfs_sp: Path, plain_sp: Path, *, placed_by_venvfs: Iterable[str] = (),
                              when: str = "") -> None:
    problems = site_packages_diff(venvfs_sp, plain_sp, placed_by_venvfs=placed_by_venvfs)
    assert not problems, f"site-packages differ{' ' + when if when else ''}:\n" + "\n".join(problems)
