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
    if name.startswith("venvfs"):
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


def _seconds(value: float, _pos: object = None) -> str:
    if value < 1:
        return f"{value * 1000:g} ms"
    return f"{value:g} s"


def _megabytes(value: float, _pos: object = None) -> str:
    if value >= 1000:
        return f"{value / 1000:g} GB"
    return f"{value:g} MB"


def _place_labels(ax: Any, points: list[tuple[float, float, str, str]]) -> None:
    """Label each point where its text overlaps no label placed before (greedy, in screen pixels)."""
    ax.figure.canvas.draw()  # fixes the limits, so data -> pixel transforms are final
    # The markers themselves are obstacles too, so no label hides a neighbour's point.
    placed: list[tuple[float, float, float, float]] = []
    for x, y, _, _ in points:
        px, py = ax.transData.transform((x, y))
        placed.append((px - 5, py - 5, px + 5, py + 5))
    offsets = [(6, 4), (6, -11), (-6, 4), (-6, -11), (6, 15), (6, -22), (-6, 15), (-6, -22)]
    for x, y, text, colour in sorted(points, key=lambda p: (p[0], p[1])):
        px, py = ax.transData.transform((x, y))
        w, h = 5.2 * len(text), 10.0
        for dx, dy in offsets:
            left = px + dx if dx > 0 else px + dx - w
            box = (left, py + dy, left + w, py + dy + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8, color=colour,
                    ha="left" if dx > 0 else "right")


def _cost_panel(ax: Any, ran: list[StrategyResult]) -> None:
    from matplotlib.ticker import FuncFormatter

    points = []
    for s in ran:
        t, b = _median(s, "create_s"), _median(s, "extra_bytes")
        if t is None or b is None:
            continue
        colour = _FAMILY_COLOURS[_family(s.name)]
        mb = max(b, 1.0) / 1e6
        ax.scatter([t], [mb], s=110 if s.name == "venvfs" else 50, color=colour, zorder=3,
                   marker="*" if s.name == "venvfs" else "o")
        points.append((t, mb, s.name, colour))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_seconds))
    ax.yaxis.set_major_formatter(FuncFormatter(_megabytes))
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel("time to create one more venv (log scale)")
    ax.set_ylabel("extra disk per venv (statfs delta, log scale)")
    ax.set_title("cost of one more venv (lower left is better)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    _place_labels(ax, points)


_CLIP = 2.5  # ratios beyond this are drawn to the edge and written out, so the 1.0-1.5 range stays legible


def _speed_panel(ax: Any, ran: list[StrategyResult]) -> None:
    others = [s for s in ran if s.name != "native"]
    keys = [("import_warm_s", "warm import", "#1f77b4"), ("import_cold_s", "cold import", "#ff7f0e"),
            ("walk_cold_s", "cold walk (os.walk + lstat)", "#bbbbbb")]
    keys = [k for k in keys if any(_ratio(s, k[0]) is not None for s in others)]
    height = 0.8 / max(1, len(keys))
    for i, (key, label, colour) in enumerate(keys):
        ys = [n + (i - (len(keys) - 1) / 2) * height for n in range(len(others))]
        values = [_ratio(s, key) for s in others]
        shown: list[tuple[float, float]] = [(y, v) for y, v in zip(ys, values, strict=True) if v is not None]
        ax.barh([y for y, _ in shown], [min(v, _CLIP) for _, v in shown], height=height, color=colour,
                label=label)
        for y, v in shown:
            if v > _CLIP:
                ax.text(_CLIP - 0.02, y, f"{v:.1f}x", va="center", ha="right", fontsize=6.5, color="#333333")
        for y, maybe in zip(ys, values, strict=True):
            if maybe is None:
                ax.text(0.02, y, "n/a", va="center", fontsize=6.5, color="#888888")
    ax.axvline(1.0, color="#444444", linewidth=1)
    if any(s.name == "venvfs" for s in others):
        ax.axvline(1.15, color="#1f77b4", linestyle=":", linewidth=1.2, label="venvfs goal: warm <= 1.15x")
        ax.axvline(1.5, color="#ff7f0e", linestyle=":", linewidth=1.2, label="venvfs goal: cold <= 1.5x")
    ax.set_xlim(0, _CLIP)
    ax.set_yticks(range(len(others)))
    ax.set_yticklabels([s.name for s in others], fontsize=8)
    for tick, s in zip(ax.get_yticklabels(), others, strict=True):
        tick.set_color(_FAMILY_COLOURS[_family(s.name)])
    ax.invert_yaxis()
    ax.set_xlabel("time relative to native (1.0 = native, lower is better)")
    ax.set_title("how fast it runs (median ratio to native, same run)", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=3, frameon=False)
    ax.grid(True, axis="x", alpha=0.25)
