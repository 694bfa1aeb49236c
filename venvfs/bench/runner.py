"""The schedule of a run: build the sites, create venvs round-robin with native in every round, then
measure each strategy's first venv against native's first venv in interleaved pairs.

Everything a strategy mounts is unmounted, and every loop image removed, whatever happens.
"""

from __future__ import annotations

import contextlib
import datetime
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from venvfs.bench import installs, probes, trees
from venvfs.bench.model import Report, StrategyResult
from venvfs.bench.scratch import Scratch, usage
from venvfs.bench.strategies import Site, Strategy, all_strategies
from venvfs.bench.system import CacheDropper, environment, perf_lock
from venvfs.bench.workload import Workload, derive_imports

Say = Callable[[str], None]


@dataclass
class Settings:
    strategies: list[str]
    venvs: int = 3
    reps: int = 5
    cold: bool = True
    quick: bool = False
    scratch: Path | None = None
    python: str = sys.executable
    loop: bool = True
    lock: bool = True
    installs: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"strategies": self.strategies, "venvs": self.venvs, "reps": self.reps, "cold": self.cold,
                "quick": self.quick, "scratch": str(self.scratch) if self.scratch else None,
                "python": self.python, "loop_images": self.loop,
                "installs": self.installs}


@dataclass
class _Live:
    """A strategy taking part in the run: its result, its site and the venvs it made."""

    strategy: Strategy
    result: StrategyResult
    site: Site | None = None
    venvs: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result.unavailable is None


def _bind(fn: Callable[..., float], *args: Any) -> Callable[[], float]:
    return lambda: fn(*args)


