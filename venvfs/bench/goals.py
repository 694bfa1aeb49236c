"""The mount's performance goals (issue 3), checked against benchmark reports.

``python -m venvfs.bench.goals MAIN.json [SCALE.json]``: MAIN is a run on the scientific set, SCALE a
``--synthetic-files 20000`` run. Exit 0 when every goal is met, 1 when one is missed, 2 when one
could not be measured (which is not a pass).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Goal:
    title: str
    report: str  # "main" or "scale"
    metric: str
    use_ratio: bool
    limit: float
    unit: str
    # Compared with another strategy's median in the same run (venvfs's median / theirs), not with
    # native: where the goal is to be as fast as a peer (fuse-overlayfs, uv's hardlinks).
    versus: str | None = None


GOALS = [
    Goal("warm import <= 1.15x native", "main", "import_warm_s", True, 1.15, "x"),
    Goal("cold import <= 1.5x native", "main", "import_cold_s", True, 1.5, "x"),
    Goal("20,000-file venv mounted and answering < 0.5 s", "scale", "mount_s", False, 0.5, "s"),
    Goal("daemon RSS < 80 MB for the 20,000-file venv", "scale", "daemon_rss_bytes", False, 80e6, "B"),
    # Issue 16: a daemon forked from the mount service shares its interpreter's pages; what one more
    # mount of the scientific set costs is the unique memory of all its processes (daemon, keeper, watcher).
    Goal("per-mount USS <= 15 MB for the scientific set", "main", "mount_uss_bytes", False, 15e6, "B"),
    Goal("mount until it answers <= 60 ms, scientific set", "main", "mount_s", False, 0.060, "s"),
    Goal("mount until it answers <= 60 ms, 20,000 files", "scale", "mount_s", False, 0.060, "s"),
    Goal("create of one more venv <= 2x fuse-overlayfs's", "main", "create_s", False, 2.0, "x", "fuse-overlayfs"),
    Goal("create of one more venv <= 0.5x uv hardlink's", "main", "create_s", False, 0.5, "x", "uv-hardlink"),
    # Issue 15: the daily path, from an empty venv to the set installed and settled in the store.
    Goal("uv pip install into a venvfs venv <= 2x plain uv", "main", "uv_install_s", True, 2.0, "x"),
    # Issue 17: a user's first step, against cp -a of the same venv on the same filesystem.
    Goal("adopt <= 1.5x cp -a", "main", "adopt_s", True, 1.5, "x"),
]


@dataclass
class Verdict:
    goal: Goal
    status: str  # "pass", "FAIL", "unavailable"
    detail: str


def _strategy(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    for s in report.get("strategies", []):
        if s.get("name") == name:
            return s  # type: ignore[no-any-return]
    return None


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "B":
        return f"{value / 1e6:.1f} MB"
    return f"{value:.3f} {unit}"


def check(reports: dict[str, dict[str, Any] | None], strategy: str = "venvfs") -> list[Verdict]:
    verdicts = []
    for goal in GOALS:
        report = reports.get(goal.report)
        if report is None:
            verdicts.append(Verdict(goal, "unavailable", f"no {goal.report} report given"))
            continue
        s = _strategy(report, strategy)
        if s is None:
            verdicts.append(Verdict(goal, "unavailable", f"strategy {strategy} was not run"))
            continue
        if not s.get("available", False):
            verdicts.append(Verdict(goal, "unavailable", s.get("unavailable", "unavailable")))
            continue
        m = s.get("metrics", {}).get(goal.metric)
        if m is None or "unavailable" in m:
            verdicts.append(Verdict(goal, "unavailable", (m or {}).get("unavailable", "not measured")))
            continue
        if goal.versus is not None:
            theirs = _strategy(report, goal.versus)
            t = (theirs or {}).get("metrics", {}).get(goal.metric) or {}
            if not t.get("median"):
                verdicts.append(Verdict(goal, "unavailable", f"{goal.versus} did not measure {goal.metric}"))
                continue
            value, lo, hi = (m[k] / t["median"] for k in ("median", "min", "max"))
        elif goal.use_ratio:
            r = m.get("ratio_to_native")
            if r is None:
                verdicts.append(Verdict(goal, "unavailable", "no ratio to native"))
                continue
            value, lo, hi = r["median"], r["min"], r["max"]
        else:
            value, lo, hi = m["median"], m["min"], m["max"]
        detail = f"{_fmt(value, goal.unit)} (range {_fmt(lo, goal.unit)}..{_fmt(hi, goal.unit)}, " \
                 f"limit {_fmt(goal.limit, goal.unit)})"
        verdicts.append(Verdict(goal, "pass" if value <= goal.limit else "FAIL", detail))
    return verdicts


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or len(args) > 2:
        print("usage: python -m venvfs.bench.goals MAIN.json [SCALE.json]", file=sys.stderr)
        return 2
    reports: dict[str, dict[str, Any] | None] = {"main": None, "scale": None}
    for key, path in zip(("main", "scale"), args, strict=False):
        reports[key] = json.loads(Path(path).read_text())
    verdicts = check(reports)
    width = max(len(v.goal.title) for v in verdicts)
    for v in verdicts:
        print(f"{v.status:<11} {v.goal.title:<{width}}  {v.detail}")
    if any(v.status == "FAIL" for v in verdicts):
        return 1
    return 2 if any(v.status == "unavailable" for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
