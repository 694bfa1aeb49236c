"""The chart: what one more venv costs (time against disk) beside how fast it runs (import ratios).

matplotlib is an optional extra (``venvfs[plot]``) and is imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from venvfs.bench.model import Report, StrategyResult

# One colour per family, so the eye groups like with like.
_FAMILY_COLOURS = {
    "native": "#444444",
    "file": "#1f77b4",
    "uv": "#2ca02c",
    "overlay": "#9467bd",
    "venvfs": "#d62728",
}


def _family(name: str) -> str:
    if name == "native":
        return "native"
    if name.startswith("uv-"):
        return "uv"
    if name in ("overlayfs", "fuse-overlayfs"):
        return "overlay"
    if name == "venvfs":
        return "venvfs"
    return "file"


def _median(s: StrategyResult, key: str) -> float | None:
    m = s.metrics.get(key)
    return m.median if m is not None and m.ok else None


def _ratio(s: StrategyResult, key: str) -> float | None:
    m = s.metrics.get(key)
    return m.ratio if m is not None and m.ok else None


def write_png(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [s for s in report.strategies if s.unavailable is None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.6), gridspec_kw={"width_ratios": [1.1, 1]})
    _cost_panel(ax1, ran)
    _speed_panel(ax2, ran)
    env = report.environment
    fig.suptitle(
        f"venvfs bench: one more venv of the {report.workload.get('name')} set "
        f"({len(report.workload.get('wheels', []))} wheels) - {env.get('kernel')}, "
        f"{env.get('cpus')} CPUs, Python {env.get('versions', {}).get('python')}",
        fontsize=11,
    )
    missing = [f"{s.name}: {s.unavailable}" for s in report.strategies if s.unavailable is not None]
    notes = "not measured: " + "; ".join(m[:110] for m in missing) if missing else ""
    if notes:
        fig.text(0.01, 0.01, notes, fontsize=7, color="#666666", wrap=True)
    fig.tight_layout(rect=(0, 0.05 if notes else 0, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _cost_panel(ax: Any, ran: list[StrategyResult]) -> None:
    for s in ran:
        t, b = _median(s, "create_s"), _median(s, "extra_bytes")
        if t is None or b is None:
            continue
        colour = _FAMILY_COLOURS[_family(s.name)]
        ax.scatter([t], [max(b, 1.0) / 1e6], s=60, color=colour, zorder=3,
                   marker="*" if s.name == "venvfs" else "o")
        ax.annotate(s.name, (t, max(b, 1.0) / 1e6), textcoords="offset points", xytext=(6, 4), fontsize=8,
                    color=colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time to create one more venv (s, log)")
    ax.set_ylabel("extra disk per venv (MB, log; statfs delta)")
    ax.set_title("cost of one more venv (lower left is better)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)


def _speed_panel(ax: Any, ran: list[StrategyResult]) -> None:
    others = [s for s in ran if s.name != "native"]
    keys = [("import_warm_s", "warm import", "#1f77b4"), ("import_cold_s", "cold import", "#ff7f0e"),
            ("walk_cold_s", "cold walk", "#bbbbbb")]
    keys = [k for k in keys if any(_ratio(s, k[0]) is not None for s in others)]
    height = 0.8 / max(1, len(keys))
    for i, (key, label, colour) in enumerate(keys):
        ys = [n + (i - (len(keys) - 1) / 2) * height for n in range(len(others))]
        values = [_ratio(s, key) for s in others]
        ax.barh([y for y, v in zip(ys, values, strict=True) if v is not None],
                [v for v in values if v is not None], height=height, color=colour, label=label)
        for y, v in zip(ys, values, strict=True):
            if v is None:
                ax.text(1.0, y, " n/a", va="center", fontsize=7, color="#888888")
    ax.axvline(1.0, color="#444444", linewidth=1)
    if any(s.name == "venvfs" for s in others):
        # The mount's goals (issue 3): warm <= 1.15x, cold <= 1.5x native.
        ax.axvline(1.15, color="#1f77b4", linestyle=":", linewidth=1)
        ax.axvline(1.5, color="#ff7f0e", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(others)))
    ax.set_yticklabels([s.name for s in others], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time relative to native (1.0 = native; lower is better)")
    ax.set_title("how fast it runs (ratio to native, same run)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", alpha=0.25)
