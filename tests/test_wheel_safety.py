"""Issue 13, points 1 and 7: wheels that are safe one at a time but not together, and wheel limits.

Point 1: wheel A ships a symlink ``chaina/.../a -> ../..`` (back to site-packages), wheel B a
symlink ``.../a/L -> ../../..`` below it (to ``/``, once ``a`` is a link), wheel C a file
``.../a/L/<an absolute path>``. Each passes ingest alone; materialized together they used to create
that file outside the venv. Point 7: zip bombs, huge wheels, and names too long to be placed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, missing_tool, run_cli, stop_mount, tree_snapshot
from tests.wheelbuilder import WheelSpec, build_wheel, simple_package
from venvfs.errors import InvalidWheel, VenvError
from venvfs.store.limits import IngestLimits
from venvfs.store.store import Store
from venvfs.store.wheel import ingest_wheel
from venvfs.venv.venv import Venv
from venvfs.venv.view import SYMLINK, LowerDir, LowerFile, build_view

DEPTH = 20  # directories above the first link: deeper than any test's site-packages, so L reaches "/"


def chain_wheels(directory: Path, target: Path) -> list[Path]:
    """Wheels A, B, C of the issue; C's file lands on ``target`` (absolute) if links are followed."""
    dirs = "/".join(["chaina", *(f"d{i}" for i in range(DEPTH - 1))])
    a = f"{dirs}/a"
    # Each link climbs exactly as many levels as it is deep: inside its own wheel it stays inside.
    spec_a = WheelSpec(name="chaina", files={"chaina/__init__.py": b""}, symlinks={a: "/".join([".."] * DEPTH)})
    spec_b = WheelSpec(name="chainb", files={"chainb.py": b""}, symlinks={f"{a}/L": "/".join([".."] * (DEPTH + 1))})
    spec_c = WheelSpec(name="chainc", files={"chainc.py": b"", f"{a}/L{target}": b"written outside the venv\n"})
    return [build_wheel(directory, spec) for spec in (spec_a, spec_b, spec_c)]


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def keys(store: Path, *names: str) -> list[str]:
    rows = json.loads(run_cli(store, "store", "list", "--json").stdout)
    by_name = {r["name"]: r["key"] for r in rows}
    return [by_name[n] for n in names]


