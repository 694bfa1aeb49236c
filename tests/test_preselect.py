"""``venvfs uv``: what uv is about to install and the store holds is selected first, so uv writes
nothing through the mount (issue 15, outcome 2); the venv still ends as a plain venv given the same
command ends. Real uv (offline, tiny wheels), real mounts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import create_venv, stop_mount, uv
from tests.sitetree import assert_same_site_packages
from tests.test_pip_commit import _upper_copies
from tests.test_select_clean import _versions, wheelhouse
from venvfs.store.bytecode import ensure_bytecode
from venvfs.store.store import Store
from venvfs.store.wheel import ingest_wheel
from venvfs.venv.pipplan import PipCommand
from venvfs.venv.preselect import Plan, command_words, dry_run_argv, named_in, warm
from venvfs.venv.venv import Venv

pytestmark = pytest.mark.fuse


def test_a_dry_runs_plan_is_read_as_uv_prints_it() -> None:
    plan = Plan.parse("Using Python 3.11.7 environment at: v\nResolved 3 packages in 5ms\nWould install 2 packages\n"
                      " - Tools==1.0\n + tools==2.0\n + Python_Dateutil==4.0.0\n + proj @ file:///tmp/proj\n")
    assert plan.install == (("tools", "2.0"), ("python-dateutil", "4.0.0"))
    assert plan.remove == {"tools"} and plan.environment == "v"
    assert Plan.parse("Would create project environment at: .venv\n").environment == ".venv"
    # A global option's value is no command word.
    assert command_words(["--directory", "sync", "-q", "pip", "install", "x"]) == ["pip", "install", "x"]
    assert dry_run_argv("uv", ["--project", "p", "sync", "-q"]) == ["uv", "--project", "p", "sync", "--dry-run"]


def test_the_records_of_the_names_uv_is_given_are_parsed_while_it_plans(store: Store, tmp_path: Path) -> None:
    """``venvfs uv pip install a b``: the stored records of a and b are parsed while uv's dry run runs
    (what the command line names: options, their values, paths and URLs are no names)."""
    assert named_in(["pip", "install", "-q", "--python", "v/bin/python", "Needs", "tools>=1", "./x.whl",
                     "--find-links", "/w"]) == {"needs", "tools"}
    assert named_in(["--directory", "d", "add", "jax[cpu]"]) == {"jax"}
    assert named_in(["sync"]) == named_in(["run", "needs"]) == set()
    wheels = wheelhouse(tmp_path / "wheels")
    for whl in sorted(wheels.glob("*.whl")):
        ingest_wheel(store, whl)
    warm(store, {"tools"})
    assert store._records is not None and {k.rsplit("-", 2)[0] for k in store._records} == {"tools"}
    assert store.compiled_seen == {}  # nothing compiled yet: no bytecode to look up
    # Once compiled (what adopt and add do), the bytecode of the warmed records is looked up too.
    tag = sys.implementation.cache_tag
    records = [store.get_dist(k) for k in store.dist_keys()]
    ensure_bytecode(store, records, SimpleNamespace(cache_tag=tag), Path(sys.executable), show_progress=False)
    again = Store.open(store.root, create=False)
    with again.writing():
        warm(again, {"tools"})
        py = {f.digest for r in records if r.name == "tools" for f in r.site_files() if f.path.endswith(".py")}
        assert py and again.compiled_seen == {tag: py}


def test_uv_run_is_planned_as_the_sync_it_starts_with(tmp_path: Path) -> None:
    run = ["--directory", "p", "run", "-q", "--extra", "cpu", "--with", "rich", "--locked", "python", "-m", "x",
           "--no-sync"]  # the last two words are the command's
    assert dry_run_argv("uv", run, tmp_path) == ["uv", "--directory", "p", "sync", "--extra", "cpu", "--locked",
                                                 "--inexact", "--dry-run"]
    assert dry_run_argv("uv", ["run", "--exact", "pytest"], tmp_path) == ["uv", "sync", "--dry-run"]
    # No project sync to plan: told not to, or a script with its own environment (PEP 723).
    assert dry_run_argv("uv", ["run", "--no-sync", "pytest"], tmp_path) is None
    (tmp_path / "tool.py").write_text("# /// script\n# dependencies = ['rich']\n# ///\nimport rich\n")
    assert dry_run_argv("uv", ["run", "tool.py"], tmp_path) is None


def test_uvs_project_options_are_read_once_for_the_dry_sync_and_the_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``venvfs uv`` reads --project/--directory for two things: the words that name the project to
    another uv command (the dry sync after ``uv add``), and where uv runs (``--directory``, relative
    to the last one, as uv's paths are)."""
    from venvfs.cli.installers import _directory, _project_flags

    monkeypatch.chdir(tmp_path)
    cases = [
        (["--directory", "d", "--project", "p", "add", "x"], ["--directory", "d", "--project", "p"], tmp_path / "d"),
        (["--project=p", "add", "--directory=a", "x", "--directory", "b"],
         ["--project=p", "--directory=a", "--directory", "b"], tmp_path / "a" / "b"),
        (["--directory", "/abs", "sync"], ["--directory", "/abs"], Path("/abs")),
        (["add", "x", "--directory"], [], tmp_path),  # no value: uv's own error
        (["--projects=p", "--directoryx", "d", "sync"], [], tmp_path),
        (["pip", "install", "x", "--directory", "d"], ["--directory", "d"], tmp_path / "d"),  # global: uv's
        # `uv run [OPTIONS] <COMMAND> [ARGS]`: from the command on, every word is the command's.
        (["run", "tool.py", "--directory", "out"], [], tmp_path),
        (["run", "--directory", "d", "python", "x.py"], ["--directory", "d"], tmp_path / "d"),
        (["--directory", "d", "run", "python", "x.py", "--directory=e"], ["--directory", "d"], tmp_path / "d"),
        (["run", "--", "tool", "--directory", "x"], [], tmp_path),
        (["run", "--with", "pkg", "tool", "--project", "p"], [], tmp_path),
        (["run", "--with", "--directory", "tool", "--directory", "x"], [], tmp_path),  # a package named so
        (["tool", "run", "black", "--directory", "x"], [], tmp_path),
        (["add", "--", "--directory", "x"], [], tmp_path),
    ]
    for args, flags, where in cases:
        assert (_project_flags(args), _directory(args)) == (flags, where), args


