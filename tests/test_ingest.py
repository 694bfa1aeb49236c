"""Automatic ingest: what pip and uv install into a mounted venv goes into the store by itself, once
the install settles; upgrades leave no copy in the upper layer; editable installs stay the venv's."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import kill_daemon, stop_mount, uv
from tests.wheelbuilder import build_wheel, simple_package
from venvfs.mount import daemon
from venvfs.store.records import INSTALL_METADATA
from venvfs.store.store import Store
from venvfs.venv import pending
from venvfs.venv.mountinfo import drop_path, reload
from venvfs.venv.venv import Venv

pytestmark = pytest.mark.fuse

Run = Callable[..., subprocess.CompletedProcess[str]]
SETTLE = 30.0  # seconds an ingest may take on a loaded 2-core machine (it takes ~1.3 s: 1 s of quiet)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    build_wheel(d, simple_package("demo", "1.0"))
    spec2 = simple_package("demo", "2.0")
    spec2.files = {**spec2.files, "demo/new_in_2.py": b"NEW = 2\n"}
    build_wheel(d, spec2)
    build_wheel(d, simple_package("extra", "1.0"))
    return d


@pytest.fixture
def mounted(require_fuse: None, store: Store, make_venv: Callable[..., Path], run_venvfs: Run,
            wheels: Path) -> Iterator[Callable[..., Path]]:
    made: list[Path] = []

    def make(name: str = "v", *installed: str) -> Path:
        # uv's venv has no pip of its own to adopt and compile, which keeps these tests fast; pip
        # comes from outside (``--python``), as real as the venv's own.
        path = make_venv(name, tool="uv")
        if installed:
            _pip(path, wheels, "install", *installed)
        made.append(path)
        run_venvfs("mount", str(path))
        return path

    try:
        yield make
    finally:
        for path in made:
            stop_mount(path)


def _pip_argv(venv: Path, wheels: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "--disable-pip-version-check",
            "--no-input", *args, "-q", *(["--no-index", "--find-links", str(wheels)] if args[0] == "install" else [])]


def _pip(venv: Path, wheels: Path, *args: str) -> None:
    subprocess.run(_pip_argv(venv, wheels, *args), check=True)


def _install(tool: str, venv: Path, wheels: Path, *args: str) -> None:
    if tool == "uv":
        subprocess.run([uv(), "pip", "install", "-q", "--python", str(venv / "bin/python"), "--no-index",
                        "--find-links", str(wheels), *args], check=True)
    else:
        _pip(venv, wheels, "install", *args)


def wait_settled(venv: Path, dist_info: str, timeout: float = SETTLE) -> dict[str, object]:
    """Wait until the ingest has looked at ``dist_info`` (its entry in the seen file names this very
    RECORD) and the daemon has dropped what it queued; returns that entry."""
    v = Venv(venv)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = pending.read_seen(v).get(dist_info)
        sig = pending.record_signature(v.upper_dir / dist_info)
        if entry is not None and entry.get("sig") == sig and not drop_path(v).exists():
            return entry
        time.sleep(0.05)
    log = daemon.log_path(v).read_text(errors="replace")[-3000:] if daemon.log_path(v).exists() else ""
    raise AssertionError(f"{dist_info} was not ingested within {timeout}s; daemon log:\n{log}")


def _wait_for_killed_worker(v: Venv) -> None:
    """Until the daemon's log says its ingest worker died at the crash point (as by SIGKILL)."""
    log = daemon.log_path(v)
    deadline = time.monotonic() + SETTLE
    while "ingest worker exited 137" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.05)


def upper_files(venv: Path, prefix: str) -> dict[str, int]:
    """Files of the upper layer below ``prefix`` (whiteouts included), with their sizes. What the
    installer wrote about the install besides RECORD (INSTALLER, REQUESTED, direct_url.json) is left
    out (``INSTALL_METADATA``, uv's files too): the store keeps no installer metadata (one wheel, one
    build), so those stay the venv's own, a few bytes each, as RECORD does."""
    root = Venv(venv).upper_dir
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if dirpath.endswith(".dist-info") and name != "RECORD" and name in INSTALL_METADATA:
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel.startswith(prefix) or name == f".wh.{prefix}":
                out[rel] = os.lstat(os.path.join(dirpath, name)).st_size
    return out