def _errtext(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _short(e: BaseException) -> str:
    text = _errtext(e).replace("\n", " ")
    return text if len(text) < 400 else text[:397] + "..."


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so mounts and loop images are cleaned up on a polite kill too."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(settings: Settings, make_workload: Callable[[Path], Workload], say: Say) -> Report:
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    lock = perf_lock(say=say) if settings.lock else contextlib.nullcontext()
    with _sigterm_as_interrupt(), lock, Scratch(settings.scratch, loop=settings.loop) as scratch:
        workload = make_workload(scratch.base)
        say(f"workload: {workload.name} ({len(workload.wheels)} wheels) from {workload.source}")
        report = _run(settings, workload, scratch, say)
    report.started = started
    report.duration_s = round(time.monotonic() - t0, 1)
    return report


def _run(settings: Settings, workload: Workload, scratch: Scratch, say: Say) -> Report:
    wheel_bytes = sum(w.stat().st_size for w in workload.wheels)
    installed_guess = max(wheel_bytes * 6, 64 << 20)
    gib = 1 << 30
    ext4_size = -(-max(gib, installed_guess * (3 * settings.venvs + 10)) // gib) * gib
    xfs_size = -(-max(gib, installed_guess * (settings.venvs + 6)) // gib) * gib

    wanted = [s for s in all_strategies() if s.name in settings.strategies or s.name == "native"]
    live = [_Live(s, StrategyResult(s.name, s.label)) for s in wanted]
    filesystems: dict[str, Any] = {}

    ext4, why = scratch.ext4(ext4_size)
    filesystems["main"] = ext4.to_json()
    if why:
        say(f"note: statfs deltas are taken on a shared filesystem: {why}")
    sites: dict[str, Site | None] = {"main": Site(ext4, settings.python, workload)}
    reflink_reason: str | None = None
    if any(lv.strategy.reflink_fs for lv in live):
        rfs, reflink_reason = scratch.reflink(xfs_size)
        sites["reflink"] = Site(rfs, settings.python, workload) if rfs else None
        if rfs:
            filesystems["reflink"] = rfs.to_json()
    dropper = CacheDropper(settings.cold and not settings.quick,
                           "--quick does not drop caches" if settings.quick else "--no-cold was given")

    try:
        _check_and_prepare(live, sites, reflink_reason, workload, say)
        native = live[0]
        if not native.ok:
            raise RuntimeError(f"the native reference could not be built: {native.result.unavailable}")
        _create_rounds(live, settings, workload, say)
        if not native.venvs:
            raise RuntimeError("no native venv could be created: " + str(native.result.unavailable))
        _runtime(live, settings, workload, dropper, say)
        _installs(live, settings, say)
    finally:
        for lv in live:
            for venv in lv.venvs:
                if lv.site is not None:
                    with contextlib.suppress(Exception):
                        lv.strategy.teardown(lv.site, venv)
        for lv in live:
            if lv.site is not None:
                with contextlib.suppress(Exception):
                    lv.strategy.finish(lv.site)

    env = environment(settings.python)
    env["filesystems"] = filesystems
    env["cold_runs"] = "page cache dropped before every cold run" if dropper.available else (
        f"not cold: {dropper.reason}")
    return Report(environment=env, workload=workload.describe(), settings=settings.to_json(),
                  strategies=[lv.result for lv in live])


def _check_and_prepare(live: list[_Live], sites: dict[str, Site | None], reflink_reason: str | None,
                       workload: Workload, say: Say) -> None:
    for lv in live:
        reason = lv.strategy.check()
        site_key = "reflink" if lv.strategy.reflink_fs else "main"
        site = sites.get(site_key)
        if reason is None and site is None:
            reason = reflink_reason or "no reflink filesystem"
        if reason is not None:
            lv.result.unavailable = reason
            say(f"{lv.strategy.name}: unavailable: {reason}")
            continue
        assert site is not None
        lv.site = site
        lv.result.filesystem = site.fs.description
        say(f"{lv.strategy.name}: preparing on {site.fs.description}")
        try:
            lv.strategy.prepare(site)
        except Exception as e:  # any failure of one strategy is reported, the others go on
            lv.result.unavailable = f"preparation failed: {_short(e)}"
            say(f"{lv.strategy.name}: {lv.result.unavailable}")
            continue
        if lv.strategy.name == "native":
            assert site.seed is not None
            derive_imports(workload, Path(site.seed) / "bin" / "python", trees.site_packages(site.seed))
            say(f"import set: {', '.join(workload.imports)}")


def _create_rounds(live: list[_Live], settings: Settings, workload: Workload, say: Say) -> None:
    """``venvs`` rounds; each round creates one venv per strategy, native included, in rotating order."""
    for r in range(settings.venvs):
        order = [lv for lv in live if lv.ok]
        order = order[r % len(order):] + order[: r % len(order)]
        made: dict[str, tuple[float, int, int]] = {}
        for lv in order:
            site = lv.site
            assert site is not None
            dest = site.fs.root / "venvs" / f"{lv.strategy.name}-{r}"
            dest.parent.mkdir(exist_ok=True)
            before = usage(site.fs.root)
            try:
                start = time.perf_counter()
                extra = lv.strategy.create(site, dest)
                elapsed = time.perf_counter() - start
                lv.venvs.append(dest)
                # The first import is part of a venv's cost: it writes bytecode wherever it can.
                probes.import_time(dest / "bin" / "python", workload.imports)
            except Exception as e:
                lv.result.unavailable = f"creating a venv failed: {_short(e)}"
                say(f"{lv.strategy.name}: {lv.result.unavailable}")
                continue
            after = usage(site.fs.root)
            made[lv.strategy.name] = (elapsed, after.bytes - before.bytes, after.inodes - before.inodes)
            for key, value in extra.items():
                lv.result.metric(key).add(value)
            if lv.strategy.mounts:
                # Mounting an existing venv again is what every later use costs (boot, automount).
                try:
                    lv.result.metric("mount_s").add(lv.strategy.remount(site, dest))
                except Exception as e:
                    lv.result.metric("mount_s").fail(f"remount failed: {_short(e)}")
            say(f"round {r + 1}/{settings.venvs}: {lv.strategy.name:<15} {elapsed:7.2f} s  "
                f"{(after.bytes - before.bytes) / 1e6:9.1f} MB  {after.inodes - before.inodes:7d} inodes")
        base = made.get("native")
        for lv in live:
            got = made.get(lv.strategy.name)
            if got is None:
                continue
            lv.result.metric("create_s").add(got[0], base[0] if base else None)
            # Negative deltas are possible on a shared filesystem (someone freed space): kept as measured.
            for key, i in (("extra_bytes", 1), ("extra_inodes", 2)):
                m = lv.result.metric(key)
                if got[i] < 0:
                    m.fail(f"statfs delta was negative ({got[i]}): the filesystem is shared with other writers")
                else:
                    m.add(float(got[i]), float(base[i]) if base else None)


def _runtime(live: list[_Live], settings: Settings, workload: Workload, dropper: CacheDropper,
             say: Say) -> None:
    native = live[0]
    nvenv = native.venvs[0]
    seed = native.site.seed if native.site else None
    assert seed is not None
    big, big_size = probes.largest_file(trees.site_packages(seed))
    say(f"largest file: {big} ({big_size / 1e6:.1f} MB)")
    others = [lv for lv in live[1:] if lv.ok and lv.venvs]
    for lv in live[1:]:
        if lv.ok and not lv.venvs:
            lv.result.unavailable = "no venv was created"
    for lv in others:
        venv = lv.venvs[0]
        # A strategy on the reflink filesystem has its own seed: same relative paths, same content.
        nsp, osp = trees.site_packages(nvenv), trees.site_packages(venv)
        python_n, python_o = nvenv / "bin" / "python", venv / "bin" / "python"
        tests: list[tuple[str, Callable[[], float], Callable[[], float], bool]] = [
            ("import_warm_s", _bind(probes.import_time, python_n, workload.imports),
             _bind(probes.import_time, python_o, workload.imports), False),
            ("import_cold_s", _bind(probes.import_time, python_n, workload.imports),
             _bind(probes.import_time, python_o, workload.imports), True),
            ("walk_warm_s", _bind(probes.walk_time, nsp), _bind(probes.walk_time, osp), False),
            ("walk_cold_s", _bind(probes.walk_time, nsp), _bind(probes.walk_time, osp), True),
            ("read_warm_mbps", _bind(probes.read_mbps, nsp / big), _bind(probes.read_mbps, osp / big), False),
            ("read_cold_mbps", _bind(probes.read_mbps, nsp / big), _bind(probes.read_mbps, osp / big), True),
            ("pip_install_s", _bind(probes.pip_install_time, settings.python, nvenv, workload.extra_wheel),
             _bind(probes.pip_install_time, settings.python, venv, workload.extra_wheel), False),
        ]
        for key, run_native, run_other, cold in tests:
            metric = lv.result.metric(key)
            nmetric = native.result.metric(key)
            if cold and not dropper.available:
                metric.fail(f"not measured: {dropper.reason}")
                nmetric.fail(f"not measured: {dropper.reason}")
                continue
            say(f"{lv.strategy.name}: {key} ({settings.reps} pairs with native)")
            try:
                # pip's own start-up is warm after its first run anyway; a warm-up pair would only add time.
                result = probes.paired(run_native, run_other, settings.reps, cold=dropper if cold else None,
                                       warmup=key != "pip_install_s")
            except Exception as e:
                metric.fail(_short(e))
                continue
            if result.retaken:
                metric.note = f"{result.retaken} pair(s) retaken: another process dropped the page cache"
            for p in result.pairs:
                metric.add(p.other, p.native)
                nmetric.add(p.native)
        pid = lv.strategy.daemon_pid(venv)
        if lv.strategy.has_daemon and pid is None:
            for key in ("daemon_rss_bytes", "daemon_pss_bytes", "daemon_uss_bytes", "mount_uss_bytes"):
                lv.result.metric(key).fail("daemon process not found")
        elif pid is not None:
            try:
                rss, hwm = probes.process_memory(pid)
                lv.result.metric("daemon_rss_bytes").add(float(rss))
                lv.result.metric("daemon_hwm_bytes").add(float(hwm))
            except probes.ProbeError as e:
                lv.result.metric("daemon_rss_bytes").fail(str(e))
            try:
                mem = probes.shared_memory(pid)
                lv.result.metric("daemon_pss_bytes").add(float(mem.pss))
                lv.result.metric("daemon_uss_bytes").add(float(mem.uss))
            except probes.ProbeError as e:
                lv.result.metric("daemon_pss_bytes").fail(str(e))
                lv.result.metric("daemon_uss_bytes").fail(str(e))
            try:
                lv.result.metric("mount_uss_bytes").add(float(sum(probes.shared_memory(p).uss
                                                                  for p in lv.strategy.mount_pids(venv))))
            except probes.ProbeError as e:
                lv.result.metric("mount_uss_bytes").fail(str(e))


def _installs(live: list[_Live], settings: Settings, say: Say) -> None:
    """The daily path (uv or pip into a new venv, until settled), where venvfs mounted takes part."""
    native = live[0]
    mounted = next((lv for lv in live if lv.strategy.name == "venvfs" and lv.ok), None)
    if not settings.installs or mounted is None or mounted.site is not native.site or native.site is None:
        return
    installs.measure(native.site, native.result, mounted.result, settings.reps, say)
    installs.measure_adopt(native.site, native.result, mounted.result, settings.reps, say)