def _venvfs_uv(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(uv()).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "venvfs", "uv", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_uv_pip_install_through_venvfs_serves_stored_builds_and_ends_as_plain(
        require_fuse: None, store: Store, run_venvfs: object, tmp_path: Path) -> None:
    wheels = wheelhouse(tmp_path / "wheels")
    run_venvfs("store", "add", str(wheels))  # type: ignore[operator]
    ours = create_venv((tmp_path / "ours").mkdir() or tmp_path / "ours" / "v", "uv")
    plain = create_venv((tmp_path / "plain").mkdir() or tmp_path / "plain" / "v", "uv")
    run_venvfs("mount", str(ours))  # type: ignore[operator]
    try:
        # What venvfs placed says so in its installer files (INSTALLER, no uv_cache.json): venvfs's record.
        placed = ["needs-1.0.dist-info", "pipish-1.0.dist-info", "tools-2.0.dist-info"]
        for args, served in ((["install", "needs", "pipish"], 3),  # needs pulls tools 2.0
                             (["install", "tools==1.0"], 0)):  # a downgrade: uv's way, then ingested
            flags = ["--no-index", "--find-links", str(wheels)]
            out = _venvfs_uv(tmp_path, "pip", *args, "-q", "--python", str(ours / "bin/python"), *flags)
            subprocess.run([uv(), "pip", *args, "--python", str(plain / "bin/python"), "-q", *flags], check=True)
            assert (f"{served} served from the store" in out.stderr) == bool(served), out.stderr
            if served:
                # Nothing went through the mount: no copy to drop, nothing pending.
                assert not _upper_copies(ours), _upper_copies(ours)
            run_venvfs("commit", str(ours))  # type: ignore[operator]
            placed = [p for p in placed if (Venv(ours).site_packages / p).exists()]
            assert_same_site_packages(Venv(ours).site_packages, Venv(plain).site_packages, when=" ".join(args),
                                      placed_by_venvfs=placed)
            assert _versions(ours) == _versions(plain)
            assert not _upper_copies(ours)
    finally:
        stop_mount(ours)


def _project_versions(proj: Path) -> dict[str, str]:
    # The checkout this runs from is on a `python -c`'s path (its cwd): venvfs itself is no package here.
    return {k: v for k, v in _versions(proj / ".venv").items() if k != "venvfs"}


def test_uv_add_and_sync_through_venvfs_in_a_project(require_fuse: None, store: Store, run_venvfs: object,
                                                     tmp_path: Path) -> None:
    wheels = wheelhouse(tmp_path / "wheels")
    run_venvfs("store", "add", str(wheels))  # type: ignore[operator]
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text('[project]\nname = "proj"\nversion = "0.1"\nrequires-python = ">=3.10"\n'
                                         f'dependencies = []\n\n[tool.uv]\npackage = false\nno-index = true\n'
                                         f'find-links = ["{wheels}"]\n')
    subprocess.run([uv(), "venv", "-q", str(proj / ".venv")], check=True, cwd=proj)
    run_venvfs("mount", str(proj / ".venv"))  # type: ignore[operator]
    try:
        # uv's options before the command are uv's too (venvfs passes every argument through).
        out = _venvfs_uv(tmp_path, "--directory", str(proj), "add", "-q", "needs")
        assert "2 served from the store" in out.stderr, out.stderr  # needs and tools
        assert not _upper_copies(proj / ".venv")
        assert _project_versions(proj) == {"needs": "1.0", "tools": "2.0"}
        subprocess.run([uv(), "remove", "needs"], cwd=proj, check=True, capture_output=True)
        out = _venvfs_uv(proj, "sync")
        assert "served from the store" not in out.stderr, out.stderr  # a sync that only removes
        assert _project_versions(proj) == {}
    finally:
        stop_mount(proj / ".venv")


def test_a_pip_command_line_is_split_where_pip_splits_it() -> None:
    cmd = PipCommand.parse(["-q", "--python", "v", "--log", "install", "install", "-U", "-r", "r.txt", "-v",
                            "--report", "mine.json", "--progress-bar=off"])
    assert (cmd.general, cmd.python, cmd.command) == (("-q", "--log", "install"), "v", "install")
    assert cmd.argv() == ["-q", "--log", "install", "install", "-U", "-r", "r.txt", "-v", "--report", "mine.json",
                          "--progress-bar=off"]
    # The plan's stdout is the report alone: no chatter, not the user's report file.
    assert cmd.dry_run() == ["--log", "install", "install", "-U", "-r", "r.txt", "--dry-run", "--quiet",
                             "--report", "-"]
    for no_plan in (["uninstall", "-y", "x"], ["install", "--force-reinstall", "x"], ["install", "--target=d", "x"],
                    ["install", "--user", "x"], ["install", "--dry-run", "x"]):
        assert PipCommand.parse(no_plan).dry_run() is None, no_plan


def _venvfs_pip(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "venvfs", "pip", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc


def _plain_pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin/python"), "-m", "pip", *args], check=True, capture_output=True,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def test_pip_through_venvfs_serves_stored_builds_and_ends_as_plain(
        require_fuse: None, store: Store, run_venvfs: object, tmp_path: Path) -> None:
    wheels = wheelhouse(tmp_path / "wheels")
    run_venvfs("store", "add", str(wheels))  # type: ignore[operator]
    (tmp_path / "req.txt").write_text("needs\npipish\n")
    # python -m venv: each venv has its own pip, which `venvfs pip` runs ($VIRTUAL_ENV's, as activated).
    ours = create_venv((tmp_path / "ours").mkdir() or tmp_path / "ours" / "v", "venv")
    plain = create_venv((tmp_path / "plain").mkdir() or tmp_path / "plain" / "v", "venv")
    run_venvfs("mount", str(ours))  # type: ignore[operator]
    try:
        placed = ["needs-1.0.dist-info", "pipish-1.0.dist-info", "tools-2.0.dist-info"]
        flags = ["--no-index", "--find-links", str(wheels)]
        steps = ((["install", "-q", "-r", str(tmp_path / "req.txt")], 3),  # needs pulls tools 2.0
                 (["install", "tools==1.0"], 0),  # a downgrade: pip's way, then ingested
                 (["install", "-U", "tools"], 0),  # and the upgrade back
                 (["install", "--force-reinstall", "--no-deps", "pipish"], 0),  # every file through the mount
                 (["uninstall", "-y", "needs"], 0))
        for args, served in steps:
            extra = flags if args[0] == "install" else []
            out = _venvfs_pip(tmp_path, *args, *extra, env={"VIRTUAL_ENV": str(ours)})
            _plain_pip(plain, *args, *extra)
            assert (f"{served} served from the store" in out.stderr) == bool(served), out.stderr
            if served:
                # Nothing went through the mount: no copy to drop, nothing pending.
                assert not _upper_copies(ours), _upper_copies(ours)
            run_venvfs("commit", str(ours))  # type: ignore[operator]
            placed = [p for p in placed if (Venv(ours).site_packages / p).exists()
                      and (Venv(ours).site_packages / p / "INSTALLER").read_text().strip() == "venvfs"]
            assert_same_site_packages(Venv(ours).site_packages, Venv(plain).site_packages, when=" ".join(args),
                                      placed_by_venvfs=placed)
            assert _versions(ours) == _versions(plain)
            assert not _upper_copies(ours), (args, _upper_copies(ours))
    finally:
        stop_mount(ours)


def test_pip_into_a_venv_without_pip_runs_venvfss_pip_with_python(
        require_fuse: None, store: Store, run_venvfs: object, tmp_path: Path) -> None:
    wheels = wheelhouse(tmp_path / "wheels")
    run_venvfs("store", "add", str(wheels))  # type: ignore[operator]
    ours = create_venv(tmp_path / ".venv", "uv")  # uv venv: no pip of its own
    run_venvfs("mount", str(ours))  # type: ignore[operator]
    try:
        env = {"VIRTUAL_ENV": ""}  # ./.venv, found from the working directory
        out = _venvfs_pip(tmp_path, "install", "needs", "--no-index", "--find-links", str(wheels), env=env)
        assert "2 served from the store" in out.stderr, out.stderr
        assert not _upper_copies(ours)
        assert {k: v for k, v in _versions(ours).items() if k != "venvfs"} == {"needs": "1.0", "tools": "2.0"}
        out = _venvfs_pip(tmp_path, "--python", str(ours / "bin/python"), "list", "--format", "freeze", env=env)
        assert "needs==1.0" in out.stdout and "pip==" not in out.stdout
    finally:
        stop_mount(ours)


def test_pip_without_a_venv_says_so(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "venvfs", "pip", "install", "x"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "VIRTUAL_ENV": ""})
    assert proc.returncode == 2 and "no virtual environment" in proc.stderr and "Traceback" not in proc.stderr


