"""The block for ``activate.csh`` (csh, tcsh): builtins only."""

from __future__ import annotations

from venvfs.hooks.target import BEGIN, END, OPTOUT_ENV, UV_LINK_MODE_WHY, UV_MARK_ENV, HookTarget, gone_message


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
{_uv_copy(t)}{END}
"""


def _uv_copy(t: HookTarget) -> str:
    if not t.uv_copy:
        return ""
    # deactivate is an alias: the original is kept under another name (`alias NAME` prints its text,
    # history references included) and called from a wrapper; its own `unalias deactivate` removes
    # the wrapper. The mark (a shell variable, never exported) lets a second activation of the same
    # venv wrap the fresh alias again instead of taking the copy mode for the user's own.
    wrapper = (f"test $?{UV_MARK_ENV} != 0 && unsetenv UV_LINK_MODE && unset {UV_MARK_ENV}; "
               '_venvfs_orig_deactivate \\!:*; test "\\!:*" != nondestructive && unalias _venvfs_orig_deactivate')
    return f"""# {UV_LINK_MODE_WHY}: uv copies, quietly, while this venv is active.
if ( ! $?UV_LINK_MODE || $?{UV_MARK_ENV} ) then
    set _venvfs_def = "`alias deactivate`"
    if ( "$_venvfs_def:q" != "" ) then
        setenv UV_LINK_MODE copy
        set {UV_MARK_ENV} = 1
        alias _venvfs_orig_deactivate "$_venvfs_def:q"
        alias deactivate '{wrapper}'
    endif
    unset _venvfs_def
endif
"""
