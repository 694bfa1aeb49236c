"""The command line as users and scripts meet it: --help everywhere, both entry points, --json output that
parses, and the documented exit codes."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, create_venv, missing_tool, run_cli
from tests.wheelbuilder import build_wheel, simple_package
from venvfs import errors
from venvfs.cli.app import PASSTHROUGH, build_parser
from venvfs.errors import EXIT_CODES


def _commands() -> list[list[str]]:
    """Every command and subcommand path, e.g. ["store", "gc"]."""
    paths: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return paths


def _venvfs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "venvfs", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_every_command_has_help() -> None:
    commands = _commands()
    names = {" ".join(c) for c in commands}
    assert {"store add", "store list", "store status", "store verify", "store gc", "adopt", "materialize", "add",
            "remove", "status"} <= names
    parser = build_parser()
    for command in commands:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*command, "--help"])
        assert exc.value.code == 0, command


def test_every_command_takes_the_common_flags() -> None:
    # `venvfs umount -q` was a usage error while `mount -q` worked (issue 17): the same flags everywhere.
    parser = build_parser()
    leaves = [c for c in _commands() if not any(o[:len(c)] == c and len(o) > len(c) for o in _commands())]
    for command in leaves:
        if command == ["bench"]:
            continue  # its own -q (no progress lines); it takes no store, lock or venv
        if command[0] in PASSTHROUGH:
            continue  # every argument is the installer's (`venvfs pip -q install x` is pip's -q)
        sub = parser
        for name in command:
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        options = set(sub._option_string_actions)
        assert {"-q", "--quiet", "--store", "--wait", "--no-wait"} <= options, command


def test_quiet_prints_nothing_on_success(tmp_path: Path) -> None:
    store = tmp_path / "store"
    wheel = build_wheel(tmp_path, simple_package("quietpkg", "1.0"))
    venv = create_venv(tmp_path / "venv", "uv")
    assert run_cli(store, "store", "add", "-q", str(wheel)).stdout == ""
    assert run_cli(store, "adopt", "-q", str(venv), "--no-hooks", "--no-compile").stdout == ""
    loud = run_cli(store, "status", str(venv))
    assert "quietpkg" not in loud.stdout and loud.stdout.strip()
    assert run_cli(store, "add", "-q", str(venv), "quietpkg").stdout == ""
    assert run_cli(store, "umount", "-q", str(venv)).stdout == ""
    assert run_cli(store, "store", "gc", "-q", "--dry-run").stdout == ""
    # --json is what a script asked for: -q does not take it away.
    assert json.loads(run_cli(store, "status", "-q", "--json", str(venv)).stdout)["distributions"]


def test_help_output_in_a_subprocess() -> None:
    proc = _venvfs("--help")
    assert proc.returncode == 0
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in proc.stdout
    proc = _venvfs("store", "add", "--help")
    assert proc.returncode == 0 and "exit code 3" in proc.stdout
    proc = _venvfs("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("venvfs ")


def test_exit_codes_match_the_exceptions() -> None:
    classes = [errors.VenvfsError, errors.InvalidWheel, errors.VenvError, errors.StoreError, errors.MountError,
               errors.Busy, errors.NoMatchingDistribution, errors.AmbiguousBuild]
    for cls in classes:
        assert cls.exit_code in EXIT_CODES, cls
    assert len({c.exit_code for c in classes}) == len(classes)


def test_no_command_and_bad_usage_exit_2() -> None:
    assert _venvfs().returncode == 2
    proc = _venvfs("store", "gc", "--no-such-option")
    assert proc.returncode == 2
    proc = _venvfs("adopt", "--link-mode", "teleport")
    assert proc.returncode == 2


def test_console_script_entry_point() -> None:
    """``venvfs`` (the [project.scripts] entry) and ``python -m venvfs`` are the same program."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"venvfs": "venvfs.cli:main"}
    exe = shutil.which("venvfs")
    if exe is None:
        missing_tool("the venvfs console script is not installed (pip install -e .)")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == _venvfs("--help").stdout


