"""Installing the hooks that mount a managed venv when it is used, however it is used (their text is
rendered by ``venvfs.hooks``); their status; ``eject`` is in ``venvfs.venv.eject``.

Two kinds of hook, both cheap when the venv is already mounted:

* **Activation scripts** (``activate`` for bash/zsh/sh, ``activate.fish``, ``activate.csh``,
  ``Activate.ps1``/``activate.ps1``, ``activate.nu``) get a marked block. It decides in the shell
  itself, with builtins only, whether to run ``venvfs mount``:

  - unmounted: the hook file ``_venvfs_automount.pth`` in the underlying site-packages shows through;
  - mounted and healthy: the mount hides that file and site-packages is a directory;
  - dead FUSE mount (daemon killed): stat of site-packages fails (ENOTCONN), so it is no directory.

* **Interpreter start**: ``_venvfs_automount.pth`` in the *underlying* site-packages directory. When
  the venv is mounted the mount hides it, so a mounted venv pays nothing. When it is not, ``site.py``
  runs its line, which mounts the venv with venvfs's own interpreter and adds the now mounted
  site-packages again, so the same process also sees the ``.pth`` files of the mounted distributions.

The ``.pth`` exists only while the venv's layout is "mounted": a materialized venv has nothing to
mount, and a stray hook there removes itself. ``install`` is idempotent and cheap; call it after every
layout change, while site-packages is not mounted (a mounted site-packages hides the directory the
``.pth`` must be written to). It never takes the venv lock: callers that change the venv hold it.

What was installed is recorded in ``VENV/.venvfs/hooks.json`` (with a digest of ``pyvenv.cfg``), so
``status`` can tell a venv recreated by its tool (scripts rewritten without the block, new
``pyvenv.cfg``) from one whose hooks were never installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from venvfs.errors import VenvError
from venvfs.fsutil import atomic_write_bytes, atomic_write_json, dead_connection, read_json
from venvfs.hooks.block import current_block, strip_block
from venvfs.hooks.dialects import DIALECTS, Dialect
from venvfs.hooks.pth import render_pth
from venvfs.hooks.target import PTH_NAME, HookTarget, venvfs_argv
from venvfs.venv.venv import Venv, VenvState

log = logging.getLogger("venvfs.hooks")

RECORD_NAME = "hooks.json"
RECORD_FORMAT = 1


def target_for(venv: Venv, state: VenvState) -> HookTarget:
    return HookTarget(
        venv=venv.root,
        site_packages=venv.site_packages,
        store=state.store,
        argv=venvfs_argv("mount", str(venv.root)),
        uv_copy=state.layout == "mounted",
    )


# -- activation scripts -----------------------------------------------------------------------------

def scripts(venv: Venv) -> Iterator[tuple[Dialect, Path]]:
    """The activation scripts this venv has, with their dialect."""
    for dialect in DIALECTS:
        for name in dialect.names:
            path = venv.bin_dir / name
            if path.is_file():
                yield dialect, path


def _read_script(path: Path) -> tuple[str, bool]:
    """The script's text with "\n" line ends, and whether it uses CRLF throughout (python -m venv
    writes Activate.ps1 so), so that a removed block leaves the file byte for byte as it was."""
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    crlf = "\r\n" in text and text.count("\n") == text.count("\r\n")
    return (text.replace("\r\n", "\n") if crlf else text), crlf


def _write_script(path: Path, text: str, crlf: bool) -> None:
    st = path.stat()
    data = (text.replace("\n", "\r\n") if crlf else text).encode("utf-8", "surrogateescape")
    atomic_write_bytes(path, data, mode=stat.S_IMODE(st.st_mode), durable=False)


# -- install, uninstall, status ---------------------------------------------------------------------

@dataclass
class ScriptStatus:
    path: Path
    shell: str
    state: str  # "installed", "outdated", "missing", "unsupported"


@dataclass
class HookStatus:
    venv: Path
    enabled: bool  # the venv's state says hooks are wanted (not opted out)
    layout: str
    scripts: list[ScriptStatus] = field(default_factory=list)
    # "present", "outdated", "absent"; below a live mount, as last written: "hidden", "hidden-outdated",
    # "hidden-absent", "hidden-unknown"; "unreachable" (dead mount)
    pth: str = "absent"
    recreated: list[str] = field(default_factory=list)  # why the venv looks recreated by its tool
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "venv": str(self.venv), "enabled": self.enabled, "layout": self.layout, "pth": self.pth,
            "scripts": [{"path": str(s.path), "shell": s.shell, "state": s.state} for s in self.scripts],
            "recreated": self.recreated, "problems": self.problems, "ok": self.ok,
        }


def _site_packages_access(sp: Path) -> str:
    """'mounted', 'dead' (a mount whose daemon is gone), 'missing' or 'plain'."""
    try:
        st = sp.stat()
        if not stat.S_ISDIR(st.st_mode):
            return "missing"
        try:
            parent = sp.parent.stat()
        except OSError:
            return "plain"
        if parent.st_dev == st.st_dev:
            return "plain"
        # The stat above may have been answered from the kernel's cache of the root's attributes (the
        # daemon gives them a long timeout): a dead mount shows only on a request the kernel always
        # sends, and FUSE_STATFS is one.
        os.statvfs(sp)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        if dead_connection(e):
            return "dead"
        raise
    return "mounted"


def _cfg_digest(venv: Venv) -> str | None:
    try:
        return hashlib.sha256((venv.root / "pyvenv.cfg").read_bytes()).hexdigest()
    except OSError:
        return None


def _record_path(venv: Venv) -> Path:
    return venv.state_dir / RECORD_NAME


def _read_record(venv: Venv) -> dict[str, Any] | None:
    try:
        data = read_json(_record_path(venv))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == RECORD_FORMAT else None


def install(venv: Venv) -> None:
    """Put the hooks in place for the venv's current layout, or take them away if its state opts out.

    Idempotent; rewrites only what differs. A venv recreated by its tool gets its blocks back.
    """
    state = venv.read_state()
    if not state.hooks:
        uninstall(venv)
        return
    target = target_for(venv, state)
    if Path(target.python).resolve().is_relative_to(venv.root.resolve()):
        log.info("venvfs runs from inside %s itself: its hooks cannot mount it while it is unmounted", venv.root)
    before = status(venv)
    if before.recreated:
        log.info("%s: %s; re-installing the venvfs hooks", venv.root, "; ".join(before.recreated))
    hooked: list[str] = []
    for dialect, path in scripts(venv):
        text, crlf = _read_script(path)
        block = dialect.render(target)
        if current_block(text) == block:
            hooked.append(path.name)
            continue
        new = dialect.insert(strip_block(text), block)
        if new is None:
            log.info("%s: layout not understood, no automount hook added", path)
            continue
        _write_script(path, new, crlf)
        hooked.append(path.name)
    pth = _sync_pth(state, target)
    old = _read_record(venv) or {}
    record = {
        "format": RECORD_FORMAT,
        "pyvenv_cfg_sha256": _cfg_digest(venv),
        "scripts": hooked,
        "python": target.python,
        # What is below a mounted site-packages cannot be seen: remember what the last look found.
        "pth": old.get("pth") if pth is None else pth,
    }
    if record != old:
        atomic_write_json(_record_path(venv), record, durable=False)


def _sync_pth(state: VenvState, target: HookTarget) -> str | None:
    """Write or remove the .pth as the layout wants; returns its text, "" if absent, None if out of
    reach (mounted, dead or missing site-packages: the next install after an unmount sees to it)."""
    if _site_packages_access(target.site_packages) != "plain":
        return None
    if state.hooks and (state.layout == "mounted" or target.switch_marker.exists()):
        text = render_pth(target)
        try:
            current = target.pth.read_text()
        except FileNotFoundError:
            current = None
        if current != text:
            atomic_write_bytes(target.pth, text.encode(), mode=0o644, durable=False)
        return text
    target.pth.unlink(missing_ok=True)
    return ""


def uninstall(venv: Venv) -> None:
    """Remove every hook block and the ``.pth``. Works on unmanaged venvs too (leftovers)."""
    for _dialect, path in scripts(venv):
        text, crlf = _read_script(path)
        new = strip_block(text)
        if new != text:
            _write_script(path, new, crlf)
    with contextlib.suppress(VenvError):
        sp = venv.site_packages
        if _site_packages_access(sp) == "plain":
            (sp / PTH_NAME).unlink(missing_ok=True)
        # Mounted: the .pth below the mount removes itself at the next start, since the state says
        # hooks are off (or the state is gone).
    _record_path(venv).unlink(missing_ok=True)


def status(venv: Venv) -> HookStatus:
    state = venv.read_state()
    target = target_for(venv, state)
    result = HookStatus(venv=venv.root, enabled=state.hooks, layout=state.layout)
    record = _read_record(venv)
    recorded_scripts = set(record.get("scripts", [])) if record else set()
    for dialect, path in scripts(venv):
        text, _crlf = _read_script(path)
        block = current_block(text)
        if block is None:
            state_name = "missing" if dialect.insert(text, "") is not None else "unsupported"
        elif block == dialect.render(target):
            state_name = "installed"
        else:
            state_name = "outdated"
        result.scripts.append(ScriptStatus(path, dialect.shell, state_name))
        if state_name == "missing" and path.name in recorded_scripts:
            result.recreated.append(f"{path.name} was rewritten without its hook")
    if record and record.get("pyvenv_cfg_sha256") != _cfg_digest(venv):
        result.recreated.append("pyvenv.cfg changed since the hooks were installed")

    access = _site_packages_access(target.site_packages)
    if access == "mounted":
        # Below the mount: trust what install wrote there last.
        last = record.get("pth") if record else None
        result.pth = ("hidden-unknown" if last is None else "hidden" if last == render_pth(target) else
                      "hidden-outdated" if last else "hidden-absent")
    elif access in ("dead", "missing"):
        result.pth = "unreachable"
    elif target.pth.exists():
        result.pth = "present" if target.pth.read_text() == render_pth(target) else "outdated"
    else:
        result.pth = "absent"

    if state.hooks:
        for s in result.scripts:
            if s.state in ("missing", "outdated"):
                result.problems.append(f"{s.path.name}: hook {s.state}")
        if state.layout == "mounted" and result.pth in ("absent", "outdated", "hidden-absent", "hidden-outdated"):
            what = result.pth.removeprefix("hidden-")
            result.problems.append(f"{PTH_NAME}: {what} (interpreter start will not mount; "
                                   "`venvfs hook install` repairs it while the venv is not mounted)")
        if state.layout != "mounted" and result.pth == "present" and not target.switch_marker.exists():
            result.problems.append(f"{PTH_NAME}: present in the {state.layout} layout")
        if access == "dead":
            result.problems.append(f"site-packages is a dead mount (its daemon is gone): "
                                   f"run `venvfs mount {venv.root}`")
    else:
        for s in result.scripts:
            if s.state in ("installed", "outdated"):
                result.problems.append(f"{s.path.name}: hook present although hooks are off")
        if result.pth in ("present", "outdated"):
            result.problems.append(f"{PTH_NAME}: present although hooks are off")
    if result.recreated:
        result.problems.extend(f"venv recreated? {why}" for why in result.recreated)
    return result
