"""The cluster scenario (issue 19, ``venvfs bench --cluster-users 1,10,100``): N users, each with one
venv of the workload, on one filesystem; total disk and inodes.

- **venvfs over a shared store**: an admin publishes the workload once into a shared store
  (``venvfs store publish``); each user has a local store over it and one mounted venv of the set
  (``venvfs create --no-install``). What a user adds is the local store (bytecode for the user's
  Python, when the shared store holds none) and the venv.
- **uv with a per-user cache**: each user's own uv cache filled from the wheelhouse, and a venv
  installed from it with ``--link-mode hardlink`` (and ``clone`` where the filesystem can reflink):
  what uv does when users share nothing, which is the case across home directories.

A few users are measured for real (statfs deltas on the run's filesystem, dedicated as root); larger
N are projected from their mean: nothing is shared between two users' caches, stores or venvs, so a
user's cost does not depend on how many others there are, and a hundred real mounts would measure
the machine's memory instead. The report says which rows were measured and which projected.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from venvfs.bench import trees
from venvfs.bench.scratch import Usage, can_reflink, usage
from venvfs.bench.workload import Workload

MEASURED_USERS = 2

Say = Callable[[str], None]


@dataclass
class ClusterRow:
    strategy: str
    users: int
    bytes: int
    inodes: int
    measured: bool  # False: projected from the measured users' mean


@dataclass
class ClusterResult:
    filesystem: str
    fixed: dict[str, Usage] = field(default_factory=dict)  # per strategy: paid once (the shared store)
    per_user: dict[str, list[Usage]] = field(default_factory=dict)  # per strategy: each measured user
    unavailable: dict[str, str] = field(default_factory=dict)
    rows: list[ClusterRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def project(fixed: Usage, per_user: Sequence[Usage], users: int) -> Usage:
    """Total for ``users`` users: what is paid once, plus the measured users' mean per user."""
    if not per_user:
        raise ValueError("no measured user to project from")
    mean_bytes = sum(u.bytes for u in per_user) / len(per_user)
    mean_inodes = sum(u.inodes for u in per_user) / len(per_user)
    return Usage(fixed.bytes + round(users * mean_bytes), fixed.inodes + round(users * mean_inodes))


def rows(result: ClusterResult, counts: Sequence[int]) -> list[ClusterRow]:
    out = []
    for strategy, measured in result.per_user.items():
        fixed = result.fixed.get(strategy, Usage(0, 0))
        for n in counts:
            total = project(fixed, measured, n)
            out.append(ClusterRow(strategy, n, total.bytes, total.inodes, measured=n <= len(measured)))
    return out


def _delta(root: Path, work: Callable[[], object]) -> Usage:
    before = usage(root)
    work()
    after = usage(root)
    return Usage(after.bytes - before.bytes, after.inodes - before.inodes)


