"""The block for ``activate.csh`` (csh, tcsh): builtins only."""

from __future__ import annotations

from venvfs.hooks.target import BEGIN, END, OPTOUT_ENV, HookTarget, gone_message


def quote(s: str) -> str:
    # csh has no escape inside single quotes; close, escape, reopen. '!' is history even when quoted.
    return "'" + s.replace("'", "'\\''").replace("!", "'\\!'") + "'"


def render(t: HookTarget) -> str:
    q = quote
    cmd = " ".join(q(a) for a in t.argv)
    pth, sp, st = q(str(t.pth)), q(str(t.site_packages)), q(str(t.state_file))
    return f"""{BEGIN}
# Mounts this venv when it is not mounted (`venvfs hook status|uninstall`); builtins only.
if ( ! $?{OPTOUT_ENV} ) then
    if ( -e {pth} || ( ! -d {sp} && -f {st} ) ) then
        if ( -x {q(t.python)} ) then
            env VENVFS_STORE={q(t.store)} {cmd} < /dev/null > /dev/null
        else
            echo {q(gone_message(t))} > /dev/stderr
        endif
    endif
endif
{END}
"""
