"""Builds that tie are never picked silently (issue 13, point 5): a wheel that claims a stored name and
version with other content is stored with a warning, and ``venvfs add NAME`` refuses to choose between
them, naming each; a key chooses. One wheel installed by pip, by uv and stored from the file is one build.
Real wheels, real pip and uv installs, real venvs, and a second local user with a store of its own."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

from venvfs.errors import AmbiguousBuild
from venvfs.venv.venv import Venv

from conftest import create_venv, run_cli, tree_snapshot, uv_pip
from otheruser import other_user
from wheelbuilder import build_wheel, simple_package


def six_wheels(where: Path) -> tuple[Path, Path]:
    """The real build of six 1.17.0 and a fake one: same name, version and tag, other code."""
    real = simple_package("six", "1.17.0")
    fake = dataclasses.replace(real, files={**real.files, "six/__init__.py": b"print('FAKE SIX RAN')\n"})
    return build_wheel(where / "real", real), build_wheel(where / "fake", fake)


def key_of(proc: subprocess.CompletedProcess[str]) -> str:
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith(("added: ", "already stored: "))]
    return line.split(": ", 1)[1].split()[0]


def selection(venv: Path) -> list[str]:
    return list(json.loads((venv / ".venvfs" / "state.json").read_text())["selection"])


def test_two_builds_with_other_content_are_never_picked_silently(tmp_path: Path) -> None:
    store = tmp_path / "store"
    real, fake = six_wheels(tmp_path)
    real_key = key_of(run_cli(store, "store", "add", str(real)))
    adopted = create_venv(tmp_path / "adopted", "uv")
    uv_pip(adopted, str(real))
    run_cli(store, "adopt", str(adopted), "--no-hooks", "--no-compile")
    stored = run_cli(store, "store", "add", str(fake))
    fake_key = key_of(stored)
    assert stored.returncode == 0 and fake_key != real_key
    (warning,) = stored.stderr.splitlines()
    assert warning.startswith(f"venvfs: warning: {fake.name} claims six 1.17.0, already stored with other content: "
                              ), warning
    # The real content is one build however it came (the wheel, uv's install of it adopted), named
    # with where it came from, and how to choose.
    assert [k for k in selection(adopted) if k.startswith("six-")] == [real_key]
    assert f"{real_key} (wheel {real.name} sha256 " in warning and "adopted from" not in warning
    assert warning.endswith(f"(`venvfs add VENV {fake_key}` chooses this one)"), warning

    venv = create_venv(tmp_path / "venv", "uv")
    run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
    before, state_before = tree_snapshot(venv), selection(venv)
    proc = run_cli(store, "add", str(venv), "six", check=False)
    assert proc.returncode == AmbiguousBuild.exit_code, (proc.stdout, proc.stderr)
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"venvfs: error: six 1.17.0: 2 stored builds with different content fit {venv} "
                           "equally (tag py3-none-any): "), line
    assert real_key in line and fake_key in line and f"wheel {fake.name} sha256 " in line, line
    assert line.endswith(f"choose one by its key: `venvfs add {venv} KEY`"), line
    assert tree_snapshot(venv) == before and selection(venv) == state_before
    python = str(Venv.open(venv).python)
    assert subprocess.run([python, "-c", "import six"], capture_output=True).returncode != 0

    # A key chooses, and the venv's choice then stands: naming six again changes nothing.
    run_cli(store, "add", str(venv), real_key)
    assert selection(venv) == [real_key]
    assert run_cli(store, "add", str(venv), "six").returncode == 0 and selection(venv) == [real_key]
    ran = subprocess.run([python, "-c", "import six; print(six.VERSION)"], capture_output=True, text=True)
    assert ran.stdout == "1.17.0\n", ran
    # As a dependency too: a project requiring six keeps the chosen build.
    app = build_wheel(tmp_path / "app", simple_package("app", "1.0", requires=("six",)))
    run_cli(store, "add", str(venv), str(app))
    assert real_key in selection(venv) and fake_key not in selection(venv)


def test_one_wheel_installed_by_pip_by_uv_and_stored_is_one_build(tmp_path: Path) -> None:
    store = tmp_path / "store"
    real, _ = six_wheels(tmp_path)
    keys = set()
    for tool in ("venv", "uv"):  # pip (python -m venv's) and uv write other INSTALLER, direct_url.json…
        venv = create_venv(tmp_path / f"by-{tool}", tool)
        if tool == "uv":
            uv_pip(venv, str(real))
        else:
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(real)], check=True)
        run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
        keys |= {k for k in selection(venv) if k.startswith("six-")}
    stored = run_cli(store, "store", "add", str(real))
    assert stored.stderr == "", stored.stderr  # no warning: the same content
    keys.add(key_of(stored))
    assert len(keys) == 1, keys  # one record: the key holds no installer's files (issue 15, finding 4)
    venv = create_venv(tmp_path / "venv", "uv")
    run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
    proc = run_cli(store, "add", str(venv), "six")
    assert proc.stderr == "" and len(selection(venv)) == 1 and selection(venv)[0] in keys
    ran = subprocess.run([str(Venv.open(venv).python), "-c", "import six; print(six.VERSION)"], capture_output=True,
                         text=True)
    assert ran.stdout == "1.17.0\n", ran


def test_a_second_user_is_never_given_a_tie_silently(tmp_path: Path) -> None:
    real, fake = six_wheels(tmp_path)
    with other_user() as user:
        for wheel in (real, fake):
            target = user.home / wheel.parent.name
            target.mkdir()
            (target / wheel.name).write_bytes(wheel.read_bytes())
        store = user.home / "store"  # the user's own store
        first = user.venvfs("store", "add", "--store", str(store), str(user.home / "real" / real.name))
        second = user.venvfs("store", "add", "--store", str(store), str(user.home / "fake" / fake.name))
        assert first.returncode == 0 and first.stderr == "", first.stderr
        assert second.returncode == 0 and "claims six 1.17.0, already stored with other content" in second.stderr
        venv = user.home / "venv"
        made = user.run(user.python, "-m", "venv", str(venv))
        assert made.returncode == 0, made.stderr
        adopted = user.venvfs("adopt", "--store", str(store), "--no-hooks", "--no-compile", str(venv))
        assert adopted.returncode == 0, adopted.stderr
        proc = user.venvfs("add", "--store", str(store), str(venv), "six")
        assert proc.returncode == AmbiguousBuild.exit_code, (proc.stdout, proc.stderr)
        assert "2 stored builds with different content" in proc.stderr and len(proc.stderr.splitlines()) == 1
        assert not list(Venv.open(venv).site_packages.glob("six*"))
        real_key = key_of(first)
        assert user.venvfs("add", "--store", str(store), str(venv), real_key).returncode == 0
        ran = user.run(str(venv / "bin" / "python"), "-c", "import six; print(six.VERSION)")
        assert ran.stdout == "1.17.0\n", ran
        assert all(p.stat().st_uid == user.uid for p in store.rglob("*"))