def select_directly(venv: Path, selection: list[str]) -> None:
    """A selection made before venvfs checked selections as a whole (or by hand): what a mount, an
    eject and ``umount --materialize`` must still be safe with."""
    v = Venv.open(venv)
    state = v.read_state()
    state.selection = [*state.selection, *selection]
    v.write_state(state)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory outside pytest's 0700 tmp_path, so that a second user can be given part of it."""
    path = Path(tempfile.mkdtemp(prefix="venvfs-safety-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- point 1 -------------------------------------------------------------------------------------------

def test_each_chain_wheel_alone_is_accepted(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for wheel in chain_wheels(tmp_path / "wheels", tmp_path / "outside" / "pwned"):
        run_cli(store, "store", "add", str(wheel))
    assert len(keys(store, "chaina", "chainb", "chainc")) == 3


def test_add_chain_to_materialized_venv_writes_nothing_outside(tmp_path: Path, make_venv: Callable[..., Path]
                                                               ) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "pwned"
    store = tmp_path / "store"
    for wheel in chain_wheels(tmp_path / "wheels", target):
        run_cli(store, "store", "add", str(wheel))
    venv = make_venv()
    run_cli(store, "adopt", str(venv), "--no-hooks")
    before = tree_snapshot(venv)
    selection = Venv.open(venv).read_state().selection

    proc = run_cli(store, "add", str(venv), "chaina", "chainb", "chainc", check=False)
    line = one_line(proc)
    assert proc.returncode == InvalidWheel.exit_code, proc.stderr
    assert "chaina-" in line and "chainb-" in line and "symlink" in line, line
    assert not target.exists() and list(outside.iterdir()) == []
    assert tree_snapshot(venv) == before, "the venv changed"
    assert Venv.open(venv).read_state().selection == selection

    # One at a time is the same selection in the end: refused when it would become one.
    run_cli(store, "add", str(venv), "chaina")
    proc = run_cli(store, "add", str(venv), "chainb", "chainc", check=False)
    assert proc.returncode == InvalidWheel.exit_code and "chaina-" in one_line(proc), proc.stderr
    assert not target.exists() and list(outside.iterdir()) == []
    assert Venv.open(venv).read_state().selection == [*selection, *keys(store, "chaina")]


def test_placing_never_follows_a_symlink_in_the_venv(tmp_path: Path, make_venv: Callable[..., Path]) -> None:
    """The placing walk itself, whatever put the symlink there (here: by hand, as a user might)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    store = tmp_path / "store"
    wheel = build_wheel(tmp_path / "wheels", simple_package("walked"))
    venv = make_venv()
    run_cli(store, "adopt", str(venv), "--no-hooks")
    sp = Venv.open(venv).site_packages
    (sp / "walked").symlink_to(outside)
    proc = run_cli(store, "add", str(venv), str(wheel), check=False)
    line = one_line(proc)
    assert proc.returncode == VenvError.exit_code, proc.stderr
    assert f"{sp / 'walked'} is a symlink" in line, line
    assert list(outside.iterdir()) == [], "a file was placed through the symlink"


def test_a_failed_add_says_why_at_once_while_bytecode_compiles(tmp_path: Path,
                                                               make_venv: Callable[..., Path]) -> None:
    """adopt leaves a bytecode compile running for up to minutes; an add that then failed waited
    behind it to take back its objects (60 s, then a second line). The compile here is the real
    background process, given an interpreter that takes its work and never answers."""
    store = tmp_path / "store"
    wheels = tmp_path / "wheels"
    run_cli(store, "store", "add", str(build_wheel(wheels, simple_package("compiled"))))
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\ncat > /dev/null\nexec sleep 120\n")
    slow.chmod(0o755)
    key = keys(store, "compiled")[0]
    compiler = subprocess.Popen([sys.executable, "-m", "venvfs.store.bytecode", "--store", str(store), "--python",
                                 str(slow), "--cache-tag", "cpython-399", key],
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        venv = make_venv()
        run_cli(store, "adopt", str(venv), "--no-hooks", "--no-compile")
        (Venv.open(venv).site_packages / "walked").symlink_to(tmp_path)
        time.sleep(1)  # the compiler holds its lock by now
        assert compiler.poll() is None
        proc = run_cli(store, "add", str(venv), str(build_wheel(wheels, simple_package("walked"))), check=False,
                       env={"VENVFS_LOCK_TIMEOUT": "20"})
        assert proc.returncode == VenvError.exit_code, proc.stderr
        assert "is a symlink" in one_line(proc)
    finally:
        compiler.kill()
        compiler.wait()


def test_removing_never_follows_a_symlink_in_the_venv(tmp_path: Path, make_venv: Callable[..., Path]) -> None:
    """Removal goes through the same walk: a directory swapped for a symlink keeps what it leads to."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "helpers.py").write_text("not the venv's\n")
    store = tmp_path / "store"
    wheel = build_wheel(tmp_path / "wheels", simple_package("walked"))
    venv = make_venv()
    run_cli(store, "add", str(venv), str(wheel), "--link-mode", "copy")
    sub = Venv.open(venv).site_packages / "walked" / "sub"
    shutil.rmtree(sub)
    sub.symlink_to(outside)
    run_cli(store, "remove", str(venv), "walked")
    assert (outside / "helpers.py").read_text() == "not the venv's\n"
    assert sub.is_symlink() and not (sub.parent / "__init__.py").exists()


def test_upper_layer_links_are_not_followed_out_of_the_store(tmp_path: Path, make_venv: Callable[..., Path],
                                                            require_fuse: None) -> None:
    """Switching to real files copies the store bytecode links a mount left in the upper layer; a
    link that only starts like one (``STORE/bytecode/../..``) stays a link, and a symlink planted at
    the copy's temporary name is replaced, not written through."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret\n")
    (outside / "victim").write_text("victim\n")
    store = tmp_path / "store"
    wheel = build_wheel(tmp_path / "wheels", simple_package("linked"))
    venv = make_venv()
    run_cli(store, "mount", str(venv))
    run_cli(store, "add", str(venv), str(wheel))
    run_cli(store, "umount", str(venv))
    v = Venv.open(venv)
    pyc = next((store / "bytecode").rglob("*.pyc"))
    upper_cache = v.upper_dir / "linked" / "__pycache__"
    upper_cache.mkdir(parents=True)
    escape = f"{store}/bytecode/{'/'.join(['..'] * 2)}/outside/secret"
    assert os.path.realpath(escape) == str(outside / "secret")
    (upper_cache / "evil.cpython-311.pyc").symlink_to(escape)
    (upper_cache / "good.cpython-311.pyc").symlink_to(pyc)
    sp_cache = v.site_packages / "linked" / "__pycache__"
    sp_cache.mkdir(parents=True)
    (sp_cache / "good.cpython-311.pyc.venvfs-tmp").symlink_to(outside / "victim")

    run_cli(store, "materialize", str(venv))
    assert (sp_cache / "evil.cpython-311.pyc").is_symlink(), "the secret was copied into the venv"
    assert (outside / "victim").read_text() == "victim\n", "written through the planted symlink"
    good = sp_cache / "good.cpython-311.pyc"
    assert not good.is_symlink() and good.read_bytes() == pyc.read_bytes()


@pytest.mark.allow_warnings  # the conflicts are logged (the daemon's log, in a mount)
def test_view_of_chain_follows_no_link(tmp_path: Path) -> None:
    """The view is a tree of names: a symlink is a leaf, and nothing is ever looked up below one."""
    store = Store.open(tmp_path / "store")
    records = [ingest_wheel(store, w)[0] for w in chain_wheels(tmp_path / "wheels", Path("/etc/pwned"))]
    a = "/".join(["chaina", *(f"d{i}" for i in range(DEPTH - 1)), "a"])
    # A first: its link takes the name, B's link and C's file below it are left out.
    view = build_view(records, cache_tag=None)
    entry = view.lookup(a)
    assert isinstance(entry, LowerFile) and entry.kind == SYMLINK
    assert view.lookup(f"{a}/L") is None and view.lookup(f"{a}/L/etc/pwned") is None
    # C first: its directories take the names, both links are left out; C's file is a plain name
    # inside the mount, as a wheel that shipped those directories itself would have it.
    view = build_view(records[::-1], cache_tag=None)
    assert isinstance(view.lookup(a), LowerDir) and isinstance(view.lookup(f"{a}/L"), LowerDir)
    assert not any(isinstance(e, LowerFile) and e.kind == SYMLINK for _, e in view.walk())


def test_mounted_chain_add_eject_and_umount_materialize(tmp_path: Path, make_venv: Callable[..., Path],
                                                        fuse_mode: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "pwned"
    store = tmp_path / "store"
    for wheel in chain_wheels(tmp_path / "wheels", target):
        run_cli(store, "store", "add", str(wheel))
    venv = make_venv()
    run_cli(store, "mount", str(venv))
    try:
        v = Venv.open(venv)
        selection = v.read_state().selection
        proc = run_cli(store, "add", str(venv), "chaina", "chainb", "chainc", check=False)
        assert proc.returncode == InvalidWheel.exit_code and "symlink" in one_line(proc), proc.stderr
        assert v.read_state().selection == selection

        # A selection that holds all three anyway: the view is a tree of names and follows nothing.
        run_cli(store, "umount", str(venv))
        select_directly(venv, keys(store, "chaina", "chainb", "chainc"))
        run_cli(store, "mount", str(venv))
        a = v.site_packages.joinpath("chaina", *(f"d{i}" for i in range(DEPTH - 1)), "a")
        assert a.is_symlink() and not os.path.lexists(a / "L") and not os.path.lexists(a / "L" / str(target)[1:])
        hooks_before = (v.state_dir / "hooks.json").read_bytes()

        for args in (["eject", str(venv)], ["umount", str(venv), "--materialize"], ["materialize", str(venv)]):
            proc = run_cli(store, *args, check=False)
            line = one_line(proc)
            assert proc.returncode == InvalidWheel.exit_code, proc.stderr
            assert "chaina-" in line and "chainb-" in line, line
            assert not target.exists() and list(outside.iterdir()) == []
            # Left as it was: mounted, hooks on, no eject begun, the mounted layout.
            state = v.read_state()
            assert state.layout == "mounted" and state.hooks, args
            assert not (v.state_dir / "ejecting").exists()
            assert (v.state_dir / "hooks.json").read_bytes() == hooks_before
            assert a.is_symlink(), "no longer mounted"
    finally:
        stop_mount(venv)


# -- point 1, as a second local user -------------------------------------------------------------------

PEER = "venvfs-peer"


def peer_command(home: Path) -> list[str]:
    """``setpriv`` as a second, unprivileged local user (created if absent) running this venvfs."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        missing_tool("needs root and setpriv (runs venvfs as a second user)")
    if subprocess.run(["id", "-u", PEER], capture_output=True).returncode != 0:
        if shutil.which("useradd") is None:
            missing_tool("useradd (to create a second local user)")
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PEER],
                       check=True, capture_output=True)
    uid = int(subprocess.run(["id", "-u", PEER], capture_output=True, text=True, check=True).stdout)
    gid = int(subprocess.run(["id", "-g", PEER], capture_output=True, text=True, check=True).stdout)
    os.chown(home, uid, gid)
    site = [p for p in sys.path if p.endswith("site-packages")]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    problem = ""
    # This interpreter, or the system's of the same version where this one lives under /root (0700).
    for python in (sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}"):
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
               "env", f"PYTHONPATH={':'.join([str(REPO), *site])}", f"HOME={home}", "CI=true", python]
        probe = subprocess.run([*cmd, "-c", "import venvfs, installer, packaging"], capture_output=True, cwd="/")
        if probe.returncode == 0:
            return cmd
        problem = probe.stderr.decode()[-200:]
    missing_tool(f"no Python {version} that {PEER} can run venvfs with: {problem}")
    raise AssertionError


