"""Locks no other user can hold against you, and waits that say what they wait for and end (issue 13,
point 6): real lock files, a real second local user, real ``flock(1)`` holders, real mounts."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from venvfs.errors import Busy
from venvfs.fsutil import lock_holders
from venvfs.venv.venv import Venv

from conftest import REPO, create_venv, run_cli, uv_pip
from otheruser import other_user
from wheelbuilder import build_wheel, simple_package


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory of root's (0755) that other users can reach but not write."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix="venvfs-locks-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def hold(lock: Path) -> subprocess.Popen[bytes]:
    """``flock -x LOCK sleep 120`` in the background, returned once the kernel lists it as held."""
    holder = subprocess.Popen(["flock", "-x", str(lock), "sleep", "120"], start_new_session=True)
    deadline = time.monotonic() + 10
    while holder.pid not in lock_holders(lock):
        assert time.monotonic() < deadline and holder.poll() is None, "flock(1) never took the lock"
        time.sleep(0.01)
    return holder


def release(holder: subprocess.Popen[bytes]) -> None:
    # The whole group: the sleep flock(1) started holds the lock too (an inherited descriptor).
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()


class Lines:
    """A running command's stderr, each line with the time it arrived (from ``start``)."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic() - self.start, line.rstrip("\n")))

    def wait(self, timeout: float) -> tuple[int, float]:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return code, time.monotonic() - self.start

    def first(self, text: str, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if text in line:
                    return at, line
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r} within {timeout} s: {self.lines}")


def venvfs_cmd(store: Path, *args: str) -> list[str]:
    words = list(args[:2]) if args[0] == "store" else list(args[:1])
    return [sys.executable, "-m", "venvfs", *words, "--store", str(store), *args[len(words):]]


def test_another_user_cannot_open_or_lock_the_lock_files(public_dir: Path) -> None:
    store = public_dir / "store"
    wheel = build_wheel(public_dir / "wheels", simple_package("priv", "1.0"))
    run_cli(store, "store", "add", str(wheel))
    venv = create_venv(public_dir / "venv", "uv")
    run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
    venv_lock = Venv.open(venv).state_dir / "lock"
    # A store made before lock files were private: its 0644 lock is closed at the next lock.
    (store / "lock").chmod(0o644)
    run_cli(store, "store", "add", str(wheel))
    for lock in (store / "lock", venv_lock):
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600, lock
        assert stat.S_IMODE(lock.parent.stat().st_mode) & 0o022 == 0, lock.parent  # no one else creates files
    with other_user() as user:
        for lock in (store / "lock", venv_lock):
            opened = user.run(user.python, "-c", f"open({str(lock)!r}, 'rb')")
            assert opened.returncode != 0 and "PermissionError" in opened.stderr, opened.stderr
            locked = user.run("flock", "-x", "-w", "2", str(lock), "true")
            assert locked.returncode != 0 and "Permission denied" in locked.stderr, locked.stderr
        # So the other user cannot stall root's writers: root's store add runs at once.
        run_cli(store, "store", "add", "--no-wait", str(build_wheel(public_dir / "wheels", simple_package("priv2"))))


@pytest.mark.allow_warnings
def test_a_held_store_lock_is_announced_and_given_up(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_cli(store, "store", "add", str(build_wheel(tmp_path / "w", simple_package("first", "1.0"))))
    wheel = build_wheel(tmp_path / "w", simple_package("second", "1.0"))
    holder = hold(store / "lock")
    try:
        run = Lines(venvfs_cmd(store, "store", "add", "--wait", "4", str(wheel)))
        at, line = run.first("waiting for the lock", timeout=20)
        code, took = run.wait(timeout=30)
        assert at < 2.5, (at, line)  # ~1 s, plus the interpreter's start
        assert f"store {store}" in line and f"held by pid {holder.pid} (flock -x " in line, line
        assert code == Busy.exit_code and 4 <= took < 10, (code, took, run.lines)
        error = run.lines[-1][1]
        assert error.startswith("venvfs: error: gave up after 4 s waiting for the lock on store"), run.lines
        assert f"pid {holder.pid}" in error and len(run.lines) == 2, run.lines
        # The environment sets the default; --no-wait gives up at once, naming the holder too.
        run = Lines(venvfs_cmd(store, "store", "add", str(wheel)), env={"VENVFS_LOCK_TIMEOUT": "1.5"})
        code, took = run.wait(timeout=30)
        assert code == Busy.exit_code and 1.5 <= took < 6, (code, took, run.lines)
        run = Lines(venvfs_cmd(store, "store", "add", "--no-wait", str(wheel)))
        code, took = run.wait(timeout=30)
        assert code == Busy.exit_code and took < 4, (code, took, run.lines)
        assert len(run.lines) == 1 and run.lines[0][1].startswith(
            f"venvfs: error: store {store} is locked, held by pid {holder.pid} (flock -x "), run.lines
        assert run.lines[0][1].endswith("; try again when it ends"), run.lines
        assert not any(p.name.startswith("second-") for p in (store / "dists").iterdir())
    finally:
        release(holder)
    run_cli(store, "store", "add", "--no-wait", str(wheel))


@pytest.mark.allow_warnings
def test_umount_works_while_the_store_lock_is_held(require_fuse: None, tmp_path: Path) -> None:
    store = tmp_path / "store"
    venv = create_venv(tmp_path / "venv", "uv")
    uv_pip(venv, str(build_wheel(tmp_path / "w", simple_package("mounted", "1.0"))))
    run_cli(store, "mount", str(venv), "--no-hooks")
    state_dir = Venv.open(venv).state_dir
    try:
        for lock in (state_dir / "lock", state_dir / "daemon.lock", store / "lock"):
            assert stat.S_IMODE(lock.stat().st_mode) == 0o600, lock
        holder = hold(store / "lock")
        # An add that waits for the store meanwhile holds nothing umount needs (the venv's lock).
        adder = Lines(venvfs_cmd(store, "add", str(venv), "--wait", "60",
                                 str(build_wheel(tmp_path / "w", simple_package("later", "1.0")))))
        try:
            adder.first("waiting for the lock on store", timeout=20)
            started = time.monotonic()
            proc = subprocess.run(venvfs_cmd(store, "umount", str(venv)), capture_output=True, text=True, timeout=20,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
            assert proc.returncode == 0 and time.monotonic() - started < 5, proc.stderr
            assert "unmounted" in proc.stdout
        finally:
            release(holder)
        code, _ = adder.wait(timeout=60)
        assert code == 0, adder.lines
    finally:
        subprocess.run(venvfs_cmd(store, "umount", str(venv)), capture_output=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
