"""Hooks that mount a managed venv when it is used, however it is used; and ``eject``, the way out.

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
import errno
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import site
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import venvfs
from venvfs.errors import VenvError
from venvfs.fsutil import atomic_write_bytes, atomic_write_json, crash_point, read_json
from venvfs.venv.venv import Venv, VenvState

log = logging.getLogger("venvfs.hooks")

PTH_NAME = "_venvfs_automount.pth"
BEGIN = "# >>> venvfs automount >>>"
END = "# <<< venvfs automount <<<"
RECORD_NAME = "hooks.json"
# Where eject moves VENV/.venvfs before deleting it (see eject).
EJECTED_DIR = ".venvfs-ejected"
# In VENV/.venvfs while an eject has begun and not finished: {"hooks": the venv's choice before}.
EJECTING = "ejecting"
RECORD_FORMAT = 1

# Set in the environment of the `venvfs mount` a hook starts: if that process (or anything it runs)
# starts the venv's own interpreter, its hook must not mount again.
GUARD_ENV = "VENVFS_AUTOMOUNT_ACTIVE"
# Set by the user to switch every hook off for a session without uninstalling anything.
OPTOUT_ENV = "VENVFS_NO_AUTOMOUNT"

# An interpreter start or an activation must not hang forever on a mount that never answers.
MOUNT_TIMEOUT = 120

# layout.TO_MOUNTED: while it exists, site-packages may be half emptied into the upper layer whatever
# the state says, and `venvfs mount` is what finishes the switch.
SWITCH_MARKER = "converting-to-mounted"


# -- what a hook runs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class HookTarget:
    """Everything a hook needs, resolved at install time into absolute paths (hooks start no Python
    just to find out where things are)."""

    venv: Path
    site_packages: Path
    store: str
    argv: tuple[str, ...]  # the `venvfs mount` command, venvfs's interpreter first

    @property
    def pth(self) -> Path:
        return self.site_packages / PTH_NAME

    @property
    def state_file(self) -> Path:
        return self.venv / ".venvfs" / "state.json"

    @property
    def switch_marker(self) -> Path:
        """Present while a switch to the mounted layout is unfinished (see layout.py)."""
        return self.venv / ".venvfs" / SWITCH_MARKER

    @property
    def python(self) -> str:
        return self.argv[0]


def venvfs_argv(*args: str) -> tuple[str, ...]:
    """The command line that runs this venvfs installation's CLI from anywhere.

    ``-I`` keeps the user's PYTHONPATH, user site-packages and current directory (all likely to be
    set inside an activated venv) away from venvfs. A venvfs that is importable only thanks to one
    of those (a source checkout) puts its own directory on sys.path explicitly.
    """
    python = sys.executable
    package_parent = str(Path(venvfs.__file__).resolve().parent.parent)
    site_dirs = {str(Path(p).resolve()) for p in site.getsitepackages()}
    if package_parent in site_dirs:
        return (python, "-I", "-m", "venvfs", *args)
    bootstrap = (f"import sys; sys.path.insert(0, {json.dumps(package_parent)}); "
                 "from venvfs.cli.app import main; sys.exit(main())")
    return (python, "-I", "-c", bootstrap, *args)


def target_for(venv: Venv, state: VenvState) -> HookTarget:
    return HookTarget(
        venv=venv.root,
        site_packages=venv.site_packages,
        store=state.store,
        argv=venvfs_argv("mount", str(venv.root)),
    )


# -- the interpreter-start hook ---------------------------------------------------------------------

# Runs in the venv's interpreter while site.py processes site-packages, before any user code, with
# only the stdlib. Kept in one function so that nothing leaks into site's namespace.
_PTH_CODE = r'''
def _venvfs_automount(venv, sp, state, pth, argv, store, marker):
    import os, sys
    if getattr(sys, "_venvfs_automount_ran", False):
        return
    sys._venvfs_automount_ran = True
    if os.environ.get("VENVFS_AUTOMOUNT_ACTIVE") or os.environ.get("VENVFS_NO_AUTOMOUNT"):
        return
    def say(msg):
        sys.stderr.write("venvfs: " + msg + "\n")
    try:
        with open(state, "rb") as f:
            import json
            st = json.load(f)
    except FileNotFoundError:
        st = {}
    except (OSError, ValueError) as e:
        say("automount of %s skipped: unreadable %s (%s)" % (venv, state, e))
        return
    switching = os.path.exists(marker)  # a killed switch to the mounted layout: mounting finishes it
    if not switching and (st.get("layout") != "mounted" or not st.get("hooks", True)):
        # Nothing to mount (materialized, ejected or opted out): remove the leftover so that later
        # starts skip even this.
        try:
            os.unlink(pth)
        except OSError:
            pass
        return
    if not os.path.ismount(sp):
        if not os.path.exists(argv[0]):
            say("cannot mount %s: venvfs's interpreter %s is gone (reinstall venvfs, or run "
                "`venvfs hook uninstall`, or set VENVFS_NO_AUTOMOUNT=1)" % (venv, argv[0]))
            return
        import subprocess
        env = dict(os.environ, VENVFS_AUTOMOUNT_ACTIVE="1", VENVFS_STORE=store)
        try:
            proc = subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=%(timeout)d)
        except (OSError, subprocess.SubprocessError) as e:
            say("cannot mount %s at interpreter start (%s)" % (venv, e))
            return
        lines = [l for l in proc.stderr.decode("utf-8", "replace").splitlines() if l.strip()]
        if proc.returncode != 0:
            why = lines[-1] if lines else "exit status %d" % proc.returncode
            if why.startswith("venvfs: "):
                why = why[len("venvfs: "):]
            say("cannot mount %s at interpreter start: %s" % (venv, why))
            return
        if lines:
            sys.stderr.write(lines[-1] + "\n")  # e.g. why it fell back to materialization
    import importlib, site
    real = os.path.realpath(sp)
    entry = sp
    for p in list(sys.path_importer_cache):
        if p and os.path.realpath(p) == real:
            del sys.path_importer_cache[p]
    for p in sys.path:
        if p and os.path.realpath(p) == real:
            entry = p
            break
    importlib.invalidate_caches()
    # Again, now that site-packages is the mount: its distributions' .pth files run too.
    site.addsitedir(entry)
'''.replace("%(timeout)d", str(MOUNT_TIMEOUT))


def render_pth(target: HookTarget) -> str:
    args = (str(target.venv), str(target.site_packages), str(target.state_file), str(target.pth),
            target.argv, target.store, str(target.switch_marker))
    call = f"_venvfs_automount{args!r}"
    # site.py execs lines that start with "import"; everything must fit on that one line.
    line = f"import sys; exec({(_PTH_CODE + call + chr(10))!r}, {{'__name__': '_venvfs_automount'}})"
    return (
        "# venvfs automount hook: mounts this venv when Python starts while it is not mounted.\n"
        "# The mount hides this file. Remove it with `venvfs hook uninstall VENV`; disable it for a\n"
        "# process with VENVFS_NO_AUTOMOUNT=1.\n"
        f"{line}\n"
    )


# -- activation scripts -----------------------------------------------------------------------------

def _q_posix(s: str) -> str:
    return shlex.quote(s)


def _q_fish(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _q_csh(s: str) -> str:
    # csh has no escape inside single quotes; close, escape, reopen. '!' is history even when quoted.
    return "'" + s.replace("'", "'\\''").replace("!", "'\\!'") + "'"


def _q_ps(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _q_nu(s: str) -> str:
    if "'#" in s:
        raise ValueError(f"path {s!r} cannot be quoted for nushell")
    return f"r#'{s}'#"


def _gone_message(t: HookTarget) -> str:
    return (f"venvfs: cannot mount {t.venv}: venvfs's interpreter {t.python} is gone "
            f"(reinstall venvfs or run: venvfs hook uninstall {t.venv})")


def _render_posix(t: HookTarget) -> str:
    q = _q_posix
    cmd = " ".join(q(a) for a in t.argv)
    pth, sp, st = q(str(t.pth)), q(str(t.site_packages)), q(str(t.state_file))
    return f"""{BEGIN}