def test_json_outputs_parse(tmp_path: Path) -> None:
    store = tmp_path / "store"
    wheel = build_wheel(tmp_path, simple_package("jsonpkg", "1.0"))
    venv = create_venv(tmp_path / "venv", "uv")
    outputs = {
        "store add": run_cli(store, "store", "add", "--json", str(wheel)).stdout,
        "adopt": run_cli(store, "adopt", str(venv), "--json", "--no-hooks", "--no-compile").stdout,
        "add": run_cli(store, "add", str(venv), "jsonpkg", "--json").stdout,
        "materialize": run_cli(store, "materialize", str(venv), "--json").stdout,
        "status": run_cli(store, "status", str(venv), "--json").stdout,
        "store list": run_cli(store, "store", "list", "--json").stdout,
        "store status": run_cli(store, "store", "status", "--json").stdout,
        "store verify": run_cli(store, "store", "verify", "--json").stdout,
        "store gc": run_cli(store, "store", "gc", "--dry-run", "--json").stdout,
        "remove": run_cli(store, "remove", str(venv), "jsonpkg", "--json").stdout,
    }
    parsed = {name: json.loads(out) for name, out in outputs.items()}
    assert parsed["store add"][0]["new"] is True
    assert parsed["status"]["distributions"][0]["name"] == "jsonpkg"
    assert parsed["store verify"]["ok"] is True
    assert parsed["remove"]["removed"][0].startswith("jsonpkg-1.0-")


def test_venv_given_by_virtual_env_variable(tmp_path: Path) -> None:
    store = tmp_path / "store"
    venv = create_venv(tmp_path / "venv", "uv")
    run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
    proc = run_cli(store, "status", "--json", env={"VIRTUAL_ENV": str(venv)})
    assert json.loads(proc.stdout)["venv"] == str(venv)


def test_exit_4_for_missing_or_unmanaged_venv(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for args in (["adopt", str(tmp_path / "absent")], ["status", str(tmp_path / "absent")]):
        proc = run_cli(store, *args, check=False)
        assert proc.returncode == 4, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    venv = create_venv(tmp_path / "venv", "uv")
    proc = run_cli(store, "status", str(venv), check=False)
    assert proc.returncode == 4 and "not managed" in proc.stderr


def test_exit_5_for_missing_store(tmp_path: Path) -> None:
    for args in (["store", "verify"], ["store", "gc"]):
        proc = run_cli(tmp_path / "nothing-here", *args, check=False)
        assert proc.returncode == 5, proc.stderr
        assert not (tmp_path / "nothing-here").exists()


def test_exit_7_when_the_venv_is_locked(tmp_path: Path) -> None:
    store = tmp_path / "store"
    venv = create_venv(tmp_path / "venv", "uv")
    run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
    fd = os.open(venv / ".venvfs" / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = run_cli(store, "adopt", str(venv), "--no-hooks", check=False)
    finally:
        os.close(fd)
    assert proc.returncode == 7 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_exit_3_and_json_for_bad_wheel(tmp_path: Path) -> None:
    bad = tmp_path / "bad-1.0-py3-none-any.whl"
    bad.write_bytes(b"PK\x03\x04 truncated")
    proc = run_cli(tmp_path / "store", "store", "add", "--json", str(bad), check=False)
    assert proc.returncode == 3
    assert "error" in json.loads(proc.stdout)[0]


def test_long_work_logs_progress_lines_when_piped(tmp_path: Path) -> None:
    # A silent minute in a CI log reads as a hang (issue 17: adopt of torch was silent when piped):
    # off a terminal, long work prints a plain line every VENVFS_PROGRESS_INTERVAL seconds.
    store = tmp_path / "store"
    wheel = build_wheel(tmp_path, simple_package("slowpkg", "1.0"))
    venv = create_venv(tmp_path / "venv", "uv")
    subprocess.run(["uv", "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "VENVFS_STORE": str(store), "VENVFS_PROGRESS_INTERVAL": "0"}
    proc = subprocess.run([sys.executable, "-m", "venvfs", "adopt", "--no-hooks", "--no-compile", str(venv)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("adopting venv:")]
    assert lines and all("\r" not in line and " files" in line for line in lines), proc.stderr
    quiet = subprocess.run([sys.executable, "-m", "venvfs", "adopt", "-q", "--no-hooks", "--no-compile", str(venv)],
                           capture_output=True, text=True, env=env)
    assert quiet.returncode == 0 and "adopting" not in quiet.stderr, quiet.stderr
