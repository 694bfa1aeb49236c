"""The block for ``activate``, sourced by bash, zsh and sh: POSIX shell builtins only."""

from __future__ import annotations

import shlex

from venvfs.hooks.target import BEGIN, END, OPTOUT_ENV, UV_LINK_MODE_WHY, UV_MARK_ENV, HookTarget, gone_message


def quote(s: str) -> str:
    return shlex.quote(s)


def render(t: HookTarget) -> str:
    q = quote
    cmd = " ".join(q(a) for a in t.argv)
    pth, sp, st = q(str(t.pth)), q(str(t.site_packages)), q(str(t.state_file))
    return f"""{BEGIN}
# Mounts this venv when it is not mounted (`venvfs hook status|uninstall`). Shell builtins only: an
# unmounted venv shows the hook .pth, a dead mount's site-packages is no directory.
if [ -z "${{{OPTOUT_ENV}-}}" ] && {{ [ -e {pth} ] || {{ [ ! -d {sp} ] && [ -f {st} ]; }}; }}; then
    if [ -x {q(t.python)} ]; then
        VENVFS_STORE={q(t.store)} {cmd} </dev/null >/dev/null || :  # not fatal under set -e
    else
        echo {q(gone_message(t))} >&2
    fi
fi
{_uv_copy(t)}{END}
"""


def _uv_copy(t: HookTarget) -> str:
    if not t.uv_copy:
        return ""
    # deactivate is wrapped where the shell can print a function (bash, zsh: typeset -f), so that it
    # takes the variable away again; plain sh keeps it until the shell exits. A second activation
    # (the mark set by the first) redefines deactivate before this block runs: it is wrapped again,
    # or the variable would outlive the venv. The mark is a shell variable, not exported: a child
    # shell's own activation takes an inherited UV_LINK_MODE for the user's and leaves it alone.
    return f"""# {UV_LINK_MODE_WHY}: uv copies, quietly, while this venv is active.
if [ -z "${{UV_LINK_MODE+x}}" ] || [ -n "${{{UV_MARK_ENV}-}}" ]; then
    UV_LINK_MODE=copy; export UV_LINK_MODE; {UV_MARK_ENV}=1
    if _venvfs_def="$(typeset -f deactivate 2>/dev/null)" && [ -n "$_venvfs_def" ] \
            && [ "${{_venvfs_def#*_venvfs_orig_deactivate}}" = "$_venvfs_def" ]; then
        eval "_venvfs_orig_$_venvfs_def"
        deactivate () {{
            if [ -n "${{{UV_MARK_ENV}-}}" ]; then unset UV_LINK_MODE {UV_MARK_ENV}; fi
            _venvfs_orig_deactivate "$@"
            if [ "${{1-}}" != nondestructive ]; then unset -f _venvfs_orig_deactivate; fi
        }}
    fi
    unset _venvfs_def
fi
"""
