"""The block for ``Activate.ps1``, inserted before python -m venv's signature block."""

from __future__ import annotations

from venvfs.hooks.block import insert_append
from venvfs.hooks.target import BEGIN, END, OPTOUT_ENV, UV_LINK_MODE_WHY, UV_MARK_ENV, HookTarget, gone_message


def quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def render(t: HookTarget) -> str:
    q = quote
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
        [Console]::Error.WriteLine({q(gone_message(t))})
    }}
}}
{_uv_copy(t)}{END}
"""


def _uv_copy(t: HookTarget) -> str:
    if not t.uv_copy:
        return ""
    # Untested here (no PowerShell on the test machines): the plainest form of the other shells'
    # wrapper. Activate.ps1's deactivate removes Function:deactivate itself, the wrapper included.
    return f"""# {UV_LINK_MODE_WHY}: uv copies, quietly, while this venv is active.
if ((-not (Test-Path -LiteralPath Env:UV_LINK_MODE) -or $global:{UV_MARK_ENV}) -and
        (Test-Path -LiteralPath Function:deactivate)) {{
    $env:UV_LINK_MODE = 'copy'
    $global:{UV_MARK_ENV} = $true
    Set-Item -Path Function:global:_venvfs_orig_deactivate -Value ${{Function:deactivate}}
    function global:deactivate([switch] $NonDestructive) {{
        if ($global:{UV_MARK_ENV}) {{
            Remove-Item -LiteralPath Env:UV_LINK_MODE -ErrorAction SilentlyContinue
            Remove-Variable -Name {UV_MARK_ENV} -Scope Global -ErrorAction SilentlyContinue
        }}
        _venvfs_orig_deactivate -NonDestructive:$NonDestructive
        if (-not $NonDestructive) {{
            Remove-Item -Path Function:_venvfs_orig_deactivate -ErrorAction SilentlyContinue
        }}
    }}
}}
"""


_PS_SIGNATURE = "# SIG # Begin signature block"


def insert(text: str, block: str) -> str | None:
    # Before python -m venv's Authenticode block, which must stay last (it no longer verifies
    # either way: the file changed).
    at = text.find(_PS_SIGNATURE)
    if at < 0:
        return insert_append(text, block)
    return text[:at] + block + "\n" + text[at:]
