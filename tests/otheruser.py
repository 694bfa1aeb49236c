"""A second local user for tests of what one user can do to another's store (issue 13).

The user is a real account (created with ``useradd`` when absent), so the kernel's checks are the
ones that apply: file modes, ``setpriv`` dropping every group, no capability left.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO, missing_tool

NAME = "venvfs-other"


@dataclass(frozen=True)
class OtherUser:
    name: str
    uid: int
    gid: int
    python: str  # an interpreter this user can run, with venvfs and its dependencies importable
    home: Path
    pythonpath: str  # what makes them importable to it
    uv: str  # a uv this user can run

    def prefix(self) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]

    def run(self, *cmd: str, timeout: float = 120, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """``cmd`` as this user (cwd /, HOME its scratch directory)."""
        assignments = [f"{k}={v}" for k, v in (env or {}).items()]
        return subprocess.run([*self.prefix(), "env", f"HOME={self.home}", *assignments, *cmd],
                              capture_output=True, text=True, timeout=timeout, cwd="/")

    def venvfs(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
        return self.run(self.python, "-m", "venvfs", *args, timeout=timeout, env={**self._pythonpath(), **(env or {})})

    def _pythonpath(self) -> dict[str, str]:
        return {"PYTHONPATH": self.pythonpath}


def _ensure_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(NAME)
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        missing_tool("useradd (to create a second local user)")
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME], check=True)
    return pwd.getpwnam(NAME)


# What a second user needs importable to run venvfs, its mount daemon and service, and the tests' probes.
_NEEDED = ("venvfs.cli.app", "venvfs.mount.daemon", "venvfs.mount.service", "venvfs.cli.service", "venvfs.mount.fuse",
           "venvfs.mount.overlay", "venvfs.venv.view", "pyfuse3", "trio", "setproctitle", "installer", "packaging",
           "platformdirs")
PORTABLE_ENV = "VENVFS_TEST_PORTABLE_PYTHON"  # "1": always use the copy (to test that path)


def _portable_copy(dest: Path) -> str:
    """Copies of venvfs and of the packages it imports, for a checkout or test venv the user cannot
    read (CI's clone may sit below root's 0700 home): what they import, found by importing it."""
    script = ("import importlib, json, sys\n"
              f"for m in {list(_NEEDED)!r}:\n    importlib.import_module(m)\n"
              "print(json.dumps(sorted({getattr(m, '__file__', None) or '' for m in sys.modules.values()})))")
    files = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                      cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout)
    roots = sorted({str(REPO), *(p for p in sys.path if p.endswith("site-packages"))}, key=len, reverse=True)
    dest.mkdir()
    tops: set[Path] = set()
    for file in files:
        for root in roots:
            if file.startswith(root + "/"):
                tops.add(Path(root) / Path(file).relative_to(root).parts[0])
                break
    for top in tops:
        if top.is_dir():
            shutil.copytree(top, dest / top.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(top, dest / top.name)
    for path in (dest, *dest.rglob("*")):
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    return str(dest)


def _runnable(user: OtherUser, path: str) -> bool:
    return user.run("test", "-x", path).returncode == 0


@contextmanager
def other_user() -> Iterator[OtherUser]:
    """A second local user and a scratch directory of its own under /tmp (pytest's temporary
    directories sit below one of root's that other users cannot enter)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        missing_tool("needs root and setpriv (runs commands as a second local user)")
    account = _ensure_account()
    home = Path(tempfile.mkdtemp(prefix="venvfs-other-", dir="/tmp"))
    os.chown(home, account.pw_uid, account.pw_gid)
    home.chmod(0o755)
    shared = Path(tempfile.mkdtemp(prefix="venvfs-other-python-", dir="/tmp"))  # root's, 0755: read-only to it
    shared.chmod(0o755)
    try:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        site = [p for p in sys.path if p.endswith("site-packages")]
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        pythonpaths = [] if os.environ.get(PORTABLE_ENV) == "1" else [":".join([str(REPO), *site])]
        pythonpaths.append("")  # the copy, made only if needed
        found = None
        for pythonpath in pythonpaths:
            if not pythonpath:
                pythonpath = _portable_copy(shared / "lib")
            for python in (sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}"):
                user = OtherUser(NAME, account.pw_uid, account.pw_gid, python, home, pythonpath, uv)
                probe = user.run(python, "-c", "import venvfs, packaging, installer, platformdirs",
                                 env={"PYTHONPATH": pythonpath})
                if probe.returncode == 0:
                    found = user
                    break
            if found:
                break
        if found is None:
            missing_tool(f"no Python {version} that user {NAME} can run with venvfs's dependencies")
        if Path(uv).exists() and not _runnable(found, uv):
            (shared / "bin").mkdir()
            shutil.copy2(uv, shared / "bin" / "uv")
            found = OtherUser(NAME, account.pw_uid, account.pw_gid, found.python, home, found.pythonpath,
                              str(shared / "bin" / "uv"))
        yield found
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)
