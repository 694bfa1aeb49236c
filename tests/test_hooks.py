"""Automount hooks without FUSE: patching real activation scripts of venv/uv/virtualenv venvs, the
checks the shells run (with a stand-in for `venvfs mount`), and the interpreter-start .pth.

The stand-in records how it was called; for the .pth it "mounts" by writing a package and a .pth into
site-packages, which is what the materialization fallback does, so the re-read of site-packages in the
same process is exercised for real. End-to-end runs over a real FUSE mount are in test_automount.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from venvfs.hooks import csh, fish, nushell, posix, systemd
from venvfs.hooks.pth import render_pth
from venvfs.hooks.target import BEGIN, END, OPTOUT_ENV, PTH_NAME
from venvfs.store.store import Store
from venvfs.venv import automount as hooks
from venvfs.venv.venv import Venv, VenvState

from conftest import missing_tool, uv

TOOLS = ("venv", "uv", "virtualenv")


def manage(path: Path, store: Store, layout: str = "mounted", *, hooks_on: bool = True) -> Venv:
    """Make a venv look managed without adopting anything (the hooks only read the state)."""
    venv = Venv.open(path)
    venv.state_dir.mkdir(exist_ok=True)
    venv.write_state(VenvState(store=str(store.root), layout=layout, hooks=hooks_on))  # type: ignore[arg-type]
    return venv


def set_layout(venv: Venv, layout: str) -> None:
    state = venv.read_state()
    state.layout = layout  # type: ignore[assignment]
    venv.write_state(state)


def snapshot(venv: Venv) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(venv.bin_dir.iterdir()) if p.name.lower().startswith("activate")}


@pytest.fixture
def fake_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Replace the `venvfs mount` command the hooks run by a script; returns its call log."""

    def make(body: str = "") -> Path:
        log = tmp_path / "mount-calls.log"
        script = tmp_path / "fake-venvfs"
        script.write_text(
            "#!/bin/sh\n"
            f'echo "$* store=$VENVFS_STORE guard=$VENVFS_AUTOMOUNT_ACTIVE" >> {log}\n'
            "echo 'mounted (stdout of venvfs mount: hooks must not pass it on)'\n"
            + body
        )
        script.chmod(0o755)
        monkeypatch.setattr(hooks, "venvfs_argv", lambda *args: (str(script), *args))
        return log

    return make


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# -- patching the scripts -----------------------------------------------------------------------------

@pytest.mark.parametrize("tool", TOOLS)
def test_install_is_idempotent_and_uninstall_restores_every_script(
        tool: str, make_venv: Callable[..., Path], store: Store) -> None:
    venv = manage(make_venv(tool=tool), store)
    before = snapshot(venv)
    modes = {p.name: p.stat().st_mode for p in venv.bin_dir.iterdir()}
    hooks.install(venv)
    once = snapshot(venv)
    hooks.install(venv)
    assert snapshot(venv) == once
    st = hooks.status(venv)
    assert st.ok, st.problems
    expected = {"activate", "activate.fish", "activate.csh"} | ({"activate.nu"} if tool != "venv" else set())
    installed = {s.path.name for s in st.scripts if s.state == "installed"}
    assert expected <= installed
    assert any(s.shell == "powershell" and s.state == "installed" for s in st.scripts)
    for name in installed:
        text = (venv.bin_dir / name).read_text()
        assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert st.pth == "present"
    pth = venv.site_packages / PTH_NAME
    code_lines = [line for line in pth.read_text().splitlines() if not line.startswith("#")]
    assert len(code_lines) == 1 and code_lines[0].startswith("import ")  # what site.py executes
    # Modes survive the rewrite.
    assert {p.name: p.stat().st_mode for p in venv.bin_dir.iterdir()} == modes

    hooks.uninstall(venv)
    assert snapshot(venv) == before
    assert not pth.exists()
    assert not (venv.state_dir / hooks.RECORD_NAME).exists()


def test_powershell_block_goes_before_the_signature(make_venv: Callable[..., Path], store: Store) -> None:
    venv = manage(make_venv(tool="venv"), store)
    ps1 = venv.bin_dir / "Activate.ps1"
    # Windows builds of CPython ship a signed Activate.ps1; the block must not follow the signature.
    signature = b"\r\n# SIG # Begin signature block\r\n# MIIvJAY=\r\n# SIG # End signature block\r\n"
    ps1.write_bytes(ps1.read_bytes() + signature)
    before = ps1.read_bytes()
    hooks.install(venv)
    text = ps1.read_text()
    assert text.index(END) < text.index("# SIG # Begin signature block")
    hooks.uninstall(venv)
    assert ps1.read_bytes() == before


