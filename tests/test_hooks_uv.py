"""The activation scripts' UV_LINK_MODE=copy (mounted layout), activated more than once.

Real activation scripts of uv and ``python -m venv`` venvs, real shells; no mount is needed (the
block depends on the layout the state names, and the mount command is a stand-in that does nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from venvfs.store.store import Store
from venvfs.venv import automount as hooks
from venvfs.venv.venv import Venv, VenvState

from conftest import missing_tool

# Activated twice (a second `source` of the script, as a user re-running it does), deactivated once:
# the variable goes with the venv. Then the user's own value, through a double activation: it stays.
SCRIPTS = {
    "bash": 'source {b}/activate; source {b}/activate; echo "in=$UV_LINK_MODE"; deactivate; '
            'echo "out=${{UV_LINK_MODE-unset}}"; UV_LINK_MODE=symlink; export UV_LINK_MODE; '
            'source {b}/activate; source {b}/activate; echo "mine=$UV_LINK_MODE"; deactivate; '
            'echo "kept=$UV_LINK_MODE"',
    "fish": 'source {b}/activate.fish; source {b}/activate.fish; echo "in=$UV_LINK_MODE"; deactivate; '
            'set -q UV_LINK_MODE; or echo out=unset; set -gx UV_LINK_MODE symlink; '
            'source {b}/activate.fish; source {b}/activate.fish; echo "mine=$UV_LINK_MODE"; deactivate; '
            'echo "kept=$UV_LINK_MODE"',
}
SCRIPTS["zsh"] = SCRIPTS["bash"]


@pytest.fixture
def no_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "fake-venvfs"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    monkeypatch.setattr(hooks, "venvfs_argv", lambda *args: (str(script), *args))


@pytest.mark.parametrize("tool", ["uv", "venv"])
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_double_activation_then_deactivate_unsets_uv_link_mode(
        shell: str, tool: str, make_venv: Callable[..., Path], store: Store, no_mount: None) -> None:
    exe = shutil.which(shell)
    if exe is None:
        missing_tool(f"{shell} is not installed (apt-get install {shell})")
    venv = Venv.open(make_venv(tool=tool))
    venv.state_dir.mkdir(exist_ok=True)
    venv.write_state(VenvState(store=str(store.root), layout="mounted"))
    hooks.install(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("UV_LINK_MODE", "VIRTUAL_ENV", "_VENVFS_UV_LINK_MODE")}
    proc = subprocess.run([exe, "-c", SCRIPTS[shell].format(b=venv.bin_dir)], capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert proc.stdout.split() == ["in=copy", "out=unset", "mine=symlink", "kept=symlink"], proc.stderr
