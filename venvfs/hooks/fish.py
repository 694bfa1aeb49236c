"""The block for ``activate.fish``: fish builtins only."""

from __future__ import annotations

from venvfs.hooks.target import BEGIN, END, OPTOUT_ENV, UV_LINK_MODE_WHY, UV_MARK_ENV, HookTarget, gone_message


def quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render(t: HookTarget) -> str:
    q = quote
    cmd = " ".join(q(a) for a in t.argv)
    pth, sp, st = q(str(t.pth)), q(str(t.site_packages)), q(str(t.state_file))
    return f"""{BEGIN}
# Mounts this venv when it is not mounted (`venvfs hook status|uninstall`); builtins only.
if not set -q {OPTOUT_ENV}; and begin; test -e {pth}; or begin; not test -d {sp}; and test -f {st}; end; end
    if test -x {q(t.python)}
        env VENVFS_STORE={q(t.store)} {cmd} </dev/null >/dev/null
    else
        echo {q(gone_message(t))} >&2
    end
end
{_uv_copy(t)}{END}
"""


def _uv_copy(t: HookTarget) -> str:
    if not t.uv_copy:
        return ""
    # A second activation (the mark set by the first, a global, not exported) redefines deactivate
    # before this block runs: it is wrapped again, or the variable would outlive the venv.
    return f"""# {UV_LINK_MODE_WHY}: uv copies, quietly, while this venv is active.
if begin; not set -q UV_LINK_MODE; or set -q {UV_MARK_ENV}; end; and functions -q deactivate
    set -gx UV_LINK_MODE copy
    set -g {UV_MARK_ENV} 1
    if not functions deactivate | string match -q '*_venvfs_orig_deactivate*'
        functions -e _venvfs_orig_deactivate
        functions -c deactivate _venvfs_orig_deactivate
        function deactivate
            if set -q {UV_MARK_ENV}
                set -e UV_LINK_MODE
                set -e {UV_MARK_ENV}
            end
            _venvfs_orig_deactivate $argv
            if test "$argv[1]" != nondestructive
                functions -e _venvfs_orig_deactivate
            end
        end
    end
end
"""
