"""The daily path: installing the workload into a new, empty venv with uv or pip, until settled.

The reference is a plain venv and ``uv pip install`` with uv's default link mode (hardlinks from uv's
warm cache on the same filesystem), or ``pip install`` from the wheelhouse. venvfs is an empty venv
mounted by ``venvfs mount`` (which adopts it), the same command through the mount as the README
gives it (``venvfs uv …``, ``venvfs pip …``: what the store holds is selected first), then settled:
the distributions are in the store and the upper copies dropped (``venvfs commit``, the synchronous
form of what venvfs does by itself after an install). The store already holds the workload (the
run adopted it once, as a user's earlier projects would have), as uv's cache is warm.

Per pair, native and venvfs alternating: wall time until settled, the filesystem's used bytes after
settling (statfs delta: the venv's own disk, whatever it is made of), and the peak of that delta
while the install ran (sampled every 20 ms; ext4 counts delayed-allocation reservations as used, so
no sync is needed between samples). What the installer printed on stderr (uv's "Failed to hardlink"
warning, say) is kept as a note.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from venvfs.bench import trees
from venvfs.bench.model import StrategyResult
from venvfs.bench.scratch import usage
from venvfs.bench.strategies import Site, venvfs_argv, venvfs_env
from venvfs.fsutil import syncfs

Say = Callable[[str], None]
INSTALLERS = ("uv", "pip")


@dataclass
class Sample:
    seconds: float
    settled_bytes: float
    peak_bytes: float
    stderr: str


class _PeakUsage:
    """The highest used-bytes delta of a filesystem while the block runs, sampled in a thread."""

    def __init__(self, root: Path, base: int) -> None:
        self.root, self.base, self.peak = root, base, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        import os

        while not self._stop.wait(0.02):
            st = os.statvfs(self.root)
            self.peak = max(self.peak, (st.f_blocks - st.f_bfree) * st.f_frsize - self.base)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()


def _install_argv(site: Site, installer: str, venv: Path) -> list[str]:
    wl = site.workload
    python = str(venv / "bin" / "python")
    if installer == "uv":
        uv = trees.uv_binary()
        assert uv is not None
        # uv's default link mode, as a user types it: hardlink, which a FUSE mount refuses (EXDEV).
        return [uv, "pip", "install", "-q", "--offline", "--no-index", "--find-links", str(wl.wheelhouse),
                "--python", python, *wl.requirements]
    return [site.python, "-m", "pip", "--python", python, "install", "-q", "--isolated", "--no-index",
            "--find-links", str(wl.wheelhouse), *wl.requirements]


def _run(argv: list[str], env: dict[str, str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-3:])
        raise RuntimeError(f"{what} exited {proc.returncode}: {tail[:400]}")
    return proc.stderr.strip()


def install_once(site: Site, installer: str, venv: Path, *, mounted: bool) -> Sample:
    """One venv from nothing to settled; the venv is removed again afterwards."""
    env = venvfs_env(site)
    before = usage(site.fs.root).bytes
    peak = _PeakUsage(site.fs.root, before)
    start = time.perf_counter()
    try:
        with peak.watching():
            trees.make_skeleton(site.python, venv)
            if mounted:
                # What the README's daily path runs: `venvfs mount` adopts a venv it does not manage
                # yet by itself (no separate `venvfs adopt`) and installs the automount hooks, as a
                # user's mount does. --mode fuse only makes a failed mount an error here instead of
                # a measured fallback; when FUSE works it changes nothing.
                _run([*venvfs_argv(), "mount", "--mode", "fuse", str(venv)], env, "venvfs mount")
            argv, install_env = _install_argv(site, installer, venv), site.env()
            if mounted and installer == "uv":
                # The daily path the README gives: `venvfs uv`, which serves from the store what uv
                # is about to install, so uv writes only what the store lacks through the mount.
                argv = [*venvfs_argv(), "uv", *argv[1:]]
                uv_dir = Path(str(trees.uv_binary())).parent
                install_env = {**env, "PATH": f"{uv_dir}:{env.get('PATH', '')}"}
            elif mounted:
                # `venvfs pip`, the same for pip: the skeleton venv has no pip, so it runs the pip of
                # venvfs's interpreter with --python, which is site.python's unless --python chose another.
                argv = [*venvfs_argv(), "pip", *argv[3:]]
                install_env = env
            stderr = _run(argv, install_env, f"{installer} install")
            if mounted:
                _run([*venvfs_argv(), "commit", str(venv)], env, "venvfs commit")
        seconds = time.perf_counter() - start
        settled = usage(site.fs.root).bytes - before
    finally:
        if mounted:
            subprocess.run([*venvfs_argv(), "umount", str(venv)], capture_output=True, env=env)
        shutil.rmtree(venv, ignore_errors=True)
    return Sample(seconds, float(max(settled, 0)), float(max(peak.peak, settled, 0)), stderr)


def measure_adopt(site: Site, native: StrategyResult, venvfs: StrategyResult, reps: int, say: Say) -> None:
    """A user's first step: ``venvfs adopt`` of a pip-installed venv, against ``cp -a`` of the same
    venv on the same filesystem (the cost of one more copy), interleaved. The store is fresh each
    time, as on a new machine; bytecode is compiled in the background (adopt's default), which the
    next pair waits for, so it never runs under a measurement; the filesystem is flushed before each
    timed command, so neither waits for the other's writeback."""
    work = site.fs.root / "adopts"
    work.mkdir(exist_ok=True)
    source = work / "pip-venv"
    env = venvfs_env(site)
    try:
        trees.make_skeleton(site.python, source)
        _run(_install_argv(site, "pip", source), site.env(), "pip install")
        say(f"venvfs: adopt of a pip-installed venv against cp -a of it ({reps} pairs)")
        for rep in range(reps):
            took: dict[bool, float] = {}
            for adopting in ((False, True) if rep % 2 == 0 else (True, False)):
                copy = work / f"copy-{rep}-{int(adopting)}"
                # Neither pays for the other's writeback: cp -a leaves ~the venv's size dirty, and
                # adopt's syncfs (before its records) would wait for all of it.
                syncfs(work)
                if not adopting:
                    start = time.perf_counter()
                    _run(["cp", "-a", str(source), str(copy)], env, "cp -a")
                    took[False] = time.perf_counter() - start
                    continue
                _run(["cp", "-a", str(source), str(copy)], env, "cp -a")
                syncfs(work)
                store = work / f"store-{rep}"
                start = time.perf_counter()
                out = _run_stdout([*venvfs_argv(), "adopt", "--no-hooks", "--json", "--store", str(store), str(copy)],
                                  env, "venvfs adopt")
                took[True] = time.perf_counter() - start
                _wait_pid(json.loads(out).get("compiling_pid"))
            native.metric("adopt_s").add(took[False])
            venvfs.metric("adopt_s").add(took[True], took[False])
            for leftover in work.glob(f"copy-{rep}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            shutil.rmtree(work / f"store-{rep}", ignore_errors=True)
    except Exception as e:  # reported as this metric's failure; the run goes on
        venvfs.metric("adopt_s").fail(str(e)[:400])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_stdout(argv: list[str], env: dict[str, str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-3:])
        raise RuntimeError(f"{what} exited {proc.returncode}: {tail[:400]}")
    return proc.stdout


def _wait_pid(pid: object, timeout: float = 600.0) -> None:
    if not isinstance(pid, int):
        return
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:
            if b"venvfs" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return
        except OSError:
            return
        time.sleep(0.05)


def measure(site: Site, native: StrategyResult, venvfs: StrategyResult, reps: int, say: Say) -> None:
    """``reps`` interleaved pairs per installer: plain venv against a venvfs mount."""
    work = site.fs.root / "installs"
    work.mkdir(exist_ok=True)
    for installer in INSTALLERS:
        if installer == "uv" and trees.uv_binary() is None:
            for result in (native, venvfs):
                result.metric("uv_install_s").fail("uv is not installed")
            continue
        # "pip_install_s" is the older metric of one more small package into an existing venv.
        keys = ("uv_install_s" if installer == "uv" else "pip_wheelhouse_s", f"{installer}_settled_bytes",
                f"{installer}_peak_bytes")
        say(f"venvfs: {installer} install of the set into a new venv, until settled ({reps} pairs with native)")
        warned: set[str] = set()
        try:
            for rep in range(reps):
                order = (False, True) if rep % 2 == 0 else (True, False)
                got = {m: install_once(site, installer, work / f"{installer}-{rep}-{int(m)}", mounted=m)
                       for m in order}
                base, other = got[False], got[True]
                for key, attr in zip(keys, ("seconds", "settled_bytes", "peak_bytes"), strict=True):
                    native.metric(key).add(getattr(base, attr))
                    venvfs.metric(key).add(getattr(other, attr), getattr(base, attr) or None)
                if other.stderr:
                    warned.add(other.stderr.splitlines()[0][:200])
        except Exception as e:  # one installer's failure is reported; the run goes on
            for key in keys:
                venvfs.metric(key).fail(str(e)[:400])
            continue
        if warned:
            venvfs.metric(keys[0]).note = f"{installer} printed: " + " / ".join(sorted(warned))
