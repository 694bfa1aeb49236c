"""The block for ``activate.fish``: fish builtins only."""

from __future__ import annotations

from venvfs.hooks.target import BEGIN, END, OPTOUT_ENV, HookTarget, gone_message


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
{END}
"""