def _py(venv: Path, code: str) -> str:
    return subprocess.run([str(venv / "bin/python"), "-c", code], check=True, capture_output=True,
                          text=True).stdout.strip()


def _selected(venv: Path) -> list[str]:
    return [k.rsplit("-", 1)[0] for k in Venv(venv).read_state().selection]


@pytest.mark.parametrize("tool", ["pip", "uv"])
def test_an_install_goes_into_the_store_by_itself(tool: str, fuse_mode: str, mounted: Callable[..., Path],
                                                  wheels: Path, store: Store, run_venvfs: Run) -> None:
    """In both of the daemon's modes: with no OPEN/RELEASE (the patched pyfuse3) nothing says a file
    was closed, and the end of an install is a quiet period."""
    venv = mounted("v", "demo==1.0")
    _install(tool, venv, wheels, "extra==1.0")
    assert wait_settled(venv, "extra-1.0.dist-info")["result"] == pending.INGESTED
    assert "extra-1.0" in _selected(venv)
    # Only the venv's own RECORD stays in the upper layer; the store serves the rest.
    left = upper_files(venv, "extra")
    assert set(left) == {"extra-1.0.dist-info/RECORD"} and sum(left.values()) < 4096, left
    assert _py(venv, "import extra.sub.helpers as h; print(h.double(21))") == "42"
    (record,) = [store.get_dist(k) for k in Venv(venv).read_state().selection if k.startswith("extra-")]
    assert record.source == f"installed:{tool}:{venv}"
    status = json.loads(run_venvfs("status", "--json", str(venv)).stdout)
    assert status["pending_ingest"] == {}