def test_uv_run_through_venvfs_serves_what_its_sync_installs(require_fuse: None, store: Store, run_venvfs: object,
                                                           tmp_path: Path) -> None:
    wheels = wheelhouse(tmp_path / "wheels")
    run_venvfs("store", "add", str(wheels))  # type: ignore[operator]
    projects = []
    for side in ("ours", "plain"):
        proj = tmp_path / side / "proj"
        proj.mkdir(parents=True)
        (proj / "pyproject.toml").write_text(
            '[project]\nname = "proj"\nversion = "0.1"\nrequires-python = ">=3.10"\ndependencies = ["needs"]\n\n'
            f'[tool.uv]\npackage = false\nno-index = true\nfind-links = ["{wheels}"]\n')
        subprocess.run([uv(), "lock", "-q"], check=True, cwd=proj)  # locked, not installed
        subprocess.run([uv(), "venv", "-q", "--python", sys.executable, str(proj / ".venv")], check=True, cwd=proj)
        projects.append(proj)
    ours, plain = projects
    run_venvfs("mount", str(ours / ".venv"))  # type: ignore[operator]
    try:
        code = "import needs, tools; print('ran')"
        out = _venvfs_uv(ours, "run", "python", "-c", code)
        assert out.stdout == "ran\n" and "2 served from the store" in out.stderr, out.stderr  # needs and tools
        assert not _upper_copies(ours / ".venv")
        subprocess.run([uv(), "run", "python", "-c", code], check=True, cwd=plain, capture_output=True)
        assert _project_versions(ours) == _project_versions(plain) == {"needs": "1.0", "tools": "2.0"}
        assert_same_site_packages(Venv(ours / ".venv").site_packages, Venv(plain / ".venv").site_packages,
                                  placed_by_venvfs=["needs-1.0.dist-info", "tools-2.0.dist-info"])
    finally:
        stop_mount(ours / ".venv")