def test_pth_exists_only_in_the_mounted_layout(make_venv: Callable[..., Path], store: Store) -> None:
    venv = manage(make_venv(tool="uv"), store, layout="materialized")
    pth = venv.site_packages / PTH_NAME
    hooks.install(venv)
    assert not pth.exists()
    assert hooks.status(venv).ok
    set_layout(venv, "mounted")
    assert "interpreter start will not mount" in " ".join(hooks.status(venv).problems)
    hooks.install(venv)
    assert pth.exists()
    set_layout(venv, "materialized")
    hooks.install(venv)
    assert not pth.exists()


def test_opt_out_in_the_state_removes_the_hooks(make_venv: Callable[..., Path], store: Store) -> None:
    venv = manage(make_venv(tool="uv"), store)
    before = snapshot(venv)
    hooks.install(venv)
    state = venv.read_state()
    state.hooks = False
    venv.write_state(state)
    assert not hooks.status(venv).ok  # hooks present although off
    hooks.install(venv)  # what `venvfs mount` calls: it honours the opt-out
    assert snapshot(venv) == before
    assert not (venv.site_packages / PTH_NAME).exists()
    assert hooks.status(venv).ok


RECREATE = {
    "venv": lambda p: [sys.executable, "-m", "venv", str(p)],
    "uv": lambda p: [uv(), "venv", "-q", "--allow-existing", "--python", sys.executable, str(p)],
    "virtualenv": lambda p: [sys.executable, "-m", "virtualenv", "-q", "--python", sys.executable, str(p)],
}


@pytest.mark.parametrize("tool", TOOLS)
def test_a_venv_recreated_by_its_tool_is_detected_and_repaired(
        tool: str, make_venv: Callable[..., Path], store: Store) -> None:
    venv = manage(make_venv(tool=tool), store)
    hooks.install(venv)
    subprocess.run(RECREATE[tool](venv.root), check=True)
    st = hooks.status(venv)
    assert st.recreated, st
    assert not st.ok
    assert any("rewritten without its hook" in why for why in st.recreated)
    hooks.install(venv)
    st = hooks.status(venv)
    assert st.ok and not st.recreated, st.problems


def test_quoting_survives_awkward_paths(tmp_path: Path, make_venv: Callable[..., Path], store: Store,
                                        fake_mount: Callable[..., Path]) -> None:
    parent = tmp_path / "it's a $dir with spaces"
    parent.mkdir()
    venv = manage(make_venv(tool="uv", parent=parent), store)
    log = fake_mount()
    hooks.install(venv)
    for shell in available_shells():
        proc = run_activation(shell, venv)
        assert proc.returncode == 0, (shell, proc.stderr)
        # (uv's own activate.nu mangles a quote in VIRTUAL_ENV; the hook is not at fault there.)
        assert shell == "nu" or f"VE={venv.root}" in proc.stdout, (shell, proc.stdout, proc.stderr)
    assert len(calls(log)) == len(available_shells())
    assert all(f"mount {venv.root}" in c for c in calls(log))


# -- the checks in the shells ---------------------------------------------------------------------

SHELLS = ("bash", "zsh", "fish", "tcsh", "nu")


def shell_path(shell: str) -> str | None:
    return shutil.which(shell)


def available_shells() -> list[str]:
    return [s for s in SHELLS if shell_path(s)]