def test_chain_as_second_user(public_dir: Path) -> None:
    home = public_dir / "peer"
    home.mkdir()
    cmd = peer_command(home)

    def peer(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=home, timeout=600)

    outside = home / "outside"
    assert peer("-c", f"import os; os.mkdir({str(outside)!r})").returncode == 0
    target = outside / "pwned"
    wheels = chain_wheels(public_dir / "wheels", target)
    for wheel in wheels:
        wheel.chmod(0o644)
    store, venv = home / "store", home / "venv"
    for wheel in wheels:
        proc = peer("-m", "venvfs", "store", "add", "--store", str(store), str(wheel))
        assert proc.returncode == 0, proc.stderr
    assert peer("-m", "venv", "--without-pip", str(venv)).returncode == 0
    proc = peer("-m", "venvfs", "adopt", "--store", str(store), "--no-hooks", str(venv))
    assert proc.returncode == 0, proc.stderr
    assert venv.stat().st_uid == store.stat().st_uid == home.stat().st_uid != 0
    before = tree_snapshot(venv)
    proc = peer("-m", "venvfs", "add", "--store", str(store), str(venv), "chaina", "chainb", "chainc")
    line = one_line(proc)
    assert proc.returncode == InvalidWheel.exit_code and "chaina-" in line and "chainb-" in line, proc.stderr
    assert not target.exists() and list(outside.iterdir()) == []
    assert tree_snapshot(venv) == before