@pytest.mark.parametrize("tool", ["pip", "uv"])
def test_an_upgrade_and_a_downgrade_leave_no_copy_in_the_upper_layer(
        tool: str, mounted: Callable[..., Path], wheels: Path, run_venvfs: Run, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 1: the installer deletes and recreates the package directory (opaque in the upper
    layer); the drop of upper copies used to skip everything below it. Run by ``venvfs commit``,
    synchronously, with the automatic ingest off."""
    monkeypatch.setenv("VENVFS_AUTO_INGEST", "0")
    venv = mounted("v", "demo==1.0")
    for version in ("2.0", "1.0"):
        _install(tool, venv, wheels, "-U" if tool == "pip" else "--upgrade", f"demo=={version}")
        run_venvfs("commit", str(venv))
        assert f"demo-{version}" in _selected(venv)
        left = upper_files(venv, "demo")
        assert set(left) == {f"demo-{version}.dist-info/RECORD"}, left
        assert _py(venv, "import demo; print(demo.VERSION)") == version
    # ... and the store's files show after a remount too (no whiteout left hiding them).
    stop_mount(venv)
    run_venvfs("mount", str(venv))
    assert _py(venv, "import demo.sub.helpers as h, demo; print(demo.VERSION, h.double(2))") == "1.0 4"


def test_a_reinstall_is_ingested_and_dropped(mounted: Callable[..., Path], wheels: Path) -> None:
    venv = mounted("v", "demo==1.0")
    _pip(venv, wheels, "install", "--force-reinstall", "--no-deps", "demo==1.0")
    assert wait_settled(venv, "demo-1.0.dist-info")["result"] == pending.INGESTED
    assert set(upper_files(venv, "demo")) == {"demo-1.0.dist-info/RECORD"}
    assert _py(venv, "import demo; print(demo.VERSION)") == "1.0"


def test_an_editable_install_stays_the_venvs_own(mounted: Callable[..., Path], store: Store, run_venvfs: Run,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 5: ``venvfs commit`` stored the user's editable project."""
    monkeypatch.setenv("VENVFS_AUTO_INGEST", "0")
    proj = tmp_path / "p1"
    (proj / "src/p1").mkdir(parents=True)
    (proj / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=64"]\n'
                                         'build-backend = "setuptools.build_meta"\n\n'
                                         '[project]\nname = "p1"\nversion = "0.1.0"\n')
    (proj / "src/p1/__init__.py").write_text("X = 'mine'\n")
    venv = mounted("v")
    subprocess.run([uv(), "pip", "install", "-q", "--python", str(venv / "bin/python"), "-e", str(proj)], check=True)
    keys_before = set(store.dist_keys())
    out = json.loads(run_venvfs("commit", "--json", str(venv)).stdout)
    assert out["added"] == []
    assert set(store.dist_keys()) == keys_before
    assert not any(k.startswith("p1-") for k in Venv(venv).read_state().selection)
    assert (Venv(venv).upper_dir / "__editable__.p1-0.1.0.pth").is_file()
    assert _py(venv, "import p1; print(p1.X)") == "mine"
    status = json.loads(run_venvfs("status", "--json", str(venv)).stdout)
    assert "p1-0.1.0.dist-info" not in status["pending_ingest"]


def test_status_shows_what_is_pending(mounted: Callable[..., Path], wheels: Path, run_venvfs: Run,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENVFS_AUTO_INGEST", "0")
    venv = mounted("v")
    _pip(venv, wheels, "install", "extra==1.0")
    status = json.loads(run_venvfs("status", "--json", str(venv)).stdout)
    assert status["pending_ingest"] == {"extra-1.0.dist-info": ""}
    assert "pending ingest: extra-1.0.dist-info" in run_venvfs("status", str(venv)).stdout
    run_venvfs("commit", str(venv))
    assert json.loads(run_venvfs("status", "--json", str(venv)).stdout)["pending_ingest"] == {}


def _object(store: Store, venv: Path, name: str, path: str) -> Path:
    (record,) = [store.get_dist(k) for k in Venv(venv).read_state().selection if k.startswith(f"{name}-")]
    (f,) = [f for f in record.files if f.path == path]
    assert f.digest is not None
    return store.object_path(f.digest, f.executable)


def test_a_user_edit_right_after_an_install_wins(mounted: Callable[..., Path], wheels: Path, store: Store,
                                                 run_venvfs: Run) -> None:
    venv = mounted("v")
    sp = Venv(venv).site_packages
    # Edited before the install settled: the distribution is left to the user (status says why).
    _pip(venv, wheels, "install", "extra==1.0")
    with open(sp / "extra/sub/helpers.py", "a") as f:
        f.write("EDITED = 1\n")
    entry = wait_settled(venv, "extra-1.0.dist-info")
    assert str(entry["result"]).startswith("not ingested")
    assert _py(venv, "import extra.sub.helpers as h; print(h.EDITED)") == "1"
    assert "not ingested" in json.loads(run_venvfs("status", "--json", str(venv)).stdout)["pending_ingest"][
        "extra-1.0.dist-info"]
    # Edited after it settled: the edit is the venv's own copy; the store object is untouched.
    _pip(venv, wheels, "install", "demo==1.0")
    wait_settled(venv, "demo-1.0.dist-info")
    obj = _object(store, venv, "demo", "demo/sub/helpers.py")
    before = obj.read_bytes()
    with open(sp / "demo/sub/helpers.py", "a") as f:
        f.write("EDITED = 2\n")
    assert _py(venv, "import demo.sub.helpers as h; print(h.EDITED)") == "2"
    time.sleep(1.5)  # a write is activity too: nothing may run on it
    assert obj.read_bytes() == before
    assert hashlib.sha256(before).hexdigest() == obj.name
    run_venvfs("store", "verify")


@pytest.mark.allow_warnings
@pytest.mark.parametrize("step", ["ingest:stored", "commit:selected"])
def test_kill_9_of_the_daemon_during_an_ingest_then_remount(step: str, mounted: Callable[..., Path], wheels: Path,
                                                            store: Store, run_venvfs: Run,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker dies at ``step`` (as by SIGKILL), then the daemon is killed with SIGKILL: the next
    mount finishes the ingest, and nothing is lost."""
    monkeypatch.setenv("VENVFS_TEST_CRASH_AT", step)
    venv = mounted("v", "demo==1.0")
    monkeypatch.delenv("VENVFS_TEST_CRASH_AT")
    v = Venv(venv)
    _pip(venv, wheels, "install", "extra==1.0")
    _wait_for_killed_worker(v)
    assert daemon.daemon_pid(v) is not None
    kill_daemon(venv, watcher=False)  # the daemon and its keeper (venvfs/mount/keeper.py): a dead mount
    run_venvfs("mount", str(venv))
    wait_settled(venv, "extra-1.0.dist-info")
    assert "extra-1.0" in _selected(venv) and "demo-1.0" in _selected(venv)
    assert set(upper_files(venv, "extra")) == {"extra-1.0.dist-info/RECORD"}
    assert _py(venv, "import extra.sub.helpers as h, demo; print(h.double(2), demo.VERSION)") == "4 1.0"
    run_venvfs("store", "verify")


def test_two_venvs_install_the_same_distribution_at_once(mounted: Callable[..., Path], wheels: Path,
                                                         store: Store, run_venvfs: Run) -> None:
    a, b = mounted("a"), mounted("b")
    procs = [subprocess.Popen(_pip_argv(v, wheels, "install", "extra==1.0", "demo==2.0")) for v in (a, b)]
    assert [p.wait() for p in procs] == [0, 0]
    for v in (a, b):
        for info in ("extra-1.0.dist-info", "demo-2.0.dist-info"):
            assert wait_settled(v, info)["result"] == pending.INGESTED
    keys_a = Venv(a).read_state().selection
    assert sorted(keys_a) == sorted(Venv(b).read_state().selection)
    assert sum(1 for k in store.dist_keys() if k.startswith("extra-")) == 1
    for v in (a, b):
        assert set(upper_files(v, "extra")) == {"extra-1.0.dist-info/RECORD"}
        assert _py(v, "import extra, demo.new_in_2; print('ok')") == "ok"
    run_venvfs("store", "verify")


@pytest.mark.parametrize("tool", ["pip", "uv"])
def test_committed_records_say_who_installed_them(tool: str, mounted: Callable[..., Path], wheels: Path,
                                                  store: Store, run_venvfs: Run,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 5's second half: committed records were labelled ``adopted:``."""
    monkeypatch.setenv("VENVFS_AUTO_INGEST", "0")
    venv = mounted("v")
    _install(tool, venv, wheels, "extra==1.0")
    (key,) = json.loads(run_venvfs("commit", "--json", str(venv)).stdout)["added"]
    assert store.get_dist(key).source == f"installed:{tool}:{venv}"


@pytest.mark.parametrize("tool", ["pip", "uv"])
def test_an_upgrade_is_ingested_by_itself(tool: str, mounted: Callable[..., Path], wheels: Path) -> None:
    venv = mounted("v", "demo==1.0")
    _install(tool, venv, wheels, "-U" if tool == "pip" else "--upgrade", "demo==2.0")
    assert wait_settled(venv, "demo-2.0.dist-info")["result"] == pending.INGESTED
    assert "demo-2.0" in _selected(venv) and "demo-1.0" not in _selected(venv)
    assert set(upper_files(venv, "demo")) == {"demo-2.0.dist-info/RECORD"}
    assert _py(venv, "import demo.new_in_2, demo; print(demo.VERSION)") == "2.0"


def test_pips_stash_of_an_upgrade_is_no_distribution(tmp_path: Path) -> None:
    """While pip upgrades, the old version waits under ``~``-names (``~umpy-2.3.5.dist-info``) to be
    put back if the install fails: no candidate for the ingest, and a sign the install is under way."""
    upper = tmp_path / "v/.venvfs/upper"
    for name in ("~emo-1.0.dist-info", "demo-2.0.dist-info"):
        (upper / name).mkdir(parents=True)
        (upper / name / "RECORD").write_text("")
    venv = Venv(tmp_path / "v")
    assert [p.dist_info for p in pending.pending(venv, set())] == ["demo-2.0.dist-info"]
    assert pending.installer_busy(venv) == "~emo-1.0.dist-info"
    (upper / "~emo-1.0.dist-info/RECORD").unlink()
    (upper / "~emo-1.0.dist-info").rmdir()
    assert pending.installer_busy(venv) is None


def _workers(venv: Path) -> list[int]:
    """Pids of ingest workers of ``venv`` (from /proc: they are the daemon's children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"venvfs.mount.ingest" in argv and os.fsencode(venv) in argv:
                pids.append(int(entry.name))
    return pids


@pytest.mark.allow_warnings
def test_kill_9_of_the_daemon_while_its_worker_waits(mounted: Callable[..., Path], wheels: Path,
                                                     run_venvfs: Run) -> None:
    """The daemon dies while its worker is alive (held here at the venv lock): the worker finds the
    mount dead and changes nothing; the next mount ingests."""
    venv = mounted("v", "demo==1.0")
    v = Venv(venv)
    with v.locked():
        _pip(venv, wheels, "install", "extra==1.0")
        deadline = time.monotonic() + SETTLE
        while not _workers(venv):
            assert time.monotonic() < deadline, "no ingest worker started"
            time.sleep(0.05)
        assert daemon.daemon_pid(v) is not None
        kill_daemon(venv, watcher=False)  # the daemon and its keeper (venvfs/mount/keeper.py)
    deadline = time.monotonic() + SETTLE
    while _workers(venv):
        assert time.monotonic() < deadline, "the worker did not end"
        time.sleep(0.05)
    assert "extra-1.0" not in _selected(venv)
    run_venvfs("mount", str(venv))
    wait_settled(venv, "extra-1.0.dist-info")
    assert set(upper_files(venv, "extra")) == {"extra-1.0.dist-info/RECORD"}
    assert _py(venv, "import extra.sub.helpers as h, demo; print(h.double(2), demo.VERSION)") == "4 1.0"
    run_venvfs("store", "verify")


def test_an_uninstall_is_deselected_by_itself(mounted: Callable[..., Path], wheels: Path) -> None:
    venv = mounted("v", "demo==1.0", "extra==1.0")
    _pip(venv, wheels, "uninstall", "-y", "extra")
    deadline = time.monotonic() + SETTLE
    while "extra-1.0" in _selected(venv):
        assert time.monotonic() < deadline, "extra was not deselected"
        time.sleep(0.05)
    while drop_path(Venv(venv)).exists() or "extra-1.0.dist-info" in pending.read_seen(Venv(venv)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # What the uninstall left (whiteouts of the store's files) goes with the selection.
    assert upper_files(venv, "extra") == {}
    assert _py(venv, "import importlib.util as u; print(u.find_spec('extra'), u.find_spec('demo') is not None)") \
        == "None True"


@pytest.mark.allow_warnings
def test_a_distribution_removed_while_it_is_ingested_never_shows(mounted: Callable[..., Path], wheels: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker stored and selected ``extra`` (and died before the daemon's reload); then the
    installer removed it, through the mount, while the store did not serve it yet, so no whiteout
    hides it. Seen in test_pip_in_mount as a downgrade right after an upgrade: the store's files of
    the removed version came back. The daemon leaves a key whose RECORD changed out of the view."""
    monkeypatch.setenv("VENVFS_TEST_CRASH_AT", "commit:selected")
    venv = mounted("v", "demo==1.0")
    v = Venv(venv)
    _pip(venv, wheels, "install", "extra==1.0")
    log = daemon.log_path(v)
    _wait_for_killed_worker(v)
    deadline = time.monotonic() + SETTLE
    assert "extra-1.0" in _selected(venv)  # selected, not yet in the daemon's view
    _pip(venv, wheels, "uninstall", "-y", "extra")
    assert reload(v)
    sp = v.site_packages
    assert not (sp / "extra").exists() and not (sp / "extra-1.0.dist-info").exists()
    # The next worker (the uninstall woke it) takes it out of the selection too.
    while "extra-1.0" in _selected(venv) or pending.expect_path(v).exists():
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.05)
    assert not (sp / "extra").exists()
    assert _py(venv, "import importlib.util as u; print(u.find_spec('extra'))") == "None"


def test_the_daemon_leaves_out_a_selected_key_whose_record_changed(mounted: Callable[..., Path],
                                                                   wheels: Path) -> None:
    """The mechanism behind the test above, deterministically: a key the ingest expects with
    another RECORD than the upper layer's is not served, whatever the state says."""
    venv = mounted("v")
    v = Venv(venv)
    _pip(venv, wheels, "install", "extra==1.0")
    wait_settled(venv, "extra-1.0.dist-info")
    (key,) = [k for k in v.read_state().selection if k.startswith("extra-")]
    sp = v.site_packages
    assert (sp / "extra/sub/helpers.py").is_file()
    pending.expect_path(v).write_text(json.dumps({key: ["extra-1.0.dist-info", [0, 0, 0]]}))
    assert reload(v)
    assert not (sp / "extra/sub/helpers.py").exists()
    sig = pending.record_signature(v.upper_dir / "extra-1.0.dist-info")
    pending.expect_path(v).write_text(json.dumps({key: ["extra-1.0.dist-info", sig]}))
    assert reload(v)
    assert (sp / "extra/sub/helpers.py").is_file()