def test_uv_run_reads_only_uvs_own_directory_not_the_commands(require_fuse: None, store: Store,
                                                               run_venvfs: object, tmp_path: Path) -> None:
    """``venvfs uv run python tool.py --directory out``: ``--directory out`` is the tool's. Read as
    uv's, the project was looked for in ``out/`` and nothing was served from the store."""
    wheels = wheelhouse(tmp_path / "wheels")
    run_venvfs("store", "add", str(wheels))  # type: ignore[operator]
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text(
        '[project]\nname = "proj"\nversion = "0.1"\nrequires-python = ">=3.10"\ndependencies = ["needs"]\n\n'
        f'[tool.uv]\npackage = false\nno-index = true\nfind-links = ["{wheels}"]\n')
    (proj / "tool.py").write_text("import sys, needs\nprint(sys.argv[1:])\n")
    subprocess.run([uv(), "lock", "-q"], check=True, cwd=proj)
    subprocess.run([uv(), "venv", "-q", "--python", sys.executable, str(proj / ".venv")], check=True, cwd=proj)
    run_venvfs("mount", str(proj / ".venv"))  # type: ignore[operator]
    try:
        out = _venvfs_uv(tmp_path, "--directory", "proj", "run", "python", "tool.py", "--directory", "out")
        assert out.stdout == "['--directory', 'out']\n", out.stdout
        assert "2 served from the store" in out.stderr, out.stderr  # needs and tools
        assert not _upper_copies(proj / ".venv")
    finally:
        stop_mount(proj / ".venv")