def _run(argv: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-3:])
        raise RuntimeError(f"{' '.join(argv[:4])} exited {proc.returncode}: {tail[:400]}")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VENVFS_STORE", "UV_", "VIRTUAL_ENV"))}
    env.update(UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never", **extra)
    return env


def measure(root: Path, workload: Workload, python: str, *, users: int = MEASURED_USERS,
            say: Say = lambda _: None) -> ClusterResult:
    """Measure the shared store and ``users`` real users of each strategy under ``root``."""
    venvfs = [sys.executable, "-m", "venvfs"]
    result = ClusterResult(filesystem=str(root))
    shared, admin = root / "shared-store", root / "admin-store"

    def publish() -> None:
        _run([*venvfs, "store", "add", *map(str, workload.wheels)], _env(VENVFS_STORE=str(admin)))
        _run([*venvfs, "store", "publish", "--all", "--to", str(shared)], _env(VENVFS_STORE=str(admin)))
        _run(["rm", "-rf", str(admin)], _env())  # the admin's own store is not the cluster's cost

    mounted: list[Path] = []
    try:
        result.fixed["venvfs"] = _delta(root, publish)
        say(f"cluster: shared store {result.fixed['venvfs'].bytes / 1e6:.1f} MB")
        for i in range(users):
            user = root / f"venvfs-user-{i}"
            env = _env(VENVFS_STORE=str(user / "store"), VENVFS_STORE_LOWER=str(shared))
            venv = user / "venv"
            argv = [*venvfs, "create", str(venv), *workload.requirements, "--no-install", "--python", python]

            def create(argv: list[str] = argv, env: dict[str, str] = env) -> None:
                _run(argv, env)
            result.per_user.setdefault("venvfs", []).append(_delta(root, create))
            mounted.append(venv)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        result.unavailable["venvfs"] = str(e)
        result.per_user.pop("venvfs", None)
    finally:
        for venv in mounted:
            subprocess.run([*venvfs, "umount", str(venv)], capture_output=True, check=False,
                           env=_env(VENVFS_STORE=str(venv.parent / "store")))
    modes = ["hardlink"] + (["clone"] if can_reflink(root) is None else [])
    uv = trees.uv_binary()
    for mode in modes:
        name = f"uv-{mode}"
        if uv is None:
            result.unavailable[name] = "uv is not installed (pip install uv)"
            continue
        try:
            for i in range(users):
                user = root / f"{name}-user-{i}"
                env = _env(UV_CACHE_DIR=str(user / "cache"))

                def install(user: Path = user, env: dict[str, str] = env, mode: str = mode) -> None:
                    _run([uv, "venv", "-q", "--python", python, str(user / "venv")], env)
                    _run([uv, "pip", "install", "-q", "--offline", "--no-index", "--find-links",
                          str(workload.wheelhouse), "--python", str(user / "venv" / "bin" / "python"),
                          "--link-mode", mode, *workload.requirements], env)
                result.per_user.setdefault(name, []).append(_delta(root, install))
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            result.unavailable[name] = str(e)
            result.per_user.pop(name, None)
    return result


def markdown(result: ClusterResult, counts: Sequence[int]) -> str:
    lines = [f"N users' venvs on one filesystem ({result.filesystem}); measured for "
             f"{max((len(v) for v in result.per_user.values()), default=0)} user(s), the rest projected (*)", "",
             "| strategy | " + " | ".join(f"N={n} disk | N={n} inodes" for n in counts) + " |",
             "|---|" + "---|---|" * len(counts)]
    for strategy in result.per_user:
        cells = []
        for row in (r for r in result.rows if r.strategy == strategy):
            mark = "" if row.measured else "*"
            cells += [f"{row.bytes / 1e6:.1f} MB{mark}", f"{row.inodes:,}{mark}"]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    for strategy, why in result.unavailable.items():
        lines.append(f"| {strategy} | unavailable: {why} |")
    return "\n".join(lines) + "\n"


def run(make_workload: Callable[[Path], Workload], counts: Sequence[int], *, python: str,
        scratch_dir: Path | None, loop: bool, lock: bool, say: Say) -> ClusterResult:
    """The whole scenario on a dedicated filesystem (as root: a loop XFS image, so uv's clone mode
    runs too; else ext4 or the scratch directory), under the machine's benchmark lock."""
    import contextlib

    from venvfs.bench.scratch import Scratch
    from venvfs.bench.system import perf_lock

    held = perf_lock(say=say) if lock else contextlib.nullcontext()
    with held, Scratch(scratch_dir, loop=loop) as scratch:
        workload = make_workload(scratch.base)
        gib = 1 << 30
        guess = max(sum(w.stat().st_size for w in workload.wheels) * 6, 64 << 20)
        size = -(-max(gib, guess * (4 * MEASURED_USERS + 4)) // gib) * gib
        fs, why = scratch.reflink(size)
        if fs is None:
            fs, why = scratch.ext4(size)
        if why:
            say(f"note: {why}")
        result = measure(fs.root, workload, python, say=say)
        result.filesystem = fs.description
        result.rows = rows(result, counts)
        return result