# Mounts this venv when it is not mounted (`venvfs hook status|uninstall`). Shell builtins only: an
# unmounted venv shows the hook .pth, a dead mount's site-packages is no directory.
if [ -z "${{{OPTOUT_ENV}-}}" ] && {{ [ -e {pth} ] || {{ [ ! -d {sp} ] && [ -f {st} ]; }}; }}; then
    if [ -x {q(t.python)} ]; then
        VENVFS_STORE={q(t.store)} {cmd} </dev/null >/dev/null || :  # not fatal under set -e
    else
        echo {q(_gone_message(t))} >&2
    fi
fi
{END}
"""


def _render_fish(t: HookTarget) -> str:
    q = _q_fish
    cmd = " ".join(q(a) for a in t.argv)
    pth, sp, st = q(str(t.pth)), q(str(t.site_packages)), q(str(t.state_file))
    return f"""{BEGIN}
# Mounts this venv when it is not mounted (`venvfs hook status|uninstall`); builtins only.
if not set -q {OPTOUT_ENV}; and begin; test -e {pth}; or begin; not test -d {sp}; and test -f {st}; end; end
    if test -x {q(t.python)}
        env VENVFS_STORE={q(t.store)} {cmd} </dev/null >/dev/null
    else
        echo {q(_gone_message(t))} >&2
    end
