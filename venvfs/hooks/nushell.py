"""The block for ``activate.nu``, a module for ``overlay use``: inside its ``export-env`` block."""

from __future__ import annotations

import re

from venvfs.hooks.target import BEGIN, END, OPTOUT_ENV, UV_LINK_MODE_WHY, HookTarget, gone_message


def quote(s: str) -> str:
    if "'#" in s:
        raise ValueError(f"path {s!r} cannot be quoted for nushell")
    return f"r#'{s}'#"


def render(t: HookTarget) -> str:
    q = quote
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
            print -e {q(gone_message(t))}
        }}
    }}
{_uv_copy(t)}    {END}
"""


def _uv_copy(t: HookTarget) -> str:
    if not t.uv_copy:
        return ""
    # What export-env sets belongs to the overlay: deactivate (`overlay hide`) takes it away again.
    return f"""    # {UV_LINK_MODE_WHY}: uv copies, quietly, while this venv is active.
    if ('UV_LINK_MODE' not-in $env) {{ $env.UV_LINK_MODE = 'copy' }}
"""


_NU_EXPORT_ENV = re.compile(r"^export-env\s*\{\s*$", re.MULTILINE)


def insert(text: str, block: str) -> str | None:
    # activate.nu is a module for `overlay use`: only its export-env block runs on activation.
    m = _NU_EXPORT_ENV.search(text)
    if m is None:
        return None
    return text[: m.end()] + "\n" + block + text[m.end():]
