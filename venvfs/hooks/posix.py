"""The block for ``activate``, sourced by bash, zsh and sh: POSIX shell builtins only."""

from __future__ import annotations

import shlex

from venvfs.hooks.target import BEGIN, END, OPTOUT_ENV, HookTarget, gone_message


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
{END}
"""