end
{END}
"""


def _render_csh(t: HookTarget) -> str:
    q = _q_csh
    cmd = " ".join(q(a) for a in t.argv)
    pth, sp, st = q(str(t.pth)), q(str(t.site_packages)), q(str(t.state_file))
    return f"""{BEGIN}
# Mounts this venv when it is not mounted (`venvfs hook status|uninstall`); builtins only.
if ( ! $?{OPTOUT_ENV} ) then
    if ( -e {pth} || ( ! -d {sp} && -f {st} ) ) then
        if ( -x {q(t.python)} ) then
            env VENVFS_STORE={q(t.store)} {cmd} < /dev/null > /dev/null
        else
            echo {q(_gone_message(t))} > /dev/stderr
        endif
    endif
endif
{END}
"""


def _render_ps(t: HookTarget) -> str:
    q = _q_ps
    args = " ".join(q(a) for a in t.argv[1:])
    pth, sp, st = q(str(t.pth)), q(str(t.site_packages)), q(str(t.state_file))
    return f"""{BEGIN}
# Mounts this venv when it is not mounted (`venvfs hook status|uninstall`); no Python started to check.
if (-not $env:{OPTOUT_ENV} -and ((Test-Path -LiteralPath {pth}) -or
        (-not (Test-Path -LiteralPath {sp} -PathType Container) -and (Test-Path -LiteralPath {st})))) {{
    if (Test-Path -LiteralPath {q(t.python)}) {{
        $_venvfs_old_store = $env:VENVFS_STORE
        $env:VENVFS_STORE = {q(t.store)}
        & {q(t.python)} {args} | Out-Null
        $env:VENVFS_STORE = $_venvfs_old_store
        Remove-Variable -Name _venvfs_old_store
    }} else {{
        [Console]::Error.WriteLine({q(_gone_message(t))})
    }}
}}
{END}
"""


def _render_nu(t: HookTarget) -> str:
    q = _q_nu
    args = " ".join(q(a) for a in t.argv[1:])
    pth, sp, st = q(str(t.pth)), q(str(t.site_packages)), q(str(t.state_file))
    return f"""    {BEGIN}
    # Mounts this venv when it is not mounted (`venvfs hook status|uninstall`); no Python started to check.
    let _venvfs_due = ({pth} | path exists) or ((not ({sp} | path exists)) and ({st} | path exists))
    if ('{OPTOUT_ENV}' not-in $env) and $_venvfs_due {{
        if ({q(t.python)} | path exists) {{
            try {{
                with-env {{ VENVFS_STORE: {q(t.store)} }} {{ run-external {q(t.python)} {args} | ignore }}
            }} catch {{
                print -e {q(f"venvfs: automount of {t.venv} failed (see above)")}
            }}
        }} else {{
            print -e {q(_gone_message(t))}
        }}
    }}
    {END}
