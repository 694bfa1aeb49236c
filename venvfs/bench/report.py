"""The report as people read it: a terminal table and a Markdown table, with every missing value
explained in a numbered footnote instead of a blank or a zero."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from venvfs.bench.model import Metric, Report, StrategyResult

# (column title, metric key): the table shows these; the JSON has everything.
COLUMNS: list[tuple[str, str]] = [
    ("create", "create_s"),
    ("extra disk", "extra_bytes"),
    ("extra inodes", "extra_inodes"),
    ("mount", "mount_s"),
    ("import warm", "import_warm_s"),
    ("import cold", "import_cold_s"),
    ("walk warm", "walk_warm_s"),
    ("walk cold", "walk_cold_s"),
    ("read warm", "read_warm_mbps"),
    ("read cold", "read_cold_mbps"),
    ("pip install", "pip_install_s"),
    ("uv install", "uv_install_s"),
    ("uv settled", "uv_settled_bytes"),
    ("pip install set", "pip_wheelhouse_s"),
    ("pip settled", "pip_settled_bytes"),
    ("adopt (native: cp -a)", "adopt_s"),
    ("daemon RSS", "daemon_rss_bytes"),
    ("daemon PSS", "daemon_pss_bytes"),
    ("daemon USS", "daemon_uss_bytes"),
    ("mount USS (all its processes)", "mount_uss_bytes"),
]


def fmt_value(unit: str, value: float) -> str:
    if unit == "s":
        if value < 0.01:
            return f"{value * 1000:.2f} ms"
        if value < 0.1:
            return f"{value * 1000:.1f} ms"
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "bytes":
        for suffix, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.1f} {suffix}"
        return f"{value:.0f} B"
    if unit == "inodes":
        return f"{value:,.0f}"
    if unit == "MB/s":
        return f"{value:,.0f} MB/s"
    return f"{value:g} {unit}"


def fmt_ratio(ratio: float) -> str:
    # Tiny ratios (an overlay venv costs 0.0004x a copy's disk) would all print as 0.00x.
    if ratio >= 0.095 or ratio <= 0:
        return f"{ratio:.2f}x"
    return f"{ratio:.{1 - math.floor(math.log10(ratio))}f}x"


@dataclass
class Footnotes:
    reasons: list[str] = field(default_factory=list)

    def ref(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"n/a[{self.reasons.index(reason) + 1}]"


# A ratio from one or two pairs is one noisy sample, and next to a median taken over other runs it can
# even point the other way: the table shows ratios from this many pairs up (the JSON has them all).
MIN_PAIRS_FOR_RATIO = 3


def cell(metric: Metric | None, notes: Footnotes, *, native: bool) -> str:
    if metric is None:
        return "-"
    if not metric.ok:
        return notes.ref(metric.unavailable or "no sample was taken")
    assert metric.median is not None
    text = fmt_value(metric.unit, metric.median)
    if metric.ratio is not None and not native and len(metric.ratios) >= MIN_PAIRS_FOR_RATIO:
        text += f" ({fmt_ratio(metric.ratio)})"
    return text


def _few_pairs(report: Report) -> bool:
    return any(0 < len(m.ratios) < MIN_PAIRS_FOR_RATIO for s in report.strategies for m in s.metrics.values())


FEW_PAIRS = (f"ratios are shown only where at least {MIN_PAIRS_FOR_RATIO} pairs were measured "
             "(--reps, --venvs); the JSON report has every pair's ratio.")


def _columns(strategies: list[StrategyResult]) -> list[tuple[str, str]]:
    """Only columns some strategy measured or tried to (a mount column in a run without mounts is noise)."""
    return [(title, key) for title, key in COLUMNS if any(key in s.metrics for s in strategies)]


def rows(report: Report) -> tuple[list[str], list[list[str]], Footnotes]:
    notes = Footnotes()
    cols = _columns(report.strategies)
    header = ["strategy", *[t for t, _ in cols]]
    body = []
    for s in report.strategies:
        if s.unavailable is not None:
            body.append([s.name, notes.ref(s.unavailable), *["" for _ in cols[1:]]])
            continue
        body.append([s.name, *[cell(s.metrics.get(k), notes, native=s.name == "native") for _, k in cols]])
    return header, body, notes


def _range_line(s: StrategyResult) -> str:
    parts = []
    for title, key in COLUMNS:
        m = s.metrics.get(key)
        if m is None or not m.ok or len(m.samples) < 2:
            continue
        lo, hi = min(m.samples), max(m.samples)
        part = f"{title} {fmt_value(m.unit, lo)}..{fmt_value(m.unit, hi)}"
        if len(m.ratios) >= MIN_PAIRS_FOR_RATIO and s.name != "native":
            part += f" ({fmt_ratio(min(m.ratios))}..{fmt_ratio(max(m.ratios))})"
        parts.append(part)
    return "; ".join(parts)


def terminal(report: Report) -> str:
    header, body, notes = rows(report)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [_heading(report), ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    lines.append("")
    lines.append("median over repetitions; (Nx) = median of per-pair ratios to native, measured interleaved "
                 "in this run; read is MB/s (higher is better), everything else lower is better.")
    if _few_pairs(report):
        lines.append(FEW_PAIRS)
    ranges = [(s.name, _range_line(s)) for s in report.strategies if s.unavailable is None]
    if any(r for _, r in ranges):
        lines.append("min..max:")
        lines.extend(f"  {name}: {text}" for name, text in ranges if text)
    lines.extend(_notes(report))
    for i, reason in enumerate(notes.reasons, 1):
        lines.append(f"[{i}] {reason}")
    return "\n".join(lines) + "\n"


def _notes(report: Report) -> list[str]:
    out: list[str] = []
    for s in report.strategies:
        out.extend(f"note: {s.name}: {n}" for n in s.notes)
        out.extend(f"note: {s.name} {k}: {m.note}" for k, m in s.metrics.items() if m.note)
    return out


def _heading(report: Report) -> str:
    env = report.environment
    v = env.get("versions", {})
    fss = "; ".join(f"{k}: {f['description']}" for k, f in env.get("filesystems", {}).items())
    return (
        f"venvfs bench: {report.workload.get('name')} workload, {report.settings.get('venvs')} venvs per "
        f"strategy, {report.settings.get('reps')} pairs per metric\n"
        f"machine: {env.get('cpu')} x{env.get('cpus')}, {(env.get('memory_bytes') or 0) / 2**30:.0f} GiB, "
        f"{env.get('kernel')}, {env.get('os')}\n"
        f"versions: python {v.get('python')}, venvfs {v.get('venvfs')}, uv {v.get('uv')}, "
        f"pyfuse3 {v.get('pyfuse3')}, libfuse {v.get('libfuse')}, fuse-overlayfs {v.get('fuse-overlayfs')}\n"
        f"filesystems: {fss}\ncold runs: {env.get('cold_runs')}"
    )


def markdown(report: Report, command: str | None = None) -> str:
    header, body, notes = rows(report)
    esc: Any = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["```", _heading(report), "```", ""]
    if command:
        lines += [f"Reproduce with: `{command}`", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for r in body:
        lines.append("| " + " | ".join(esc(c) for c in r) + " |")
    lines.append("")
    lines.append("Medians over repetitions; `(Nx)` is the median of per-pair ratios to the native venv, "
                 "measured interleaved in the same run. Read is throughput (higher is better); every "
                 "other column is lower-is-better. Extra disk and inodes are statfs deltas after "
                 "creating one more venv and importing the set once in it.")
    if _few_pairs(report):
        lines.append("")
        lines.append(FEW_PAIRS)
    lines.append("")
    for s in report.strategies:
        if s.unavailable is None:
            text = _range_line(s)
            if text:
                lines.append(f"- min..max {s.name}: {text}")
    extra = _notes(report)
    if extra:
        lines.append("")
        lines.extend(f"- {esc(n)}" for n in extra)
    if notes.reasons:
        lines.append("")
        for i, reason in enumerate(notes.reasons, 1):
            lines.append(f"{i}. {esc(reason)}")
    return "\n".join(lines) + "\n"