def run_activation(shell: str, venv: Venv, *, env: dict[str, str] | None = None, then: str | None = None
                   ) -> subprocess.CompletedProcess[str]:
    """Activate in ``shell`` and print $VIRTUAL_ENV (or run ``then``), as a user would."""
    b = str(venv.bin_dir)
    commands = {
        "bash": f'source {posix.quote(b + "/activate")} && echo "VE=$VIRTUAL_ENV"',
        "zsh": f'source {posix.quote(b + "/activate")} && echo "VE=$VIRTUAL_ENV"',
        "fish": f'source {fish.quote(b + "/activate.fish")}; and echo "VE=$VIRTUAL_ENV"',
        # python -m venv's activate.csh reads $prompt, which a non-interactive tcsh lacks.
        "tcsh": f'set prompt = ""; source {csh.quote(b + "/activate.csh")} && echo "VE=$VIRTUAL_ENV:q"',
        "nu": f"overlay use {nushell.quote(b + '/activate.nu')}; print $'VE=($env.VIRTUAL_ENV)'",
    }
    command = commands[shell]
    if then is not None:
        sep = {"fish": "; and ", "nu": "; "}.get(shell, " && ")
        command = command.rsplit(sep, 1)[0] + sep + then
    exe = shell_path(shell)
    assert exe
    return subprocess.run([exe, "-c", command], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def require_shell(shell: str, venv: Venv) -> None:
    if shell_path(shell) is None:
        if shell == "nu":
            missing_tool("nushell is not installed (scripts/test installs it from npm: @nushell/linux-x64)")
        missing_tool(f"{shell} is not installed (apt-get install {shell})")
    assert shell != "nu" or (venv.bin_dir / "activate.nu").exists()


# `python -m venv` writes no activate.nu: that pair has nothing to test.
@pytest.mark.parametrize(("shell", "tool"), [(s, t) for s in SHELLS for t in TOOLS if (s, t) != ("nu", "venv")])
def test_activation_mounts_only_when_needed(shell: str, tool: str, make_venv: Callable[..., Path],
                                            store: Store, fake_mount: Callable[..., Path]) -> None:
    venv = manage(make_venv(tool=tool), store)
    require_shell(shell, venv)
    log = fake_mount()
    hooks.install(venv)
    sp = venv.site_packages
    pth = sp / PTH_NAME

    # Unmounted: the .pth shows through.
    proc = run_activation(shell, venv)
    assert proc.returncode == 0, proc.stderr
    assert f"VE={venv.root}" in proc.stdout and "mounted" not in proc.stdout
    assert calls(log) == [f"mount {venv.root} store={store.root} guard="]

    # Mounted and healthy: the mount hides the .pth, site-packages is a directory.
    saved = pth.read_bytes()
    pth.unlink()
    proc = run_activation(shell, venv)
    assert proc.returncode == 0 and f"VE={venv.root}" in proc.stdout, proc.stderr
    assert len(calls(log)) == 1

    # A dead mount: site-packages is no directory (stat fails).
    sp.rename(sp.with_name("site-packages.away"))
    try:
        proc = run_activation(shell, venv)
        assert proc.returncode == 0 and f"VE={venv.root}" in proc.stdout, proc.stderr
        assert len(calls(log)) == 2
    finally:
        sp.with_name("site-packages.away").rename(sp)

    # Opted out for the session.
    pth.write_bytes(saved)
    proc = run_activation(shell, venv, env={OPTOUT_ENV: "1"})
    assert proc.returncode == 0 and f"VE={venv.root}" in proc.stdout, proc.stderr
    assert len(calls(log)) == 2


@pytest.mark.parametrize("shell", ("bash", "fish", "tcsh"))
def test_activation_says_so_when_venvfs_is_gone(shell: str, tmp_path: Path, make_venv: Callable[..., Path],
                                               store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = manage(make_venv(tool="uv"), store)
    require_shell(shell, venv)
    monkeypatch.setattr(hooks, "venvfs_argv", lambda *a: (str(tmp_path / "uninstalled-python"), *a))
    hooks.install(venv)
    proc = run_activation(shell, venv)
    assert proc.returncode == 0 and f"VE={venv.root}" in proc.stdout
    assert "venvfs: cannot mount" in proc.stderr and "is gone" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- the interpreter-start hook ---------------------------------------------------------------------

MATERIALIZE = """SP=$(echo "$2"/lib/python3*/site-packages)
mkdir -p "$SP/fakepkg" && echo "X = 42" > "$SP/fakepkg/__init__.py"
echo "import os; os.environ['FAKE_PTH_RAN'] = 'yes'" > "$SP/zz_fake.pth"
echo "venvfs: FUSE is unavailable here (test); materialized site-packages instead" >&2
"""

CHECK = "import os, fakepkg; print(fakepkg.X, os.environ.get('FAKE_PTH_RAN'))"


def py(venv: Venv, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv.python), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("tool", TOOLS)
def test_interpreter_start_mounts_and_sees_the_distributions_pth_files(
        tool: str, make_venv: Callable[..., Path], store: Store, fake_mount: Callable[..., Path]) -> None:
    venv = manage(make_venv(tool=tool), store)
    log = fake_mount(MATERIALIZE)
    hooks.install(venv)
    proc = py(venv, "-c", CHECK)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["42", "yes"]  # the same process sees the package and runs its .pth
    assert proc.stderr.splitlines() == ["venvfs: FUSE is unavailable here (test); materialized site-packages instead"]
    assert calls(log) == [f"mount {venv.root} store={store.root} guard=1"]


def test_console_script_and_python_dash_m_mount_too(make_venv: Callable[..., Path], store: Store,
                                                    fake_mount: Callable[..., Path]) -> None:
    venv = manage(make_venv(tool="uv"), store)
    cli = "def main():\n    print('tool', 42)\n\nif __name__ == '__main__':\n    main()\n"
    fake_mount(MATERIALIZE + f"cat > \"$SP/fakepkg/cli.py\" <<'EOF'\n{cli}EOF\n")
    hooks.install(venv)
    script = venv.bin_dir / "fake-tool"
    script.write_text(f"#!{venv.python}\nimport sys\nfrom fakepkg.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "tool 42\n", proc.stderr
    proc = py(venv, "-m", "fakepkg.cli")
    assert proc.returncode == 0 and proc.stdout == "tool 42\n", proc.stderr


def test_failed_mount_is_one_line_and_the_program_still_runs(make_venv: Callable[..., Path], store: Store,
                                                             fake_mount: Callable[..., Path]) -> None:
    venv = manage(make_venv(tool="uv"), store)
    fake_mount('echo "some detail" >&2\necho "venvfs: error: mounting is not permitted here" >&2\nexit 6\n')
    hooks.install(venv)
    proc = py(venv, "-c", "print('user code ran')")
    assert proc.returncode == 0 and proc.stdout == "user code ran\n"
    assert proc.stderr.splitlines() == [
        f"venvfs: cannot mount {venv.root} at interpreter start: error: mounting is not permitted here"]


def test_hook_cannot_recurse(make_venv: Callable[..., Path], store: Store, fake_mount: Callable[..., Path]) -> None:
    venv = manage(make_venv(tool="uv"), store)
    # As if venvfs ran inside the venv itself: the mount starts the venv's interpreter again.
    log = fake_mount(f'"{venv.python}" -c "pass"\n')
    hooks.install(venv)
    proc = py(venv, "-c", "pass")
    assert proc.returncode == 0, proc.stderr
    assert len(calls(log)) == 1


def test_no_mount_when_opted_out_or_materialized(make_venv: Callable[..., Path], store: Store,
                                                 fake_mount: Callable[..., Path]) -> None:
    venv = manage(make_venv(tool="uv"), store)
    log = fake_mount(MATERIALIZE)
    hooks.install(venv)
    pth = venv.site_packages / PTH_NAME
    assert py(venv, "-c", "pass", env={OPTOUT_ENV: "1"}).returncode == 0
    assert calls(log) == []
    # A stray hook in a materialized venv (e.g. left by a layout change) does nothing and goes away.
    set_layout(venv, "materialized")
    proc = py(venv, "-c", "pass")
    assert proc.returncode == 0 and proc.stderr == ""
    assert calls(log) == []
    assert not pth.exists()


def test_hook_of_an_ejected_or_deleted_state_removes_itself(make_venv: Callable[..., Path], store: Store,
                                                             fake_mount: Callable[..., Path]) -> None:
    venv = manage(make_venv(tool="uv"), store)
    log = fake_mount(MATERIALIZE)
    hooks.install(venv)
    shutil.rmtree(venv.state_dir)
    proc = py(venv, "-c", "pass")
    assert proc.returncode == 0 and proc.stderr == ""
    assert calls(log) == []
    assert not (venv.site_packages / PTH_NAME).exists()


def test_already_mounted_by_a_racing_process(make_venv: Callable[..., Path], store: Store,
                                             fake_mount: Callable[..., Path]) -> None:
    """The .pth ran (so the listing predates the mount), but the venv is mounted now: no second mount.
    Simulated with an unrelated mount point standing in for site-packages."""
    if not os.path.ismount("/proc"):
        missing_tool("no /proc mount to stand in for a mounted site-packages")
    venv = manage(make_venv(tool="uv"), store)
    log = fake_mount(MATERIALIZE)
    hooks.install(venv)
    target = hooks.target_for(venv, venv.read_state())
    (venv.site_packages / PTH_NAME).write_text(
        render_pth(dataclasses.replace(target, site_packages=Path("/proc"))))
    proc = py(venv, "-c", "pass")
    assert proc.returncode == 0, proc.stderr
    assert calls(log) == []


# -- the CLI --------------------------------------------------------------------------------------

def test_cli_hook_install_status_uninstall(make_venv: Callable[..., Path], store: Store,
                                           run_venvfs: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    venv = manage(make_venv(tool="uv"), store, hooks_on=False)
    before = snapshot(venv)
    proc = run_venvfs("hook", "status", str(venv.root), "--json")
    data = json.loads(proc.stdout)
    assert data["ok"] and not data["enabled"]

    proc = run_venvfs("hook", "install", str(venv.root))
    assert "activate" in proc.stdout
    assert venv.read_state().hooks
    proc = run_venvfs("hook", "status", str(venv.root))
    assert "installed" in proc.stdout and "problem" not in proc.stdout
    pth_line = (venv.site_packages / PTH_NAME).read_text()
    assert sys.executable in pth_line  # the venvfs that installed the hook runs the mount

    activate = venv.bin_dir / "activate"
    activate.write_text(activate.read_text().replace(" mount ", " mount --edited "))
    proc = run_venvfs("hook", "status", str(venv.root), check=False)
    assert proc.returncode == 1 and "activate: hook outdated" in proc.stdout, proc.stdout
    run_venvfs("hook", "install", str(venv.root))
    assert run_venvfs("hook", "status", str(venv.root), check=False).returncode == 0

    run_venvfs("hook", "uninstall", str(venv.root))
    assert snapshot(venv) == before
    assert not venv.read_state().hooks
    assert run_venvfs("hook", "status", str(venv.root), check=False).returncode == 0


def test_cli_refuses_an_unmanaged_venv(make_venv: Callable[..., Path],
                                       run_venvfs: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    path = make_venv(tool="uv")
    proc = run_venvfs("hook", "install", str(path), check=False)
    assert proc.returncode == 4 and "not managed" in proc.stderr


def test_failed_mount_does_not_abort_a_strict_bash(make_venv: Callable[..., Path], store: Store,
                                                   fake_mount: Callable[..., Path]) -> None:
    venv = manage(make_venv(tool="uv"), store)
    require_shell("bash", venv)
    fake_mount('echo "venvfs: error: cannot mount" >&2\nexit 6\n')
    hooks.install(venv)
    proc = subprocess.run(["bash", "-c", f"set -eu; source {venv.bin_dir}/activate; echo survived"],
                          capture_output=True, text=True)
    assert proc.stdout == "survived\n" and proc.stderr == "venvfs: error: cannot mount\n"


# -- the systemd user unit ------------------------------------------------------------------------

def test_systemd_units_are_shipped_and_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            run_venvfs: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["venvfs"]
    for name in systemd.UNIT_NAMES:
        assert any(Path("data", name).match(p) for p in patterns), f"{name} would not be packaged"

    store = tmp_path / "a store with $pecial %chars"
    text = systemd.render_unit(store)
    assert "@PYTHON@" not in text and "@ENVIRONMENT@" not in text
    assert "mount --all" in text and "umount --all" in text
    assert 'Environment="VENVFS_STORE=' + str(store).replace("$", "$$").replace("%", "%%") + '"' in text
    service = systemd.render_unit(store, systemd.SERVICE_UNIT_NAME)
    assert "@SERVICE@" not in service and "@ENVIRONMENT@" not in service
    assert "venvfs.cli.service" in service and "--systemd" in service
    # The mounts outlive the service: a stop or restart must not kill its cgroup.
    assert "\nKillMode=process\n" in service and "\nRestart=on-failure\n" in service
    assert "\nType=notify\n" in service and 'Environment="VENVFS_STORE=' in service

    # One command writes both; each verifies.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    proc = run_venvfs("hook", "unit", "--install")
    units = [tmp_path / "config" / "systemd" / "user" / name for name in systemd.UNIT_NAMES]
    assert all(unit.exists() for unit in units) and "systemctl --user enable --now" in proc.stdout
    assert " ".join(systemd.UNIT_NAMES) in proc.stdout
    assert run_venvfs("hook", "unit", "--only", "service").stdout == systemd.render_unit(
        Path(os.environ["VENVFS_STORE"]), systemd.SERVICE_UNIT_NAME)
    if shutil.which("systemd-analyze") is None:
        missing_tool("systemd-analyze is not installed (apt-get install systemd): unit syntax not checked")
    for unit in units:
        proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert proc.returncode == 0, (unit.name, proc.stderr)
        assert "KillMode" not in proc.stderr, proc.stderr  # systemd warns of a KillMode it deprecates