"""


_NU_EXPORT_ENV = re.compile(r"^export-env\s*\{\s*$", re.MULTILINE)
_PS_SIGNATURE = "# SIG # Begin signature block"


def _insert_append(text: str, block: str) -> str | None:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "\n" + block


def _insert_ps(text: str, block: str) -> str | None:
    # Before python -m venv's Authenticode block, which must stay last (it no longer verifies
    # either way: the file changed).
    at = text.find(_PS_SIGNATURE)
    if at < 0:
        return _insert_append(text, block)
    return text[:at] + block + "\n" + text[at:]


def _insert_nu(text: str, block: str) -> str | None:
    # activate.nu is a module for `overlay use`: only its export-env block runs on activation.
    m = _NU_EXPORT_ENV.search(text)
    if m is None:
        return None
    return text[: m.end()] + "\n" + block + text[m.end():]


@dataclass(frozen=True)
class Dialect:
    shell: str
    names: tuple[str, ...]  # script file names in bin/
    render: Callable[[HookTarget], str]
    insert: Callable[[str, str], str | None]  # None: the script's layout is not understood


DIALECTS: tuple[Dialect, ...] = (
    Dialect("sh", ("activate",), _render_posix, _insert_append),
    Dialect("fish", ("activate.fish",), _render_fish, _insert_append),
    Dialect("csh", ("activate.csh",), _render_csh, _insert_append),
    Dialect("powershell", ("Activate.ps1", "activate.ps1"), _render_ps, _insert_ps),
    Dialect("nu", ("activate.nu",), _render_nu, _insert_nu),
)


def _block_span(text: str) -> tuple[int, int] | None:
    """Start and end offsets of the hook block, with its leading indentation and the blank line
    ``install`` put before it; None when absent."""
    begin = text.find(BEGIN)
    if begin < 0:
        return None
    end = text.find(END, begin)
    if end < 0:
        return None
    end += len(END)
    if text.startswith("\n", end):
        end += 1
    begin = text.rfind("\n", 0, begin) + 1  # start of the marker's line (indentation included)
    # The separating blank line that _insert_append adds, unless it is the very start of the file.
    if begin >= 2 and text[begin - 2: begin] == "\n\n":
        begin -= 1
    return begin, end


def strip_block(text: str) -> str:
    span = _block_span(text)
    if span is None:
        return text
    return text[: span[0]] + text[span[1]:]


def current_block(text: str) -> str | None:
    span = _block_span(text)
    if span is None:
        return None
    return text[span[0]: span[1]].lstrip("\n")


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
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        # ECONNABORTED while the kernel is still tearing down a killed daemon's connection.
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return "dead"
        raise
    if not stat.S_ISDIR(st.st_mode):
        return "missing"
    try:
        parent = sp.parent.stat()
    except OSError:
        return "plain"
    return "mounted" if parent.st_dev != st.st_dev else "plain"


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
            result.problems.append("site-packages is a dead mount (its daemon is gone): run `venvfs mount`")
    else:
        for s in result.scripts:
            if s.state in ("installed", "outdated"):
                result.problems.append(f"{s.path.name}: hook present although hooks are off")
        if result.pth in ("present", "outdated"):
            result.problems.append(f"{PTH_NAME}: present although hooks are off")
    if result.recreated:
        result.problems.extend(f"venv recreated? {why}" for why in result.recreated)
    return result


# -- systemd user unit (mount --all at login) -------------------------------------------------------

UNIT_NAME = "venvfs-mount-all.service"


def _q_systemd(arg: str) -> str:
    # systemd expands $VAR and %-specifiers in Exec lines, and splits on blanks outside quotes.
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def render_unit(store: Path | None = None) -> str:
    """The packaged unit with this venvfs installation's interpreter (and the store, if not the default)."""
    from importlib.resources import files

    template = files("venvfs").joinpath("data", UNIT_NAME).read_text()
    argv = venvfs_argv()
    command = " ".join(_q_systemd(a) for a in argv)
    environment = f"Environment={_q_systemd('VENVFS_STORE=' + str(store))}" if store is not None else ""
    return (template.replace("@PYTHON@ -m venvfs", command)
            .replace("@ENVIRONMENT@\n", environment + "\n" if environment else ""))


def unit_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user" / UNIT_NAME


# -- eject ----------------------------------------------------------------------------------------

@dataclass
class EjectReport:
    venv: Path
    unmounted: bool = False
    converted: bool = False  # from the mounted layout (upper layer brought back into site-packages)
    unlinked: int = 0  # files that were hardlinks into the store and are now copies or reflinks
    link_summary: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"venv": str(self.venv), "unmounted": self.unmounted, "converted": self.converted,
                "unlinked": self.unlinked, "link_summary": self.link_summary}


