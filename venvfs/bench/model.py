"""What a benchmark run produces: per strategy, per metric, either real samples or a stated failure.

A metric never holds a made-up number: a measurement that could not be taken is ``unavailable`` with
a reason, and the report prints that reason instead of a value.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

# Metric keys, in report order, with their unit and whether bigger is better (for the ratio wording).
METRICS: dict[str, tuple[str, str]] = {
    "create_s": ("s", "time to create one more venv"),
    "extra_bytes": ("bytes", "extra disk per venv (statfs delta after creating it and one import)"),
    "extra_inodes": ("inodes", "extra inodes per venv (statfs delta, same moment)"),
    "mount_s": ("s", "mounting an existing venv again, until a lookup in it answers"),
    "import_warm_s": ("s", "warm import of the set"),
    "import_cold_s": ("s", "cold import of the set (page cache dropped before each run)"),
    "walk_warm_s": ("s", "os.walk + lstat of site-packages, warm"),
    "walk_cold_s": ("s", "os.walk + lstat of site-packages, cold"),
    "read_warm_mbps": ("MB/s", "sequential read of the largest file, warm"),
    "read_cold_mbps": ("MB/s", "sequential read of the largest file, cold"),
    "uv_install_s": ("s", "uv pip install of the set into a new venv, until settled (in the store)"),
    "uv_settled_bytes": ("bytes", "disk the uv-installed venv keeps once settled (statfs delta)"),
    "uv_peak_bytes": ("bytes", "peak disk while uv installed and venvfs settled (statfs delta)"),
    "pip_install_s": ("s", "pip install of one more small package"),
    "pip_wheelhouse_s": ("s", "pip install of the set from the wheelhouse into a new venv, until settled"),
    "pip_settled_bytes": ("bytes", "disk the pip-installed venv keeps once settled (statfs delta)"),
    "pip_peak_bytes": ("bytes", "peak disk while pip installed and venvfs settled (statfs delta)"),
    "adopt_s": ("s", "venvfs adopt of a pip-installed venv (native: cp -a of it, same filesystem)"),
    "daemon_rss_bytes": ("bytes", "resident memory of the filesystem daemon after the runs"),
    "daemon_hwm_bytes": ("bytes", "peak resident memory of the filesystem daemon"),
    "daemon_pss_bytes": ("bytes", "proportional memory of the filesystem daemon (shared pages divided among "
                                  "their processes, /proc/PID/smaps_rollup)"),
    "daemon_uss_bytes": ("bytes", "unique memory of the filesystem daemon (its private pages)"),
    "mount_uss_bytes": ("bytes", "unique memory of every process of one mount (venvfs: the daemon, its keeper "
                                 "and its watcher): what one more mount costs"),
}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


@dataclass
class Metric:
    """Samples of one metric for one strategy, and per-pair ratios to native taken in the same run."""

    key: str
    samples: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # strategy / native, one per interleaved pair
    unavailable: str | None = None
    note: str | None = None

    @property
    def unit(self) -> str:
        return METRICS[self.key][0]

    @property
    def ok(self) -> bool:
        return self.unavailable is None and bool(self.samples)

    def add(self, value: float, native: float | None = None) -> None:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{self.key}: not a measurement: {value!r}")
        self.samples.append(value)
        if native is not None and native > 0:
            self.ratios.append(value / native)

    def fail(self, reason: str) -> Metric:
        # The first reason is the root cause; later failures of the same metric follow from it.
        if self.unavailable is None:
            self.unavailable = reason
        return self

    @property
    def median(self) -> float | None:
        return median(self.samples) if self.ok else None

    @property
    def ratio(self) -> float | None:
        return median(self.ratios) if self.ok and self.ratios else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit, "description": METRICS[self.key][1]}
        if not self.ok:
            out["unavailable"] = self.unavailable or "no sample was taken"
            return out
        out.update(
            median=self.median, min=min(self.samples), max=max(self.samples), samples=self.samples,
        )
        if self.ratios:
            out["ratio_to_native"] = {"median": self.ratio, "min": min(self.ratios), "max": max(self.ratios),
                                      "pairs": self.ratios}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class StrategyResult:
    name: str
    label: str
    unavailable: str | None = None
    filesystem: str | None = None
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Metric] = field(default_factory=dict)

    def metric(self, key: str) -> Metric:
        if key not in self.metrics:
            self.metrics[key] = Metric(key)
        return self.metrics[key]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "label": self.label, "available": self.unavailable is None}
        if self.unavailable is not None:
            out["unavailable"] = self.unavailable
        out["filesystem"] = self.filesystem
        out["notes"] = self.notes
        out["metrics"] = {k: m.to_json() for k, m in sorted(self.metrics.items(), key=_metric_order)}
        return out


def _metric_order(item: tuple[str, Metric]) -> int:
    keys = list(METRICS)
    return keys.index(item[0]) if item[0] in keys else len(keys)


@dataclass
class Report:
    environment: dict[str, Any]
    workload: dict[str, Any]
    settings: dict[str, Any]
    strategies: list[StrategyResult]
    started: str = ""
    duration_s: float = 0.0
    SCHEMA = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.SCHEMA,
            "started": self.started,
            "duration_s": self.duration_s,
            "environment": self.environment,
            "workload": self.workload,
            "settings": self.settings,
            "strategies": [s.to_json() for s in self.strategies],
        }
