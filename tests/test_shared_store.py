"""A store for a whole cluster (issue 19): local stores layered over a shared, read-only store.

The shared store is made read-only for real, by a read-only bind mount, so that a write into it
fails as it would on a read-only NFS export or a CVMFS repository; the tests also hash its files
before and after, which catches a write a read-only mount would have refused too (an attempt shows
as an error). Mounts are real FUSE mounts of real venvs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, missing_tool, stop_mount, uv
from tests.wheelbuilder import WheelSpec, build_wheel, simple_package
from venvfs.store.store import Store

pytestmark = pytest.mark.fuse


def _env(store: Path, lower: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VENVFS_STORE_LOWER", "VIRTUAL_ENV")}
    env.update(VENVFS_STORE=str(store), PYTHONPATH=str(REPO), **extra)
    if lower is not None:
        env["VENVFS_STORE_LOWER"] = str(lower)
    return env


def venvfs(store: Path, *args: str, lower: Path | None = None, check: bool = True, timeout: float = 300,
           **extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "venvfs", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(store, lower, **extra))
    if check and proc.returncode != 0:
        raise AssertionError(f"venvfs {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file and directory of a store, with its content hash, mode and mtime: what a node must
    never change in a store below its own."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            st = path.lstat()
            data = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            out[str(path.relative_to(root))] = f"{data} {oct(st.st_mode)} {st.st_mtime_ns}"
    return out


@contextlib.contextmanager
def read_only_bind(src: Path, dst: Path) -> Iterator[Path]:
    """``src`` seen read-only at ``dst``, for real: a read-only bind mount (root only)."""
    if os.geteuid() != 0:
        missing_tool("needs root (read-only bind mounts)")
    if shutil.which("mount") is None:
        missing_tool("mount(8) is not installed")
    dst.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], check=True)
        yield dst
    finally:
        if os.path.ismount(dst):
            subprocess.run(["umount", "-l", str(dst)], check=False)


BIG = bytes(range(256)) * 2400  # 600 KiB: checked chunk by chunk as the mount reads it
BIG_DIGEST = hashlib.sha256(BIG).hexdigest()


def demo_wheels(directory: Path) -> dict[str, Path]:
    big = BIG
    demo = simple_package()
    demo = WheelSpec(**{**demo.__dict__, "files": {**demo.files, "demo/data/big.bin": big}})
    return {"demo": build_wheel(directory, demo), "other": build_wheel(directory, simple_package("other", "2.0")),
            "mine": build_wheel(directory, simple_package("mine", "0.1"))}


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, Path]]]:
    """An admin's store with demo and other published into a shared store, and that shared store
    mounted read-only: (the shared store, its read-only mount, the wheels)."""
    wheels = demo_wheels(tmp_path / "wheels")
    admin = tmp_path / "admin"
    venvfs(admin, "store", "add", str(wheels["demo"]), str(wheels["other"]))
    out = venvfs(admin, "store", "publish", "--all", "--to", str(tmp_path / "shared"), "--json")
    assert len(json.loads(out.stdout)["added"]) == 2
    with read_only_bind(tmp_path / "shared", tmp_path / "ro") as ro:
        yield tmp_path / "shared", ro, wheels


def make_uv_venv(path: Path) -> Path:
    subprocess.run([uv(), "venv", "-q", "--python", sys.executable, str(path)], check=True)
    return path


def run_python(venv: Path, code: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          timeout=timeout, check=False)


def site(venv: Path) -> Path:
    return next(venv.glob("lib/python*/site-packages"))


def objects_of(store: Path) -> set[str]:
    return {p.name for p in (store / "objects").glob("*/*")}


def test_two_nodes_share_one_read_only_store(require_fuse: None, tmp_path: Path,
                                             shared: tuple[Path, Path, dict[str, Path]]) -> None:
    """Two nodes, each its own local store over one read-only shared store: each mounts a venv of the
    shared builds, imports them, writes through the mount, installs and ingests one of its own, runs
    gc and verify; the shared store ends as it began, and neither node copied anything up."""
    store_dir, ro, wheels = shared
    before = tree_hashes(store_dir)
    shared_objects = objects_of(store_dir)
    assert store_dir.stat().st_mode & 0o777 == 0o755  # made by publish, for every user to read
    for node in ("a", "b"):
        local = tmp_path / f"node-{node}"
        venv = tmp_path / f"venv-{node}"
        try:
            if node == "a":
                venvfs(local, "mount", str(make_uv_venv(venv)), lower=ro)
                venvfs(local, "add", str(venv), "demo", "other", lower=ro)
            else:
                venvfs(local, "create", str(venv), "demo", "other", "--no-install", lower=ro)
            out = run_python(venv, "import demo, other, demo.sub.helpers as h; print(demo.VERSION, other.VERSION, "
                                   "h.double(21), len(open(demo.__path__[0] + '/data/big.bin', 'rb').read()))")
            assert out.stdout.split() == ["1.0", "2.0", "42", str(256 * 2400)], out.stderr
            init = site(venv) / "demo" / "__init__.py"
            with init.open("a") as f:
                f.write(f"NODE = {node!r}\n")  # copy-up into this venv's upper layer
            assert run_python(venv, "import demo; print(demo.NODE)").stdout.strip() == node
            # One of the node's own: installed into the mount and ingested into the local store.
            subprocess.run([uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                            str(wheels["mine"])], check=True, env=_env(local, ro, UV_LINK_MODE="copy"))
            venvfs(local, "commit", str(venv), lower=ro)
            assert run_python(venv, "import mine; print(mine.VERSION)").stdout.strip() == "0.1"
            status = json.loads(venvfs(local, "status", str(venv), "--json", lower=ro).stdout)
            layers = {d["name"]: d["layer"] for d in status["distributions"]}
            assert layers == {"demo": str(ro), "other": str(ro), "mine": str(local)}, layers
            assert status["lowers"] == [str(ro)]
            assert 0 < status["lower_bytes"] < status["store_bytes"]
            store_status = json.loads(venvfs(local, "store", "status", "--json", lower=ro).stdout)
            assert [(la["role"], la["distributions"]) for la in store_status["layers"]] == [("local", 1), ("lower", 2)]
            listed = json.loads(venvfs(local, "store", "list", "--json", lower=ro).stdout)
            assert {r["name"]: (r["venvs"], r["layer"]) for r in listed} == {
                "demo": (1, str(ro)), "other": (1, str(ro)), "mine": (1, str(local))}
            # The bytecode this node compiled for the shared builds is its own, and live: gc keeps it.
            pycs = sorted(p.name for p in (local / "bytecode").glob("*/*/*.pyc"))
            assert pycs
            # The big shared object was read whole once, here, and got a chunk list of this node's own.
            big_list = local / "chunks" / BIG_DIGEST[:2] / BIG_DIGEST
            assert big_list.exists()
            venvfs(local, "store", "gc", lower=ro)
            assert sorted(p.name for p in (local / "bytecode").glob("*/*/*.pyc")) == pycs
            assert big_list.exists()
            venvfs(local, "store", "verify", lower=ro)
            assert run_python(venv, "import demo, other, mine").returncode == 0
        finally:
            stop_mount(venv)
        # Nothing below was copied up: the local store holds the node's own record alone, and only
        # the objects it names (some have the same content as shared ones: the local store's records
        # name only its own objects, so its gc, verify and repair never depend on a lower).
        assert [k.split("-")[0] for k in _local_keys(local)] == ["mine"]
        record = json.loads(next((local / "dists").glob("*.json")).read_text())
        assert objects_of(local) == {f["digest"] for f in record["files"] if f.get("digest")}
        assert objects_of(local) < objects_of(local) | shared_objects
    # The shared store is verified from a node, read-only, and is exactly as published.
    assert "ok" in venvfs(tmp_path / "node-a", "store", "verify", "--store", str(ro), lower=ro).stdout
    assert tree_hashes(store_dir) == before


def _local_keys(local: Path) -> list[str]:
    return sorted(p.name[:-5] for p in (local / "dists").glob("*.json"))


def test_a_lower_store_that_is_the_local_store_is_refused(tmp_path: Path,
                                                          shared: tuple[Path, Path, dict[str, Path]]) -> None:
    store_dir, _ro, wheels = shared
    local = tmp_path / "local"
    venvfs(local, "store", "add", str(wheels["mine"]))
    for same in (local, tmp_path / "alias"):
        if same != local:
            same.symlink_to(local)
        out = venvfs(local, "store", "status", lower=same, check=False)
        assert out.returncode == 5, out
        assert "is the local store" in out.stderr and "Traceback" not in out.stderr
    # A store named as its own lower (an admin verifying the shared store with the variable set) is
    # that store alone, and nothing is recorded in it.
    out = venvfs(local, "store", "status", "--json", "--store", str(store_dir), lower=store_dir)
    assert json.loads(out.stdout)["distributions"] == 2
    assert not (store_dir / "lowers.json").exists()


def test_lowers_from_the_config_file(tmp_path: Path, shared: tuple[Path, Path, dict[str, Path]]) -> None:
    _store_dir, ro, _wheels = shared
    config = tmp_path / "config"
    (config / "venvfs").mkdir(parents=True)
    (config / "venvfs" / "store-lower").write_text(f"# the cluster's store\n{ro}\n")
    local = tmp_path / "local"
    Store.open(local)
    out = venvfs(local, "store", "status", "--json", XDG_CONFIG_HOME=str(config))
    assert [la["root"] for la in json.loads(out.stdout)["layers"]] == [str(local), str(ro)]
    # Recorded in the store: the daemons and workers that open it by its path alone see it too.
    assert json.loads((local / "lowers.json").read_text()) == {"lowers": [str(ro)]}
    out = venvfs(local, "store", "list", "--json")
    assert sorted(r["name"] for r in json.loads(out.stdout)) == ["demo", "other"]


def test_concurrent_publishers_end_with_one_consistent_copy(tmp_path: Path) -> None:
    """Two nodes publish the same builds into one shared store at once, while a reader checks that
    every record it can see has all its objects; then a third run adds nothing."""
    files = {f"many/m{i:03d}.py": f"X = {i}\n".encode() * (i + 1) for i in range(300)}
    spec = simple_package("many", "1.0")
    wheel = build_wheel(tmp_path / "wheels", WheelSpec(**{**spec.__dict__, "files": {**spec.files, **files}}))
    small = build_wheel(tmp_path / "wheels", simple_package("demo"))
    nodes = [tmp_path / "node-a", tmp_path / "node-b"]
    for node in nodes:
        venvfs(node, "store", "add", str(wheel), str(small))
    for round_ in range(3):
        target = tmp_path / f"shared-{round_}"
        Store.open(target)
        seen_broken: list[str] = []
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_records, args=(target, stop, seen_broken))
        watcher.start()
        procs = [subprocess.Popen([sys.executable, "-m", "venvfs", "store", "publish", "--all", "--to", str(target),
                                   "--json"], env=_env(node), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for node in nodes]
        results = [p.communicate(timeout=300) for p in procs]
        stop.set()
        watcher.join()
        for p, (_, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, err
        reports = [json.loads(out) for out, _ in results]
        assert not seen_broken, seen_broken[:3]
        assert sorted(p.name for p in (target / "dists").iterdir()) == sorted(
            p.name for p in (nodes[0] / "dists").iterdir())
        assert objects_of(target) == objects_of(nodes[0])
        # Between them the two added each object once (the one whose link lost found it there).
        assert sum(r["objects_added"] for r in reports) == len(objects_of(target))
        assert not any((target / "tmp").iterdir()), list((target / "tmp").iterdir())
        verify = venvfs(target, "store", "verify", "--json")
        assert json.loads(verify.stdout)["ok"] is True
    again = json.loads(venvfs(nodes[0], "store", "publish", "--all", "--to", str(target), "--json").stdout)
    assert again["added"] == [] and again["objects_added"] == 0 and len(again["present"]) == 2


def _watch_records(target: Path, stop: threading.Event, broken: list[str]) -> None:
    """Until ``stop``: every record visible in ``target`` must name only objects already there."""
    while not stop.is_set():
        for rec in (target / "dists").glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                for f in json.loads(rec.read_text())["files"]:
                    digest = f.get("digest")
                    if digest and not (target / "objects" / digest[:2] / (digest + (".x" if f.get("executable")
                                                                                      else ""))).exists():
                        broken.append(f"{rec.name}: {digest}")


def test_publish_refuses_a_damaged_object(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "wheels", simple_package())
    node = tmp_path / "node"
    venvfs(node, "store", "add", str(wheel))
    victim = next(p for p in (node / "objects").glob("*/*") if p.stat().st_size > 100)
    victim.chmod(0o644)
    victim.write_bytes(b"x" * victim.stat().st_size)
    out = venvfs(node, "store", "publish", "demo", "--to", str(tmp_path / "shared"), check=False)
    assert out.returncode == 5 and "does not match its name" in out.stderr, out
    assert not list((tmp_path / "shared" / "dists").glob("*.json"))
    out = venvfs(node, "store", "publish", "nosuch", "--to", str(tmp_path / "shared"), check=False)
    assert out.returncode == 8 and "nosuch" in out.stderr, out
    out = venvfs(node, "store", "publish", "--to", str(tmp_path / "shared"), check=False)
    assert out.returncode == 2, out


def test_a_lower_that_disappears_while_mounted(require_fuse: None, tmp_path: Path,
                                               shared: tuple[Path, Path, dict[str, Path]]) -> None:
    """The shared store goes away under a running mount: what was read stays readable, a file never
    read fails with EIO within a bounded time (no hang), `venvfs umount` still works, and mounting
    again says what is wrong in one line."""
    _store_dir, ro, _wheels = shared
    local = tmp_path / "local"
    venv = make_uv_venv(tmp_path / "venv")
    try:
        venvfs(local, "mount", str(venv), lower=ro)
        venvfs(local, "add", str(venv), "demo", lower=ro)
        assert run_python(venv, "import demo; print(demo.VERSION)").stdout.strip() == "1.0"
        subprocess.run(["umount", "-l", str(ro)], check=True)
        started = time.monotonic()
        # Read in a child with a deadline: a hang would fail the test rather than stall it.
        out = run_python(venv, "import demo, pathlib; d = pathlib.Path(demo.__path__[0]); "
                               "print((d / 'sub' / 'helpers.py').read_bytes())", timeout=60)
        assert out.returncode != 0 and "[Errno 5]" in out.stderr, out
        with pytest.raises(OSError) as e:
            (site(venv) / "demo" / "data" / "table.txt").read_bytes()
        assert e.value.errno == errno.EIO
        # What was read (and the bytecode this node compiled, in its own store) still imports.
        assert run_python(venv, "import demo; print(demo.VERSION)").stdout.strip() == "1.0"
        assert time.monotonic() - started < 30
        # Selecting from it says it is gone, not that nothing matches.
        out = venvfs(local, "add", str(venv), "other", lower=ro, check=False, timeout=60)
        assert out.returncode == 5 and "unreachable" in out.stderr, out
        assert venvfs(local, "umount", str(venv), lower=ro, timeout=60).returncode == 0
        out = venvfs(local, "mount", str(venv), lower=ro, check=False, timeout=60)
        assert out.returncode == 5 and "unreachable" in out.stderr and "Traceback" not in out.stderr, out
    finally:
        stop_mount(venv)


def test_a_malicious_shared_store_is_never_served(require_fuse: None, tmp_path: Path) -> None:
    """An object of the shared store whose content does not match its name (same size, so only a
    digest check can tell): `store verify` of the shared store names it, and a mount over it gives
    EIO, never the wrong bytes, for a small object and for a large one checked chunk by chunk."""
    wheels = demo_wheels(tmp_path / "wheels")
    admin, shared_dir = tmp_path / "admin", tmp_path / "shared"
    venvfs(admin, "store", "add", str(wheels["demo"]))
    venvfs(admin, "store", "publish", "demo", "--to", str(shared_dir))
    helpers = b"def double(x):\n    return 2 * x\n"
    big = bytes(range(256)) * 2400
    flipped = bytearray(big)
    flipped[len(big) // 2] ^= 0xFF
    # Valid Python of the same size: compiled, it would run as the store's code without a word.
    for good, bad in ((helpers, b"def double(x):\n    return 3 * x\n"), (big, bytes(flipped))):
        assert len(bad) == len(good)
        digest = hashlib.sha256(good).hexdigest()
        obj = shared_dir / "objects" / digest[:2] / digest
        obj.chmod(0o644)
        obj.write_bytes(bad)
        obj.chmod(0o444)
    # The admin of a malicious store rewrites the large object's chunk list to match its bytes too.
    big_digest = hashlib.sha256(big).hexdigest()
    listed = shared_dir / "chunks" / big_digest[:2] / big_digest
    listed.chmod(0o644)
    listed.write_bytes(b"".join(hashlib.sha256(flipped[i:i + 256 * 1024]).digest()
                                for i in range(0, len(flipped), 256 * 1024)))
    out = venvfs(admin, "store", "verify", "--store", str(shared_dir), "--json", check=False)
    assert out.returncode == 5
    assert set(json.loads(out.stdout)["problems"].values()) == {"modified"}
    assert len(json.loads(out.stdout)["problems"]) == 2
    with read_only_bind(shared_dir, tmp_path / "ro") as ro:
        local = tmp_path / "local"
        venv = make_uv_venv(tmp_path / "venv")
        try:
            venvfs(local, "mount", str(venv), lower=ro)
            venvfs(local, "add", str(venv), "demo", lower=ro)
            sp = site(venv)
            assert (sp / "demo" / "data" / "table.txt").read_bytes() == b"shared bytes " * 100
            for name in ("sub/helpers.py", "data/big.bin"):
                with pytest.raises(OSError) as e:
                    (sp / "demo" / name).read_bytes()
                assert e.value.errno == errno.EIO, name
            # No bytecode was compiled from the bad source, so the import reads it, and fails.
            out = run_python(venv, "import demo.sub.helpers as h; print(h.double(1))")
            assert out.returncode != 0 and "[Errno 5]" in out.stderr, out
        finally:
            stop_mount(venv)



def test_gc_of_a_shared_store_removes_only_what_is_retired(tmp_path: Path) -> None:
    """Nodes register their venvs with their own stores, so a shared store's gc cannot see who uses
    what: it keeps every record but those the admin retires, and every file younger than a day (a
    publisher on another node may be between an object and its record)."""
    wheels = demo_wheels(tmp_path / "wheels")
    admin, shared_dir = tmp_path / "admin", tmp_path / "shared"
    venvfs(admin, "store", "add", str(wheels["demo"]), str(wheels["other"]))
    venvfs(admin, "store", "publish", "--all", "--to", str(shared_dir))
    before = tree_hashes(shared_dir)
    published = objects_of(shared_dir)
    out = json.loads(venvfs(admin, "store", "gc", "--store", str(shared_dir), "--json").stdout)
    assert out["distributions"] == [] and out["objects"] == 0
    assert {k: v for k, v in tree_hashes(shared_dir).items() if k != "lock"} == before  # gc's own lock file
    out = json.loads(venvfs(admin, "store", "gc", "--store", str(shared_dir), "--retire", "other", "--json").stdout)
    assert [k.split("-")[0] for k in out["distributions"]] == ["other"]
    assert [p.name.split("-")[0] for p in (shared_dir / "dists").glob("*.json")] == ["demo"]
    # Its objects are a minute old: a publisher elsewhere may be about to name them. They stay.
    assert out["objects"] == 0 and objects_of(shared_dir) == published
    out = venvfs(admin, "store", "gc", "--retire", "demo", check=False)
    assert out.returncode == 5 and "no shared store" in out.stderr, out


def test_materializing_never_hardlinks_a_lower_object(tmp_path: Path) -> None:
    """A lower store on the same filesystem, writable (an admin's NFS mount): a venv materialized by
    hardlink still gets copies of the lower's objects, so `chmod +w` and an edit there cannot reach
    the shared store; the local store's own objects are hardlinked as asked."""
    wheels = demo_wheels(tmp_path / "wheels")
    admin, shared_dir, local = tmp_path / "admin", tmp_path / "shared", tmp_path / "local"
    venvfs(admin, "store", "add", str(wheels["demo"]))
    venvfs(admin, "store", "publish", "--all", "--to", str(shared_dir))
    venvfs(local, "store", "add", str(wheels["mine"]), lower=shared_dir)
    venv = make_uv_venv(tmp_path / "venv")
    venvfs(local, "adopt", str(venv), lower=shared_dir)
    venvfs(local, "add", str(venv), "demo", "mine", lower=shared_dir)
    venvfs(local, "materialize", str(venv), "--link-mode", "hardlink", lower=shared_dir)
    sp = site(venv)
    lower_inodes = {p.stat().st_ino for p in (shared_dir / "objects").glob("*/*")}
    local_inodes = {p.stat().st_ino for p in (local / "objects").glob("*/*")}
    placed = {p.relative_to(sp).parts[0]: p.stat().st_ino for p in sp.rglob("*.py")}
    assert placed["demo"] not in lower_inodes
    assert not {p.stat().st_ino for p in (sp / "demo").rglob("*") if p.is_file()} & lower_inodes
    assert {p.stat().st_ino for p in (sp / "mine").rglob("*") if p.is_file()} & local_inodes
    assert run_python(venv, "import demo, mine; print(demo.VERSION, mine.VERSION)").stdout.split() == ["1.0", "0.1"]


def test_cluster_projection_is_fixed_cost_plus_the_mean_user() -> None:
    from venvfs.bench.cluster import ClusterResult, project, rows
    from venvfs.bench.scratch import Usage

    assert project(Usage(1000, 10), [Usage(100, 3), Usage(300, 5)], 100) == Usage(1000 + 20000, 10 + 400)
    result = ClusterResult("fs", fixed={"venvfs": Usage(1000, 10)},
                           per_user={"venvfs": [Usage(10, 1), Usage(10, 1)], "uv-hardlink": [Usage(500, 50)]})
    got = {(r.strategy, r.users): (r.bytes, r.measured) for r in rows(result, [1, 2, 100])}
    assert got[("venvfs", 2)] == (1020, True) and got[("venvfs", 100)] == (2000, False)
    assert got[("uv-hardlink", 1)] == (500, True) and got[("uv-hardlink", 2)] == (1000, False)


def test_cluster_scenario_measures_real_users(require_fuse: None, tmp_path: Path) -> None:
    """The bench's cluster scenario on two small wheels (a function test, not a measurement): a shared
    store, two venvfs users over it and two uv users with caches of their own, all made for real."""
    from venvfs.bench.cluster import markdown, measure, rows
    from venvfs.bench.workload import Workload

    wheels = demo_wheels(tmp_path / "wheelhouse")
    wheels["mine"].unlink()
    workload = Workload("tiny", tmp_path / "wheelhouse", ["demo", "other"], [], wheels["demo"])
    (tmp_path / "run").mkdir()
    result = measure(tmp_path / "run", workload, sys.executable, users=2)
    assert not result.unavailable, result.unavailable
    assert set(result.per_user) >= {"venvfs", "uv-hardlink"}
    assert all(len(users) == 2 for users in result.per_user.values())
    for user in ("venvfs-user-0", "venvfs-user-1"):
        venv = tmp_path / "run" / user / "venv"
        state = json.loads((venv / ".venvfs" / "state.json").read_text())
        assert sorted(k.split("-")[0] for k in state["selection"]) == ["demo", "other"]
        assert not os.path.ismount(site(venv))  # unmounted at the end
        assert json.loads((tmp_path / "run" / user / "store" / "lowers.json").read_text())["lowers"] == [
            str(tmp_path / "run" / "shared-store")]
        assert not list((tmp_path / "run" / user / "store" / "dists").iterdir())  # nothing copied up
    assert not (tmp_path / "run" / "admin-store").exists()
    result.rows = rows(result, [1, 10, 100])
    table = markdown(result, [1, 10, 100])
    assert "| venvfs |" in table and "| uv-hardlink |" in table and "*" in table


def test_a_writable_lower_is_never_written(require_fuse: None, require_root: None, tmp_path: Path) -> None:
    """A lower the node could write (an admin's read-write NFS mount, or root anywhere): nothing is
    written into it, not even what a read-only mount would have refused without a word, such as the
    immutable flag the opt-in bytecode links set on the store's .pyc files. Its published bytecode
    serves the node, which compiles none of its own."""
    from venvfs.fsflags import is_immutable, set_immutable

    wheels = demo_wheels(tmp_path / "wheels")
    admin, shared_dir, local = tmp_path / "admin", tmp_path / "shared", tmp_path / "local"
    venvfs(admin, "store", "add", str(wheels["demo"]), str(wheels["other"]))
    admin_venv = make_uv_venv(tmp_path / "admin-venv")
    venvfs(admin, "adopt", str(admin_venv))
    venvfs(admin, "add", str(admin_venv), "demo", "other")  # compiles the bytecode the admin publishes
    report = json.loads(venvfs(admin, "store", "publish", "--all", "--to", str(shared_dir), "--json").stdout)
    assert report["bytecode_added"] > 0
    before = tree_hashes(shared_dir)
    venv = make_uv_venv(tmp_path / "venv")
    links = {"VENVFS_PYC_LINKS": "1"}
    try:
        venvfs(local, "mount", str(venv), lower=shared_dir, **links)
        venvfs(local, "add", str(venv), "demo", "other", lower=shared_dir, **links)
        out = run_python(venv, "import demo, other, demo.sub.helpers as h; print(h.double(2))")
        assert out.stdout.strip() == "4", out.stderr
        with (site(venv) / "demo" / "__init__.py").open("a") as f:
            f.write("EDITED = True\n")
        assert run_python(venv, "import demo; print(demo.EDITED)").stdout.strip() == "True"
        venvfs(local, "store", "gc", lower=shared_dir)
        venvfs(local, "store", "verify", lower=shared_dir)
        sealed = [p for p in shared_dir.rglob("*.pyc") if is_immutable(p)]
        assert not sealed, sealed[:3]
    finally:
        stop_mount(venv)
        for pyc in shared_dir.rglob("*.pyc"):
            set_immutable(pyc, False)  # so that a failure here leaves a tree pytest can delete
    assert tree_hashes(shared_dir) == before
    assert not list((local / "bytecode").glob("*/*/*.pyc"))
