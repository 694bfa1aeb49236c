"""The client's side of the per-user mount service (``mount/service.py``): where its socket is,
starting it, and asking it for a mount. ``daemon._spawn`` uses this module and the service uses the
daemon, so the two halves live apart (no import circle).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from venvfs.fsutil import importable_env, spawn_detached
from venvfs.hooks.target import SERVICE_MODULE
from venvfs.mount import socketpath
from venvfs.mount.socketpath import RUNTIME_ENV as RUNTIME_ENV
from venvfs.mount.socketpath import identity as identity

log = logging.getLogger(__name__)

DISABLE_ENV = "VENVFS_SERVICE"  # "0": never use or start the service
IDLE_ENV = "VENVFS_SERVICE_IDLE"  # seconds without a request before the service exits (default 1800)
START_TIMEOUT = 5.0
MAX_REQUEST = 1 << 20  # bytes of one request (the client sends its environment)


def socket_path(store_root: Path) -> Path | None:
    path = socketpath.socket_path(str(store_root))
    if path is None:
        log.info("%s", socketpath.runtime_dir()[1])  # why none is safe (looked at again: a rare path)
        return None
    return Path(path)


# -- the client's side -------------------------------------------------------------------------------

def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _start(store_root: Path, path: Path) -> socket.socket | None:
    """Start the service detached (its own session, output to its log) and wait for its socket."""
    import platformdirs

    logfile = Path(platformdirs.user_log_dir("venvfs")) / "service.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", SERVICE_MODULE, "--store", str(store_root), "--socket", str(path)]
    spawn_detached(argv, importable_env(dict(os.environ)), logfile, log_mode=0o600)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        sock = _connect(path)
        if sock is not None:
            return sock
        time.sleep(0.01)
    log.info("the mount service did not come up within %g s; see %s", START_TIMEOUT, logfile)
    return None


# In the service and every process it forks: its store, how it forks a mount's daemon
# (``service.mount_in_fork``, which a command running in a fork then does itself) and its pid (which
# daemon.json names). Set by the service, which imports this module: no import circle.
in_service: tuple[Path, Callable[[dict[str, object], float], str], int] | None = None


def request_mount(venv_root: Path, store_root: Path, *, allow_other: bool, logfile: Path,
                  timeout: float) -> str | None:
    """Ask the service (started if need be) to mount ``venv_root``: the daemon's ready line ("ok",
    "already: …", "error: …"), or None when the service cannot be used and the caller should spawn."""
    if os.environ.get(DISABLE_ENV) == "0":
        return None
    request: dict[str, object] = {"venv": str(venv_root), "store": str(store_root), "allow_other": allow_other,
                                  "log": str(logfile), "env": dict(os.environ)}
    if in_service is not None and in_service[0] == store_root:
        return in_service[1](request, timeout) or None
    path = socket_path(store_root)
    if path is None:
        return None
    sock = _connect(path) or _start(store_root, path)
    if sock is None:
        return None
    with sock:
        request = {"op": "mount", "identity": identity(), **request}
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            answer = read_line(sock, timeout)
        except OSError as e:
            log.info("the mount service failed (%s); starting the daemon directly", e)
            return None
    if answer in ("", "stale", "refused"):
        return None  # a stale service has exited; the next mount starts a current one
    return answer


def read_line(sock: socket.socket, timeout: float) -> str:
    """The first line of an answer (a service's, or a forked daemon's ready line); "" on a timeout or
    when the other end closes without one."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(TimeoutError):
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def connect(path: Path) -> socket.socket | None:
    return _connect(path)