# -- point 7: what cannot be placed is refused before anything changes -------------------------------

def test_too_long_name_stops_eject_and_umount_materialize_before_any_change(
        tmp_path: Path, make_venv: Callable[..., Path], fuse_mode: str) -> None:
    """A 303-byte name stored before the limit existed: eject and ``umount --materialize`` refuse up
    front instead of failing half way with ENAMETOOLONG (which left the venv unmounted, hooks off)."""
    store = tmp_path / "store"
    name = "n" * 300 + ".py"
    wheel = build_wheel(tmp_path / "wheels", WheelSpec(name="longname", files={f"longname/{name}": b"x = 1\n",
                                                                               "longname/__init__.py": b""}))
    ingest_wheel(Store.open(store), wheel, limits=IngestLimits(max_name=400))
    venv = make_venv()
    run_cli(store, "mount", str(venv))
    try:
        v = Venv.open(venv)
        proc = run_cli(store, "add", str(venv), "longname", check=False)
        line = one_line(proc)
        assert proc.returncode == InvalidWheel.exit_code and "longname-" in line and "255" in line, proc.stderr
        run_cli(store, "umount", str(venv))
        select_directly(venv, keys(store, "longname"))
        run_cli(store, "mount", str(venv))
        assert (v.site_packages / "longname" / "__init__.py").exists()
        hooks_before = (v.state_dir / "hooks.json").read_bytes()
        for args in (["eject", str(venv)], ["umount", str(venv), "--materialize"]):
            proc = run_cli(store, *args, check=False)
            line = one_line(proc)
            assert proc.returncode == InvalidWheel.exit_code, proc.stderr
            assert "longname-" in line and "255" in line, line
            state = v.read_state()
            assert state.layout == "mounted" and state.hooks and v.is_managed, args
            assert not (v.state_dir / "ejecting").exists()
            assert (v.state_dir / "hooks.json").read_bytes() == hooks_before
            assert (v.site_packages / "longname" / "__init__.py").exists(), "no longer mounted"
    finally:
        stop_mount(venv)
