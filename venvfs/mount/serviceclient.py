"""The client's side of the per-user mount service (``mount/service.py``): where its socket is,
starting it, and asking it for a mount. ``daemon._spawn`` uses this module and the service uses the
daemon, so the two halves live apart (no import circle).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import stat
import sys
import time
from pathlib import Path

import venvfs
from venvfs.fsutil import importable_env, spawn_detached

log = logging.getLogger(__name__)

DISABLE_ENV = "VENVFS_SERVICE"  # "0": never use or start the service
RUNTIME_ENV = "VENVFS_RUNTIME_DIR"
IDLE_ENV = "VENVFS_SERVICE_IDLE"  # seconds without a request before the service exits (default 1800)
START_TIMEOUT = 5.0
MAX_REQUEST = 1 << 20  # bytes of one request (the client sends its environment)


def identity() -> str:
    """What a request must match: the service runs this very venvfs, or it is stale (an upgrade)."""
    return f"{venvfs.__version__}:{Path(venvfs.__file__).resolve().parent}"


def runtime_dir() -> Path | None:
    """The user's own runtime directory for venvfs (created 0700), or None if none is safe to use."""
    if os.environ.get(RUNTIME_ENV):
        chain = [Path(os.environ[RUNTIME_ENV])]
    else:
        # XDG's runtime directory; else systemd-logind's /run/user/UID (a `su` or `runuser` shell has
        # no $XDG_RUNTIME_DIR, yet must find the service the user's systemd runs there); else the
        # fallback platformdirs also uses (it warns; we check): /tmp is everyone's, so the directory
        # must turn out to be ours and closed to others.
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or _logind_runtime_dir()
                    or f"/tmp/runtime-{os.getuid()}")  # noqa: S108
        chain = [base, base / "venvfs"]
    try:
        for d in chain:
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, 0o700)
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                log.info("not using %s for the mount service: not a 0700 directory of uid %d", d, os.getuid())
                return None
    except OSError as e:
        log.info("no runtime directory for the mount service: %s", e)
        return None
    return chain[-1]


def _logind_runtime_dir() -> str | None:
    path = f"/run/user/{os.getuid()}"
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return path if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077 else None


def socket_path(store_root: Path) -> Path | None:
    directory = runtime_dir()
    if directory is None:
        return None
    digest = hashlib.sha256(os.fsencode(store_root.resolve())).hexdigest()[:16]
    return directory / f"service-{digest}.sock"


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
    argv = [sys.executable, "-m", "venvfs.mount.service", "--store", str(store_root), "--socket", str(path)]
    spawn_detached(argv, importable_env(dict(os.environ)), logfile, log_mode=0o600)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        sock = _connect(path)
        if sock is not None:
            return sock
        time.sleep(0.01)
    log.info("the mount service did not come up within %g s; see %s", START_TIMEOUT, logfile)
    return None


def request_mount(venv_root: Path, store_root: Path, *, allow_other: bool, logfile: Path,
                  timeout: float) -> str | None:
    """Ask the service (started if need be) to mount ``venv_root``: the daemon's ready line ("ok",
    "already: …", "error: …"), or None when the service cannot be used and the caller should spawn."""
    if os.environ.get(DISABLE_ENV) == "0":
        return None
    path = socket_path(store_root)
    if path is None:
        return None
    sock = _connect(path) or _start(store_root, path)
    if sock is None:
        return None
    with sock:
        request = {"op": "mount", "identity": identity(), "venv": str(venv_root), "store": str(store_root),
                   "allow_other": allow_other, "log": str(logfile), "env": dict(os.environ)}
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            answer = _read_line(sock, timeout)
        except OSError as e:
            log.info("the mount service failed (%s); starting the daemon directly", e)
            return None
    if answer in ("", "stale", "refused"):
        return None  # a stale service has exited; the next mount starts a current one
    return answer


def _read_line(sock: socket.socket, timeout: float) -> str:
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
