"""``venvfs status`` on a mounted venv whose daemon was killed reports it and names the fix; the direct loop."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from venvfs.mount import daemon, loop
from venvfs.store.store import Store
from venvfs.venv.venv import Venv

from conftest import kill_daemon, uv_pip
from wheelbuilder import build_wheel, simple_package

Run = Callable[..., subprocess.CompletedProcess[str]]


def test_status_reports_a_dead_mount_and_leaves_it_to_mount(require_fuse: None, store: Store,
                                                            make_venv: Callable[..., Path], run_venvfs: Run,
                                                            tmp_path: Path) -> None:
    """Finding 6: a dead mount is reported with the command that fixes it; status repairs nothing."""
    path = make_venv("v", tool="uv")
    uv_pip(path, str(build_wheel(tmp_path / "wheels", simple_package())))
    run_venvfs("mount", str(path), "--no-hooks")
    venv = Venv.open(path)
    try:
        (venv.site_packages / "mine.txt").write_text("written before the kill")
        kill_daemon(path, watcher=True)

        report = json.loads(run_venvfs("status", str(path), "--json").stdout)
        assert report["mount"] == "dead"
        assert f"`venvfs mount {path}`" in report["mount_problem"]
        assert daemon.mount_state(venv) == "dead"  # reported, not repaired
        text = run_venvfs("status", str(path)).stdout
        assert "dead mount (its daemon died" in text and f"venvfs mount {path}" in text

        run_venvfs("mount", str(path))
        assert daemon.mount_state(venv) == "mounted"
        assert (venv.site_packages / "mine.txt").read_text() == "written before the kill"
        assert (venv.site_packages / "demo" / "__init__.py").exists()
        assert json.loads(run_venvfs("status", str(path), "--json").stdout)["mount_problem"] is None
    finally:
        run_venvfs("umount", str(path), check=False)


def test_the_direct_loop_serves_reads_and_copy_up(require_fuse: None, store: Store,
                                                   make_venv: Callable[..., Path], run_venvfs: Run,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """VENVFS_FUSE_LOOP=direct (the opt-in loop that halves the daemon's CPU) behaves like trio's."""
    path = make_venv("v", tool="uv")
    uv_pip(path, str(build_wheel(tmp_path / "wheels", simple_package())))
    monkeypatch.setenv(loop.LOOP_ENV, "direct")
    run_venvfs("mount", str(path), "--no-hooks")
    venv = Venv.open(path)
    try:
        pid = daemon.daemon_pid(venv)
        assert pid is not None
        # Said in its log: a daemon the mount service forked shows the service's /proc/PID/environ.
        assert "direct loop)" in daemon.log_path(venv).read_text()
        init = venv.site_packages / "demo" / "__init__.py"
        assert "VERSION" in init.read_text()
        with open(init, "a") as f:
            f.write("EDITED = True\n")
        assert init.read_text().endswith("EDITED = True\n")
        assert (venv.upper_dir / "demo" / "__init__.py").exists()
        out = subprocess.run([path / "bin" / "python", "-c", "import demo; print(demo.EDITED)"],
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "True"
    finally:
        run_venvfs("umount", str(path), check=False)


def test_status_shows_shared_bytes_per_distribution_and_link_mode_only_where_it_applies(
        require_fuse: None, store: Store, make_venv: Callable[..., Path], run_venvfs: Run, tmp_path: Path) -> None:
    # Issue 17: torch, used by one venv alone, showed "shared" because one small file of it was in
    # another venv's distribution too; and a mounted venv showed "link mode: hardlink".
    big = simple_package("bigpkg")
    big.files["bigpkg/weights.bin"] = bytes(range(256)) * 8192  # 2 MiB this distribution alone has
    wheels = tmp_path / "wheels"
    run_venvfs("store", "add", str(build_wheel(wheels, big)), str(build_wheel(wheels, simple_package("smallpkg"))))
    mine, other = make_venv("mine", tool="uv"), make_venv("other", tool="uv")
    run_venvfs("add", str(mine), "bigpkg")
    run_venvfs("add", str(other), "smallpkg")
    report = json.loads(run_venvfs("status", str(mine), "--json").stdout)
    (dist,) = [d for d in report["distributions"] if d["name"] == "bigpkg"]
    # Identical small files (sub/helpers.py, data/table.txt) are shared; the weights are not.
    assert dist["shared_with_other_venvs"] and 0 < dist["shared_bytes"] < dist["store_bytes"] / 50, dist
    text = run_venvfs("status", str(mine)).stdout
    line = next(x for x in text.splitlines() if x.strip().startswith("bigpkg"))
    assert " of " in line and line.endswith("shared"), line
    assert "link mode:" in text  # materialized: its files are linked from the store
    run_venvfs("mount", str(mine))
    try:
        text = run_venvfs("status", str(mine)).stdout
        assert "link mode:" not in text, text
    finally:
        run_venvfs("umount", str(mine))


def test_status_parses_each_record_once_however_many_venvs_select_it(
        store: Store, make_venv: Callable[..., Path], run_venvfs: Run, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared bytes are told from every other live venv's selection: mostly the same records, each
    parse of which hashes its whole manifest. With a record parse per venv and key, a store of 116
    registered venvs took 4 s to answer `venvfs status`."""
    from venvfs.store.records import DistRecord
    from venvfs.venv.status import store_status, venv_status

    wheels = tmp_path / "wheels"
    run_venvfs("store", "add", str(build_wheel(wheels, simple_package("onepkg"))),
               str(build_wheel(wheels, simple_package("twopkg"))))
    venvs = [make_venv(f"v{i}", tool="uv") for i in range(4)]
    for venv in venvs:
        run_venvfs("add", str(venv), "onepkg", "twopkg")
    parsed: list[str] = []
    real = DistRecord.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls: type[DistRecord], data: dict[str, object], *args: object, **kwargs: object) -> DistRecord:
        record: DistRecord = real(cls, data, *args, **kwargs)
        parsed.append(record.key)
        return record

    monkeypatch.setattr(DistRecord, "from_json", classmethod(counting))
    report = venv_status(Venv(venvs[0]), store)
    assert sorted(d.name for d in report.distributions) == ["onepkg", "twopkg"]
    assert all(d.shared_with_other_venvs for d in report.distributions)
    assert sorted(parsed) == sorted(set(parsed)) and len(parsed) == 2, parsed
    parsed.clear()
    assert len(store_status(store).venvs) == 4
    assert sorted(parsed) == sorted(set(parsed)) and len(parsed) == 2, parsed
