"""A second local user for tests of what one user can do to another's store (issue 13).

The user is a real account (created with ``useradd`` when absent), so the kernel's checks are the
ones that apply: file modes, ``setpriv`` dropping every group, no capability left.
"""

from __future__ import annotations

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
        site = [p for p in sys.path if p.endswith("site-packages")]
        return {"PYTHONPATH": ":".join([str(REPO), *site])}


def _ensure_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(NAME)
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        missing_tool("useradd (to create a second local user)")
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME], check=True)
    return pwd.getpwnam(NAME)


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
    try:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        site = [p for p in sys.path if p.endswith("site-packages")]
        for python in (sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}"):
            user = OtherUser(NAME, account.pw_uid, account.pw_gid, python, home)
            probe = user.run(python, "-c", "import venvfs, packaging, installer",
                             env={"PYTHONPATH": ":".join([str(REPO), *site])})
            if probe.returncode == 0:
                break
        else:
            missing_tool(f"no Python {version} that user {NAME} can run with venvfs's dependencies")
        yield user
    finally:
        shutil.rmtree(home, ignore_errors=True)
