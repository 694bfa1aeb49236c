"""``venvfs bench``: the report's structure, and that every number in it is a real measurement.

No timing is asserted anywhere: timings are only checked to be real (finite, positive) or explicitly
unavailable with a reason.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from venvfs.bench import goals, probes, report, system, trees, wheels
from venvfs.bench.model import METRICS, Metric, Report, StrategyResult

from conftest import missing_tool
from wheelbuilder import build_wheel, simple_package

REPO = Path(__file__).resolve().parent.parent


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "venvfs", "bench", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, f"bench exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _check_metric(where: str, m: dict[str, Any]) -> None:
    assert m["unit"] and m["description"], where
    if "unavailable" in m:
        assert isinstance(m["unavailable"], str) and m["unavailable"].strip(), where
        assert "median" not in m, f"{where}: a failed metric must not carry a number"
        return
    samples = m["samples"]
    assert samples, where
    for v in [*samples, m["median"], m["min"], m["max"]]:
        assert isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, f"{where}: {v!r}"
    assert m["min"] <= m["median"] <= m["max"], where
    if m["unit"] in ("s", "MB/s", "inodes"):
        # A time, a throughput or an inode count of exactly zero means nothing was measured.
        assert m["min"] > 0, f"{where}: zero is not a measurement"
    if "ratio_to_native" in m:
        r = m["ratio_to_native"]
        assert r["pairs"] and all(math.isfinite(x) and x > 0 for x in r["pairs"]), where
        assert r["min"] <= r["median"] <= r["max"], where


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wh = tmp_path_factory.mktemp("wheelhouse")
    build_wheel(wh, simple_package("alpha"))
    build_wheel(wh, simple_package("beta", "2.0"))
    return wh


@pytest.fixture(scope="module")
def quick_run(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench-out")
    strategies = "copy,hardlink,symlink,reflink,uv-hardlink,overlayfs,fuse-overlayfs,venvfs"
    args = ["--quick", "--wheelhouse", str(wheelhouse), "--strategies", strategies,
            "--json", str(out / "r.json"), "--markdown", str(out / "r.md")]
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", str(out / "r.png")]
    except ImportError:
        pass
    proc = _bench(*args, "--scratch", str(out / "scratch"), cwd=out)
    (out / "stdout.txt").write_text(proc.stdout)
    return json.loads((out / "r.json").read_text()), out


def test_quick_report_structure(quick_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = quick_run
    assert data["schema"] == 1
    env = data["environment"]
    for key in ("machine", "cpu", "kernel", "filesystems", "versions"):
        assert env[key], key
    for key in ("python", "uv", "venvfs", "pyfuse3", "libfuse"):
        assert key in env["versions"], key
    assert env["filesystems"]["main"]["type"]
    assert data["workload"]["imports"] == ["alpha", "beta"]
    names = [s["name"] for s in data["strategies"]]
    assert names[0] == "native"
    assert set(names) == {"native", "copy", "hardlink", "symlink", "reflink", "uv-hardlink", "overlayfs",
                          "fuse-overlayfs", "venvfs"}


def test_every_number_is_real_or_explained(quick_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = quick_run
    for s in data["strategies"]:
        if not s["available"]:
            assert s["unavailable"].strip(), s["name"]
            continue
        assert set(s["metrics"]) >= {"create_s", "extra_bytes", "extra_inodes"}, s["name"]
        for key, m in s["metrics"].items():
            assert key in METRICS
            _check_metric(f"{s['name']}.{key}", m)
    native = data["strategies"][0]
    assert native["available"], native
    for key in ("create_s", "extra_bytes", "import_warm_s", "walk_warm_s", "read_warm_mbps", "pip_install_s"):
        assert "median" in native["metrics"][key], key
    # --quick never drops caches, and says so instead of reporting warm numbers as cold ones.
    assert "quick" in native["metrics"]["import_cold_s"]["unavailable"]


def test_strategies_that_ran_measure_everything(quick_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = quick_run
    by_name = {s["name"]: s for s in data["strategies"]}
    for name in ("copy", "hardlink", "symlink"):
        s = by_name[name]
        assert s["available"], s
        for key in ("create_s", "extra_bytes", "extra_inodes", "import_warm_s", "walk_warm_s",
                    "read_warm_mbps", "pip_install_s"):
            assert "median" in s["metrics"][key], (name, key, s["metrics"][key])
            if key not in ("extra_bytes",) and data["environment"]["filesystems"]["main"]["dedicated"]:
                assert "ratio_to_native" in s["metrics"][key], (name, key)
    if data["environment"]["filesystems"]["main"]["dedicated"]:
        # On a dedicated filesystem the statfs deltas are clean: hardlinks cost far fewer inodes than copies.
        inodes = {n: by_name[n]["metrics"]["extra_inodes"]["median"] for n in ("copy", "hardlink")}
        assert inodes["hardlink"] < inodes["copy"]


def test_quick_outputs(quick_run: tuple[dict[str, Any], Path]) -> None:
    data, out = quick_run
    md = (out / "r.md").read_text()
    stdout = (out / "stdout.txt").read_text()
    for name in (s["name"] for s in data["strategies"]):
        assert f"| {name} |" in md
        assert name in stdout
    assert "| strategy | create |" in md
    for s in data["strategies"]:
        if not s["available"]:
            assert s["unavailable"].replace("|", "\\|") in md
    if (out / "r.png").exists():
        assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reflink_unavailable_is_explained(wheelhouse: Path, tmp_path: Path) -> None:
    if shutil.which("uv") is None:
        missing_tool("uv is not installed (pip install uv)")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if system.fs_type(scratch) in ("xfs", "btrfs"):
        pytest.skip("the test directory itself supports reflinks")
    _bench("--quick", "--no-loop", "--venvs", "1", "--wheelhouse", str(wheelhouse), "--strategies", "reflink",
           "--scratch", str(scratch), "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    data = json.loads((tmp_path / "r.json").read_text())
    reflink = {s["name"]: s for s in data["strategies"]}["reflink"]
    assert not reflink["available"]
    assert "reflink" in reflink["unavailable"]
    assert not list(scratch.iterdir()), "the scratch directory must be left empty"


# -- units -----------------------------------------------------------------------------------------

def test_metric_refuses_non_measurements() -> None:
    m = Metric("create_s")
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError):
            m.add(bad)
    m.add(2.0, 1.0)
    m.add(4.0, 1.0)
    m.add(3.0, 2.0)
    assert m.median == 3.0
    assert m.ratio == 2.0
    failed = Metric("import_cold_s").fail("needs root").fail("a later consequence")
    assert failed.to_json()["unavailable"] == "needs root"
    assert "median" not in failed.to_json()


def test_report_footnotes_failures() -> None:
    native = StrategyResult("native", "native")
    for _ in range(3):
        native.metric("create_s").add(1.0)
    native.metric("import_cold_s").fail("dropping the page cache needs root")
    other = StrategyResult("copy", "copy")
    for _ in range(3):
        other.metric("create_s").add(0.5, 1.0)
    other.metric("import_cold_s").fail("dropping the page cache needs root")
    missing = StrategyResult("reflink", "reflink", unavailable="ext4 does not support reflinks")
    rep = Report({"versions": {}}, {"name": "t"}, {}, [native, other, missing])
    text = report.terminal(rep)
    assert "500 ms (0.50x)" in text
    assert "[1] dropping the page cache needs root" in text
    assert "[2] ext4 does not support reflinks" in text
    copy_row = next(line for line in text.splitlines() if line.startswith("copy "))
    assert "n/a[1]" in copy_row


def test_paired_alternates_and_retakes_pairs_spoilt_by_a_cache_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    counter = iter([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    monkeypatch.setattr(probes, "drop_pagecache_count", lambda: next(counter))

    def side(name: str, value: float) -> Any:
        def run() -> float:
            calls.append(name)
            return value
        return run

    result = probes.paired(side("n", 1.0), side("o", 2.0), 3)
    assert [(p.native, p.other) for p in result.pairs] == [(1.0, 2.0)] * 3
    assert result.retaken == 1
    # warm-up, then N O, (O N spoilt by a drop, retaken) O N, N O
    assert calls == ["n", "o", "n", "o", "o", "n", "o", "n", "n", "o"]


def test_perf_lock_under_flock_wrapper_does_not_deadlock(tmp_path: Path) -> None:
    if shutil.which("flock") is None:
        missing_tool("flock(1) is not installed (apt-get install util-linux)")
    lock = tmp_path / "perf.lock"
    code = ("import sys; from pathlib import Path; from venvfs.bench.system import perf_lock\n"
            f"with perf_lock(Path({str(lock)!r}), say=lambda m: sys.exit('waited: ' + m)): print('inside')")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["flock", str(lock), sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "inside"


def test_synthetic_wheels_install_and_import(tmp_path: Path) -> None:
    built, imports = wheels.synthetic_wheelhouse(tmp_path / "wh", packages=2, files_per_package=30)
    extra = wheels.extra_wheel(tmp_path / "wh-extra")
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--isolated", "--no-index", "--no-deps", *map(str, built), str(extra)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-c", "import " + ", ".join([*imports, "vfsbench_extra"])],
                   check=True)
    sp = trees.site_packages(venv)
    assert len(list((sp / "vfsbench_p0").rglob("*.py"))) >= 28


def test_populate_modes_make_working_trees(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    (seed / "pkg" / "__pycache__").mkdir(parents=True)
    (seed / "pkg" / "__init__.py").write_text("X = 1\n")
    (seed / "pkg" / "link.py").symlink_to("__init__.py")
    for mode in ("copy", "hardlink", "symlink"):
        dest = tmp_path / mode
        dest.mkdir()
        assert trees.populate(seed, dest, mode) == 2
        assert (dest / "pkg" / "__init__.py").read_text() == "X = 1\n"
        assert os.readlink(dest / "pkg" / "link.py") == "__init__.py"
        assert (dest / "pkg" / "__pycache__").is_dir()
    assert (tmp_path / "hardlink" / "pkg" / "__init__.py").stat().st_nlink == 2
    assert (tmp_path / "symlink" / "pkg" / "__init__.py").is_symlink()
    assert not (tmp_path / "copy" / "pkg" / "__init__.py").is_symlink()


def _report_with(metrics: dict[str, Any], available: bool = True) -> dict[str, Any]:
    venvfs: dict[str, Any] = {"name": "venvfs", "available": available, "metrics": metrics}
    if not available:
        venvfs["unavailable"] = "this venvfs has no `venvfs mount` command yet"
    return {"strategies": [{"name": "native", "available": True, "metrics": {}}, venvfs]}


def test_goals_pass_fail_and_unmeasured(tmp_path: Path) -> None:
    def ratio(value: float) -> dict[str, Any]:
        return {"median": value, "min": value, "max": value, "ratio_to_native": {
            "median": value, "min": value, "max": value, "pairs": [value]}}

    def plain(value: float) -> dict[str, Any]:
        return {"median": value, "min": value, "max": value}

    main_report = _report_with({"import_warm_s": ratio(1.1), "import_cold_s": ratio(1.6),
                                "mount_uss_bytes": plain(9e6), "mount_s": plain(0.05), "create_s": plain(0.1),
                                "uv_install_s": ratio(2.5), "adopt_s": ratio(1.4)})
    # Against a peer measured in the same run: 0.1 s is 2x fuse-overlayfs's 0.05 s (a pass, at the
    # limit), and 0.67x uv hardlink's 0.15 s (missed).
    main_report["strategies"] += [{"name": "fuse-overlayfs", "available": True, "metrics": {"create_s": plain(0.05)}},
                                  {"name": "uv-hardlink", "available": True, "metrics": {"create_s": plain(0.15)}}]
    scale = _report_with({"mount_s": plain(0.3),
                          "daemon_rss_bytes": {"unit": "bytes", "unavailable": "daemon process not found"}})
    verdicts = {v.goal.title: v.status for v in goals.check({"main": main_report, "scale": scale})}
    assert verdicts == {
        "warm import <= 1.15x native": "pass", "cold import <= 1.5x native": "FAIL",
        "20,000-file venv mounted and answering < 0.5 s": "pass",
        "daemon RSS < 80 MB for the 20,000-file venv": "unavailable",
        "per-mount USS <= 15 MB for the scientific set": "pass",
        "mount until it answers <= 60 ms, scientific set": "pass",
        "mount until it answers <= 60 ms, 20,000 files": "FAIL",
        "create of one more venv <= 2x fuse-overlayfs's": "pass",
        "create of one more venv <= 0.5x uv hardlink's": "FAIL",
        "uv pip install into a venvfs venv <= 2x plain uv": "FAIL",
        "adopt <= 1.5x cp -a": "pass"}
    (tmp_path / "m.json").write_text(json.dumps(main_report))
    (tmp_path / "s.json").write_text(json.dumps(scale))
    assert goals.main([str(tmp_path / "m.json"), str(tmp_path / "s.json")]) == 1
    missing = _report_with({}, available=False)
    (tmp_path / "x.json").write_text(json.dumps(missing))
    assert goals.main([str(tmp_path / "x.json")]) == 2
    assert all(v.status == "unavailable" for v in goals.check({"main": missing, "scale": None}))


def test_shared_memory_counts_what_a_forked_child_shares() -> None:
    # A forked child maps its parent's pages: all resident (RSS), few its own (USS) until it writes.
    # After it fills 32 MB of its own, USS grows by that much and RSS too; PSS lies between.
    script = ("import os, sys, time\n"
              "ballast = bytearray(os.urandom(24 << 20))\n"
              "r, w = os.pipe()\n"
              "pid = os.fork()\n"
              "if pid == 0:\n"
              "    os.close(r)\n"
              "    os.write(w, b'forked\\n'); sys.stdin.readline()\n"
              "    mine = bytearray(os.urandom(32 << 20))\n"
              "    os.write(w, b'wrote\\n'); sys.stdin.readline(); os._exit(0)\n"
              "os.close(w)\n"
              "print(pid, flush=True)\n"
              "while os.read(r, 64): print('ok', flush=True)\n"
              "os.waitpid(pid, 0)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        child = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "ok"
        forked = probes.shared_memory(child)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"
        wrote = probes.shared_memory(child)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert forked.uss <= forked.pss <= forked.rss
    assert forked.rss > 24 << 20 and forked.uss < forked.rss / 2  # the ballast is the parent's too
    assert wrote.uss - forked.uss >= 30 << 20
    assert wrote.uss <= wrote.pss <= wrote.rss
    with pytest.raises(probes.ProbeError):
        probes.shared_memory(child)  # gone


def test_no_mount_service_outlives_the_run(quick_run: tuple[dict[str, Any], Path]) -> None:
    # A service left waiting for requests keeps what it mapped from the scratch filesystem (the loop
    # image stays allocated after its deletion) until its idle timeout.
    _, out = quick_run
    scratch = os.fsencode(out / "scratch")
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"venvfs.cli.service" in cmdline and scratch in cmdline:
                left.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    assert not left


def test_the_daily_path_is_measured(quick_run: tuple[dict[str, Any], Path]) -> None:
    # uv and pip installing the set into a new venv until settled: plain venv against a venvfs mount.
    data, _ = quick_run
    by_name = {s["name"]: s for s in data["strategies"]}
    native, venvfs = by_name["native"]["metrics"], by_name["venvfs"]["metrics"]
    for key in ("uv_install_s", "uv_settled_bytes", "uv_peak_bytes",
                "pip_wheelhouse_s", "pip_settled_bytes", "pip_peak_bytes", "adopt_s"):
        assert "median" in native[key], (key, native.get(key))
        assert "median" in venvfs[key], (key, venvfs.get(key))
    assert "ratio_to_native" in venvfs["uv_install_s"] and "ratio_to_native" in venvfs["adopt_s"]
    for who in (native, venvfs):
        for tool in ("uv", "pip"):
            assert who[f"{tool}_settled_bytes"]["median"] <= who[f"{tool}_peak_bytes"]["median"]
    # Settled means deduplicated: the mounted venv keeps no copy of what the store holds.
    assert venvfs["pip_settled_bytes"]["median"] < 1e6, venvfs["pip_settled_bytes"]


def test_quick_shows_no_ratio_from_one_pair(quick_run: tuple[dict[str, Any], Path]) -> None:
    # One pair's ratio next to medians of other runs misleads (issue 17): the table leaves it out
    # and says why; the JSON keeps it.
    data, out = quick_run
    stdout = (out / "stdout.txt").read_text()
    table = stdout.split("median over repetitions")[0]
    assert "x)" not in table, table
    assert report.FEW_PAIRS in stdout
    assert report.FEW_PAIRS in (out / "r.md").read_text()
    venvfs = next(s for s in data["strategies"] if s["name"] == "venvfs")
    assert "ratio_to_native" in venvfs["metrics"]["import_warm_s"]


def test_clean_removes_the_downloaded_wheels(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    wheels_dir = cache / "venvfs" / "bench" / "sci-cp311"
    wheels_dir.mkdir(parents=True)
    (wheels_dir / "numpy-2.0-cp311-none-any.whl").write_bytes(b"x" * 4_000_000)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "venvfs", "bench", "--clean"], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "removed" in proc.stdout and "4 MB" in proc.stdout, proc.stdout
    assert not (cache / "venvfs" / "bench").exists()
    again = subprocess.run([sys.executable, "-m", "venvfs", "bench", "--clean"], capture_output=True, text=True,
                           env=env, cwd=tmp_path)
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_plot_without_matplotlib_names_the_package(tmp_path: Path) -> None:
    # A Python that cannot import matplotlib is told which package to install, and where.
    blocker = tmp_path / "blocked" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "venvfs", "bench", "--quick", "--plot", str(tmp_path / "p.png")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "matplotlib" in proc.stderr and "-m pip install matplotlib" in proc.stderr
    assert "venvfs[plot]" not in proc.stderr


def test_venvfs_stock_runs_the_fuse_extra_in_its_own_environment_and_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib
    from packaging.requirements import Requirement

    from venvfs.bench import strategies
    from venvfs.bench.scratch import Filesystem
    from venvfs.mount import serviceclient

    assert "venvfs-stock" in strategies.DEFAULT
    # What `pip install 'venvfs[fuse]'` installs besides venvfs, as pyproject.toml declares it.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["fuse"]]
    assert sorted(map(str, map(Requirement, strategies.fuse_requirements()))) == sorted(
        map(str, map(Requirement, declared)))
    # The probe tells the patched build (the test venv's, scripts/build-pyfuse3) from a stock one.
    probe = subprocess.run([sys.executable, "-c", strategies._STOCK_PROBE], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    import pyfuse3

    assert probe.stdout.strip() == ("patched" if getattr(pyfuse3, "ZERO_FH_IS_INODE", False) else "stock")
    # A service of its own: a client in its environment never reaches the one that forks patched daemons.
    site = strategies.Site(Filesystem("ext4", tmp_path, "test", False), sys.executable, None)  # type: ignore[arg-type]
    stock = strategies.VenvfsStock()
    env = stock.env(site)
    runtime = Path(env["VENVFS_RUNTIME_DIR"])
    assert runtime.stat().st_mode & 0o777 == 0o700
    monkeypatch.delenv(serviceclient.RUNTIME_ENV, raising=False)
    shared = serviceclient.socket_path(site.store)
    monkeypatch.setenv(serviceclient.RUNTIME_ENV, str(runtime))
    own = serviceclient.socket_path(site.store)
    assert own is not None and own != shared and own.parent == runtime
    # A daemon in the "no open" mode runs the patch: the strategy refuses to report it as stock.
    venv = tmp_path / "v"
    (venv / ".venvfs").mkdir(parents=True)
    (venv / ".venvfs" / "daemon.json").write_text(json.dumps({"pid": 1, "no_open": True}))
    with pytest.raises(RuntimeError, match="patched"):
        stock.check_daemon(venv)
    (venv / ".venvfs" / "daemon.json").write_text(json.dumps({"pid": 1, "no_open": False}))
    stock.check_daemon(venv)
