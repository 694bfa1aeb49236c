"""Where the per-user mount service's socket is, with nothing but ``os``.

Every ``venvfs`` command that finds the service runs in a warm fork of it (``venvfs/cli/thin.py``), so
finding it is on every command's start: this module imports no pathlib, logging or hashlib (about
15 ms together on this machine kind, a third of what a thin command costs). ``serviceclient`` and the
service use the same functions, so the client and the service can never disagree on the name.
"""

from __future__ import annotations

import os
import stat

import venvfs

RUNTIME_ENV = "VENVFS_RUNTIME_DIR"
STORE_ENV = "VENVFS_STORE"


_identity: str | None = None


def identity() -> str:
    """What a request must match: the service runs this very venvfs, or it is stale (an upgrade).
    ``VERSION+STAMP:DIRECTORY``: the part after the colon says which installation, the part before
    which code in it. Taken once per process: a process runs the code it loaded, so what the service
    took at its start is also what its forks (commands, daemons) run, whatever changed on disk since."""
    global _identity
    if _identity is None:
        package = os.path.dirname(os.path.realpath(venvfs.__file__))
        _identity = f"{venvfs.__version__}+{_stamp(package)}:{package}"
    return _identity


def _stamp(directory: str) -> int:
    """When the package's code last changed: the newest mtime of its modules and directories (about
    120 stats, 0.3 ms). An install or a reinstall of the same version, an edit in place, a ``sed -i``
    all move it, so a service that loaded older code is stale, not silently out of date. Bytecode
    caches are skipped: the interpreter writes them as it runs."""
    latest = os.stat(directory).st_mtime_ns
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            if entry.name != "__pycache__":
                latest = max(latest, _stamp(entry.path))
        elif entry.name.endswith(".py"):
            latest = max(latest, entry.stat(follow_symlinks=False).st_mtime_ns)
    return latest


def _sha256_hex(data: bytes) -> str:
    try:
        # The built-in module: hashlib's first import loads OpenSSL (~2 ms), for one digest of a path.
        from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # an interpreter built without it
        from hashlib import sha256
    return str(sha256(data).hexdigest())


def runtime_dir() -> tuple[str | None, str]:
    """The user's own runtime directory for venvfs (created 0700), or None and why none is safe."""
    if os.environ.get(RUNTIME_ENV):
        chain = [os.environ[RUNTIME_ENV]]
    else:
        # XDG's runtime directory; else systemd-logind's /run/user/UID (a `su` or `runuser` shell has
        # no $XDG_RUNTIME_DIR, yet must find the service the user's systemd runs there); else the
        # fallback platformdirs also uses (it warns; we check): /tmp is everyone's, so the directory
        # must turn out to be ours and closed to others.
        base = (os.environ.get("XDG_RUNTIME_DIR") or _logind_runtime_dir()
                or f"/tmp/runtime-{os.getuid()}")  # noqa: S108
        chain = [base, os.path.join(base, "venvfs")]
    try:
        for d in chain:
            try:  # noqa: SIM105 - contextlib is one more import on every command's start
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                return None, f"not using {d} for the mount service: not a 0700 directory of uid {os.getuid()}"
    except OSError as e:
        return None, f"no runtime directory for the mount service: {e}"
    return chain[-1], ""


def _logind_runtime_dir() -> str | None:
    path = f"/run/user/{os.getuid()}"
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return path if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077 else None


def socket_path(store_root: str) -> str | None:
    """The socket of the service for ``store_root`` (one per user and store), or None."""
    directory, _ = runtime_dir()
    if directory is None:
        return None
    digest = _sha256_hex(os.fsencode(os.path.realpath(os.path.abspath(os.path.expanduser(store_root)))))[:16]
    return os.path.join(directory, f"service-{digest}.sock")


def guess_store_root(argv: list[str]) -> str:
    """The store a command line names (``--store``, else $VENVFS_STORE, else the platformdirs default on
    Linux, ``$XDG_DATA_HOME/venvfs/store``), without parsing it: only to find a warm service. The
    command itself resolves its store again in full (``store.default_store_path``), so a wrong guess
    costs a cold start, never a wrong store."""
    for i, arg in enumerate(argv):
        if arg == "--store" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--store="):
            return arg.partition("=")[2]
    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV]
    data = os.environ.get("XDG_DATA_HOME", "").strip() or os.path.expanduser("~/.local/share")
    return os.path.join(data, "venvfs", "store")