def _store_inodes(store_root: Path) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every object and bytecode file: what a venv file may be hardlinked to."""
    found: set[tuple[int, int]] = set()
    dev = store_root.stat().st_dev
    stack = [store_root / "objects", store_root / "bytecode"]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except FileNotFoundError:
            continue
        with it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    found.add((dev, entry.inode()))  # d_ino: no stat per store file
    return found


def _store_hardlinks(venv: Venv, store_root: Path) -> list[Path]:
    """Files of the venv (its venvfs state excluded) that share an inode with a store file."""
    candidates: list[tuple[Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(venv.root):
        if Path(dirpath) == venv.root and ".venvfs" in dirnames:
            dirnames.remove(".venvfs")
        for name in filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                candidates.append((path, st))
    if not candidates:
        return []
    inodes = _store_inodes(store_root)
    return [p for p, st in candidates if (st.st_dev, st.st_ino) in inodes]


def _upper_leftovers(venv: Venv) -> list[Path]:
    """What is still in the upper layer after the layout conversion, whiteouts aside."""
    upper = venv.upper_dir
    if not upper.is_dir():
        return []
    return sorted(p for p in upper.rglob("*")
                  if not p.name.startswith(".wh.") and not p.is_dir())


def eject(venv: Venv, store_root: Path, *, link_mode: str = "auto") -> EjectReport:
    """Turn a managed venv back into a plain one: unmount, bring the upper layer back, make every file
    a real file (copy or reflink, never a hardlink into the store), drop hooks, state and registration.

    Refuses, having removed nothing the user wrote, when anything of the upper layer could not be
    brought back.
    """
    from venvfs.venv.linkmode import DirWalker, Linker, LinkMode

    mode = LinkMode(link_mode)
    if mode == LinkMode.HARDLINK:
        raise VenvError("eject makes real files: --link-mode must be reflink, copy or auto")
    report = EjectReport(venv=venv.root)
    if not venv.is_managed:
        if finish_eject(venv, store_root):
            log.warning("finished the interrupted eject of %s", venv.root)
            return report
        raise VenvError(f"{venv.root} is not managed by venvfs: nothing to eject")
    with venv.locked(wait=True):
        # Hooks off first, so that no activation or interpreter start mounts the venv again while
        # it is being ejected (a hook below a live mount reads the state and stands down).
        state = venv.read_state()
        _check_placeable(venv, store_root, state)
        ejecting = venv.state_dir / EJECTING
        if not ejecting.exists():  # a rerun keeps what the first attempt found
            atomic_write_json(ejecting, {"hooks": state.hooks})
        if state.hooks:
            state.hooks = False
            venv.write_state(state)
        uninstall(venv)
    report.unmounted = _unmount(venv, store_root)
    linker = Linker(mode, allow_hardlink=False)
    with venv.locked(wait=True):
        state = venv.read_state()
        if _site_packages_access(venv.site_packages) in ("mounted", "dead"):
            raise VenvError(f"{venv.site_packages} is still mounted; run `venvfs umount {venv.root}` first")
        _resume(venv, store_root, state)
        if state.layout == "mounted":
            _to_materialized(venv, store_root, state, mode)
            report.converted = True
            state = venv.read_state()
            if state.layout != "materialized":
                raise VenvError(f"{venv.root}: could not leave the mounted layout")
        leftovers = _upper_leftovers(venv)
        if leftovers:
            raise VenvError(f"{venv.root}: {len(leftovers)} file(s) still in the upper layer "
                            f"(first: {leftovers[0]}); nothing removed")
        # Replaced in directories reached without following a symlink (see linkmode.DirWalker): one
        # swapped in for a directory since the walk above must not redirect the new file elsewhere.
        with DirWalker(venv.root, create=False) as walker:
            for path in _store_hardlinks(venv, store_root):
                parent, _, name = path.relative_to(venv.root).as_posix().rpartition("/")
                dir_fd = walker.open(parent)
                exec_bits = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode & 0o111
                linker.place_at(path, dir_fd, name, path.parent, mode_bits=0o755 if exec_bits else 0o644)
                report.unlinked += 1
        left = _store_hardlinks(venv, store_root)
        if left:
            raise VenvError(f"{venv.root}: {left[0]} is still a hardlink into the store")
        (venv.site_packages / PTH_NAME).unlink(missing_ok=True)
        # One rename makes the venv unmanaged at once (rmtree deletes state.json at some point of its
        # own choosing); a crash after it leaves only EJECTED_DIR, which the next eject removes. The
        # lock file goes with the directory; the lock itself lives until the block ends.
        shutil.rmtree(venv.root / EJECTED_DIR, ignore_errors=True)
        os.rename(venv.state_dir, venv.root / EJECTED_DIR)
        crash_point("eject:renamed")
    finish_eject(venv, store_root)
    report.link_summary = linker.summary()
    return report


def _check_placeable(venv: Venv, store_root: Path, state: VenvState) -> None:
    """Refuse an eject whose files could not all be placed (names too long, a file of one distribution
    below another's symlink) before anything changes: found half way, it would leave the venv
    unmounted with its hooks off."""
    from venvfs.errors import StoreError
    from venvfs.venv.materialize import check_selection
    from venvfs.store.store import Store

    try:
        store = Store.open(store_root, create=False)
    except StoreError:
        return  # nothing will be placed from a store that is gone; eject says what it needs later
    check_selection(venv, store, state)


def abandon_eject(venv: Venv, state: VenvState) -> str | None:
    """Undo the one change an unfinished eject leaves in a venv that is still managed (its hooks
    off), for a caller that wants to keep using venvfs (``mount``, ``hook install``); caller holds
    the venv lock. Returns what was done, None if no eject was pending."""
    ejecting = venv.state_dir / EJECTING
    try:
        hooks_before = bool(read_json(ejecting).get("hooks", True))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        hooks_before = True
    if hooks_before and not state.hooks:
        state.hooks = True
        venv.write_state(state)
    ejecting.unlink()
    return f"abandoned the unfinished eject of {venv.root}" + ("; its hooks are back on" if hooks_before else "")


def ejected_store(venv: Venv) -> Path | None:
    """The store of a venv whose eject was killed after it stopped being managed, else None."""
    try:
        return Path(read_json(venv.root / EJECTED_DIR / "state.json")["store"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finish_eject(venv: Venv, store_root: Path) -> bool:
    """The last steps of eject, which a rerun after a crash performs again; False if nothing was left."""
    from venvfs.store.store import Store

    leftover = venv.root / EJECTED_DIR
    if not leftover.exists():
        return False
    # Unregistered before the directory goes: the store keeps the venv's distributions until then.
    Store(store_root).unregister_venv(venv.root)
    shutil.rmtree(leftover)
    return True


def _unmount(venv: Venv, store_root: Path) -> bool:
    """Unmount through the mount machinery (it knows the daemon); False when nothing was mounted."""
    if _site_packages_access(venv.site_packages) not in ("mounted", "dead"):
        return False
    try:
        from venvfs.mount import daemon# type: ignore[attr-defined,unused-ignore]
    except ImportError:
        raise VenvError(f"{venv.site_packages} is mounted and this venvfs cannot unmount it") from None
    from venvfs.store.store import Store

    daemon.umount(venv.root, Store(store_root))
    return True


def _reflink_works(src_dir: Path, dst_dir: Path) -> bool:
    from venvfs.venv.linkmode import reflink

    probe_src = next((p for p in src_dir.rglob("*") if p.is_file()), None)
    if probe_src is None:
        return False
    probe = dst_dir / f".venvfs-reflink-probe-{os.getpid()}"
    try:
        reflink(probe_src, probe)
    except OSError:
        return False
    probe.unlink()
    return True


def _resume(venv: Venv, store_root: Path, state: VenvState) -> None:
    """Finish a layout switch a killed command left half done (the mount side's layout code)."""
    from venvfs.venv import layout# type: ignore[attr-defined,unused-ignore]
    from venvfs.store.store import Store

    layout.resume(venv, Store.open(store_root, create=False), state)


def _to_materialized(venv: Venv, store_root: Path, state: VenvState, mode: Any) -> None:
    """Bring the upper layer back over real files of the selection (the mount side's layout code)."""
    from venvfs.venv.linkmode import LinkMode

    try:
        from venvfs.venv import layout# type: ignore[attr-defined,unused-ignore]
    except ImportError:
        raise VenvError(f"{venv.root} is in the mounted layout and this venvfs cannot convert it") from None
    from venvfs.store.store import Store

    # layout materializes with the state's link mode, whose "auto" may hardlink: choose for it.
    if mode == LinkMode.AUTO:
        mode = LinkMode.REFLINK if _reflink_works(store_root / "objects", venv.site_packages) else LinkMode.COPY
    state.link_mode = mode.value
    layout.to_materialized(venv, Store.open(store_root, create=False), state)
