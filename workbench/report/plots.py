"""Charts for reports: generic bar/stacked/line helpers and the five-panel optimization dashboard.

Figures are built with matplotlib's object API (Figure, not pyplot), which renders through Agg
without touching global state, so plotting works headless and never fights another caller's
backend. Helpers draw on an axis they are given and return nothing worth keeping; `save` writes.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Callable, Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from workbench.report.table import BREAKDOWN_KEYS, fmt
from workbench.results import write_atomic

STATUS_COLORS = {
    "baseline": "#4C72B0", "kept": "#55A868", "tradeoff": "#DD8452",
    "rejected": "#A0A0A0", "undecided": "#CCB974", "failed": "#C44E52", "skipped": "#D9D9D9",
    "dropped": "#8FBC8F",
}
# Undecided is not rejected: its own colour and dots, so a reader never takes "not measured well
# enough" for "measured as no better".
# Dropped: kept in the pass (a paler green), struck out by leave-one-out.
STATUS_HATCHES = {"rejected": "//", "undecided": "..", "failed": "xx", "dropped": "\\\\"}
BREAKDOWN_COLORS = ("#8172B3", "#937860", "#4C72B0", "#C44E52", "#55A868", "#BBBBBB")
REFERENCE_STYLE = {"color": "#333333", "linestyle": "--", "linewidth": 1.2}

Interval = tuple[float, float] | None


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (8.0, 5.0)):
    """A figure and its axes, sized in inches; axes is a single Axes when rows == cols == 1."""
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols)


def save(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Write the figure atomically: a reader never opens a half-written PNG."""
    path = Path(path)
    return write_atomic(path, lambda handle: fig.savefig(handle, dpi=dpi, format=path.suffix.lstrip(".") or "png"),
                        binary=True)


def fit_labels(ax, labels: Sequence[str]) -> None:
    """Category labels that stay readable: rotated once they would collide."""
    crowded = sum(len(str(label)) for label in labels) > 48 or len(labels) > 6
    ax.set_xticks(range(len(labels)), labels, rotation=30 if crowded else 0,
                  ha="right" if crowded else "center", rotation_mode="anchor")


def reference_line(ax, y: float, label: str) -> None:
    ax.axhline(y, **REFERENCE_STYLE, label=label, zorder=3)


def _yerr(values: Sequence[float | None], errors: Sequence[Interval] | None):
    """Asymmetric error bars from (low, high) intervals; bars without one get zero length."""
    if errors is None:
        return None
    lower, upper = [], []
    for value, interval in zip(values, errors):
        has = value is not None and interval is not None and None not in interval
        lower.append(max(value - interval[0], 0.0) if has else 0.0)
        upper.append(max(interval[1] - value, 0.0) if has else 0.0)
    return [lower, upper]


def bar_chart(ax, labels: Sequence[str], values: Sequence[float | None],
              errors: Sequence[Interval] | None = None, colors: Sequence[str] | None = None,
              ylabel: str = "", title: str = "", reference: float | None = None,
              reference_label: str = "baseline", hatches: Sequence[str | None] | None = None,
              value_label: Callable[[float], str] = "{:.2f}".format,
              missing_label: str | Sequence[str] = "n/a") -> None:
    """Bars with optional CI error bars, a dashed reference line, and each bar's value printed.

    errors: per bar a (low, high) interval in data units (e.g. a 95% CI), or None.
    A value of None draws no bar and prints missing_label (one string, or one per bar) instead.
    """
    heights = [0.0 if v is None else v for v in values]
    bars = ax.bar(range(len(values)), heights, color=colors, edgecolor="#333333", linewidth=0.6,
                  yerr=_yerr(values, errors), capsize=4, ecolor="#222222", zorder=2)
    for bar, hatch in zip(bars, hatches or []):
        bar.set_hatch(hatch or "")
    _label_bars(ax, bars, values, value_label, missing_label)
    if reference is not None:
        reference_line(ax, reference, reference_label)
        ax.legend(loc="best", fontsize=8)
    _decorate(ax, labels, ylabel, title)
    ax.margins(y=0.15)
    _clip_wide_intervals(ax, values, errors, value_label)


# An interval from two rounds can reach 20x its bar (a t quantile with one degree of freedom): drawn to
# scale it flattens every other bar of the panel. Past this multiple of the tallest bar it is cut at
# the top, and its end written there.
READABLE_TOP = 2.0


def _clip_wide_intervals(ax, values, errors, value_label) -> None:
    tallest = max((v for v in values if v is not None), default=None)
    if not tallest or not errors:
        return
    top = READABLE_TOP * tallest
    clipped = [(i, e[1]) for i, (v, e) in enumerate(zip(values, errors))
               if v is not None and e is not None and e[1] is not None and e[1] > top]
    if not clipped:
        return
    ax.set_ylim(top=top)
    for index, high in clipped:
        shown = value_label(high) if math.isfinite(high) else "inf"
        ax.annotate(f"CI to\n{shown}", (index, top), xytext=(9, -4), textcoords="offset points",
                    ha="left", va="top", fontsize=6, color="#222222")


def _label_bars(ax, bars, values, value_label, missing_label) -> None:
    """Each bar's value on top; where there is none, why (skipped, failed), written upwards from the axis so
    that neighbouring labels never run into each other."""
    missing = [missing_label] * len(values) if isinstance(missing_label, str) else missing_label
    ax.bar_label(bars, ["" if v is None else value_label(v) for v in values], padding=3, fontsize=8)
    for bar, value, why in zip(bars, values, missing):
        if value is None:
            ax.annotate(why, (bar.get_x() + bar.get_width() / 2, 0), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", rotation=90, fontsize=7, color="#555555")


def _decorate(ax, labels: Sequence[str], ylabel: str, title: str) -> None:
    fit_labels(ax, labels)
    # With one or two categories a bar would fill the panel: keep room for three, centred.
    pad = max(0.0, (3 - len(labels)) / 2)
    ax.set_xlim(-0.6 - pad, len(labels) - 0.4 + pad)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3, zorder=0)


def stacked_bars(ax, labels: Sequence[str], series: dict[str, Sequence[float | None]],
                 ylabel: str = "", title: str = "", colors: Sequence[str] | None = None,
                 totals: Sequence[str | None] | None = None,
                 missing_label: str | Sequence[str] = "no data") -> None:
    """One bar per label, stacked from the series in order (None counts as 0).

    totals: per bar, a text printed on top (e.g. the absolute total when the stack shows shares);
    None there marks a label without data, which prints missing_label instead (one string, or one per
    bar), written upwards: side by side, horizontal words of neighbouring bars would run into each other.
    """
    bottoms = [0.0] * len(labels)
    for position, (name, values) in enumerate(series.items()):
        heights = [0.0 if v is None else v for v in values]
        color = colors[position % len(colors)] if colors else None
        ax.bar(range(len(labels)), heights, bottom=bottoms, label=name, color=color,
               edgecolor="white", linewidth=0.5, zorder=2)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    missing = [missing_label] * len(labels) if isinstance(missing_label, str) else list(missing_label)
    for position, text in enumerate(totals or []):
        if text is None:
            ax.text(position, bottoms[position] + 2, missing[position], ha="center", va="bottom", fontsize=7,
                    rotation=90, color="#555555")
        else:
            ax.text(position, bottoms[position], text, ha="center", va="bottom", fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    _decorate(ax, labels, ylabel, title)
    ax.margins(y=0.1)


def line_chart(ax, labels: Sequence[str], values: Sequence[float],
               errors: Sequence[Interval] | None = None, ylabel: str = "", title: str = "",
               reference: float | None = None, reference_label: str = "",
               value_label: Callable[[float], str] = "{:.2f}".format) -> None:
    """A marked line over categories, each point labelled, with an optional reference line."""
    ax.errorbar(range(len(values)), values, yerr=_yerr(values, errors), marker="o",
                color=STATUS_COLORS["kept"], capsize=4, linewidth=2, zorder=3)
    for x, value in enumerate(values):
        # Right of the point, so the label never sits on the error bar above it.
        ax.annotate(value_label(value), (x, value), textcoords="offset points", xytext=(8, -4),
                    ha="left", va="top", fontsize=8)
    if reference is not None:
        reference_line(ax, reference, reference_label)
        ax.legend(loc="lower right", fontsize=8)
    _decorate(ax, labels, ylabel, title)
    ax.margins(x=0.1, y=0.2)


def status_handles(statuses: Sequence[str]) -> list[Patch]:
    """Legend patches for the statuses that appear, in a fixed order."""
    present = [s for s in STATUS_COLORS if s in set(statuses)]
    return [Patch(facecolor=STATUS_COLORS[s], hatch=STATUS_HATCHES.get(s, ""),
                  edgecolor="#333333", label=s) for s in present]


# --- the dashboard -------------------------------------------------------------------------

def _interval(record: dict, prefix: str) -> Interval:
    low, high = record.get(f"{prefix}_ci95_low"), record.get(f"{prefix}_ci95_high")
    return None if low is None or high is None else (low, high)


def _scaled(interval: Interval, factor: float) -> Interval:
    return None if interval is None else (interval[0] * factor, interval[1] * factor)


def _status_style(records: Sequence[dict]) -> tuple[list[str], list[str | None]]:
    statuses = [r.get("status") or "failed" for r in records]
    return [STATUS_COLORS.get(s, "#999999") for s in statuses], [STATUS_HATCHES.get(s) for s in statuses]


def _unmeasured(records: Sequence[dict]) -> list[str]:
    return [r.get("status") or "not measured" for r in records]


# Each bar is one side of its own paired comparison, in its own time window: two bars side by side are
# not a comparison (a rejected stage can stand taller than the final), the speedup panels are.
THROUGHPUT_TITLE = "Throughput per stage\n(each bar from its own comparison's time window: compare speedups, not bars)"


def throughput_panel(ax, records: Sequence[dict]) -> None:
    colors, hatches = _status_style(records)
    baseline = next((r for r in records if r.get("status") == "baseline"), {})
    # A language model's bars in tokens/s (samples/s x seq_len: the same intervals, scaled).
    scale = {id(r): r.get("tokens_per_sample") or 1 for r in records}
    unit = "tokens/s" if any(r.get("tokens_per_sample") for r in records) else "samples/s"
    reference = baseline.get("throughput_samples_per_s")
    reference = reference * scale[id(baseline)] if reference is not None and baseline else reference
    label = f"baseline {fmt('rate', reference)} {unit}" if reference else "baseline"
    values = [None if r.get("throughput_samples_per_s") is None else r["throughput_samples_per_s"] * scale[id(r)]
              for r in records]
    errors = [_scaled(_interval(r, "throughput"), scale[id(r)]) for r in records]
    bar_chart(ax, [r["stage"] for r in records], values,
              errors=errors, colors=colors, hatches=hatches,
              ylabel=f"{unit} (median, 95% CI)", title=THROUGHPUT_TITLE,
              reference=reference, reference_label=label, value_label=lambda v: fmt("rate", v),
              missing_label=_unmeasured(records))


# The kept stages' speedups against the baseline are paired or chained (paired comparisons multiplied
# along the kept stages); the final configuration's is the paired headline, so the panel ends on it.
# A figure from rounds minutes apart (an earlier run's record) is labelled unpaired.
CUMULATIVE_TITLE = "Speedup vs baseline: kept stages (paired or chained) and the final (paired headline)"


def cumulative_panel(ax, records: Sequence[dict]) -> None:
    chain = [r for r in records if r.get("status") in ("baseline", "kept", "final")
             and r.get("speedup_vs_baseline") is not None]
    if not chain:
        _empty(ax, CUMULATIVE_TITLE, "no baseline speedup was recorded")
        return
    labels = [f"{r['stage']} (paired)" if r.get("status") == "final"
              else f"{r['stage']} (unpaired)" if r.get("speedup_vs_baseline_from") == "unpaired" else r["stage"]
              for r in chain]
    line_chart(ax, labels, [r["speedup_vs_baseline"] for r in chain],
               errors=[_interval(r, "speedup_vs_baseline") for r in chain],
               ylabel="speedup vs baseline (x)", title=CUMULATIVE_TITLE,
               reference=1.0, reference_label="1x (baseline)",
               value_label=lambda v: f"{fmt('ratio', v)}x")


def memory_panel(ax, records: Sequence[dict]) -> None:
    colors, hatches = _status_style(records)
    kinds = [r.get("peak_memory_kind") for r in records if r.get("peak_memory_kind")]
    kind = max(set(kinds), key=kinds.count) if kinds else "peak memory"
    # The kind says what was measured (allocator peak on CUDA, sampled RSS on a CPU) and can be
    # a sentence long: it goes under the title, wrapped, not into the axis label.
    title = "Peak memory per stage\n" + textwrap.fill(kind, width=70)
    bar_chart(ax, [r["stage"] for r in records], [r.get("peak_memory_mb") for r in records],
              colors=colors, hatches=hatches, ylabel="peak memory (MiB)", title=title,
              value_label=lambda v: fmt("mb", v), missing_label=_unmeasured(records))


def incremental_panel(ax, records: Sequence[dict]) -> None:
    steps = [r for r in records if r.get("speedup_vs_previous") is not None]
    if not steps:
        _empty(ax, "Speedup of each stage over the previous kept configuration",
               "no stage beyond the baseline was measured")
        return
    colors, hatches = _status_style(steps)
    bar_chart(ax, [r["stage"] for r in steps], [r["speedup_vs_previous"] for r in steps],
              errors=[_interval(r, "speedup_vs_previous") for r in steps], colors=colors,
              hatches=hatches, ylabel="speedup vs previous (x, 95% CI)",
              title="Speedup of each stage over the previous kept configuration",
              reference=1.0, reference_label="1x (no change)",
              value_label=lambda v: f"{fmt('ratio', v)}x")


def breakdown_panel(ax, records: Sequence[dict]) -> None:
    # Shares, not milliseconds: one slow rejected stage (bf16 on a CPU without it: 10 s a step)
    # would flatten every other bar. The profiled step time is printed on top of each bar.
    series = {key.replace("_", " "): [r.get(f"{key}_percent") for r in records]
              for key in BREAKDOWN_KEYS}
    totals = [None if r.get("trace_step_time_ms") is None
              else f"{fmt('ms', r['trace_step_time_ms'])} ms" for r in records]
    title = "Step-time breakdown from the traces"
    if all(total is None for total in totals):
        _empty(ax, title, "no trace summary was recorded for any stage")
        return
    stacked_bars(ax, [r["stage"] for r in records], series, colors=BREAKDOWN_COLORS,
                 ylabel="% of the profiled step", title=title,
                 totals=totals, missing_label=[r.get("status") if r.get("status") in ("skipped", "failed")
                                               else "no trace" for r in records])
    ax.set_ylim(0, 110)


def _empty(ax, title: str, why: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=10)
    ax.set_axis_off()


def dashboard(records: Sequence[dict], path: Path, title: str = "Optimization dashboard",
              frontier: Callable | None = None) -> Path:
    """Five panels: throughput, cumulative speedup, peak memory, incremental speedup, breakdown; and
    with a memory budget a sixth, the memory/throughput frontier (`frontier` draws it on an axis)."""
    rows = 4 if frontier is not None else 3
    fig = Figure(figsize=(15, 14 + 5 * (rows - 3)), layout="constrained")
    grid = fig.add_gridspec(rows, 2)
    fig.suptitle(title, fontsize=14)
    throughput_panel(fig.add_subplot(grid[0, 0]), records)
    cumulative_panel(fig.add_subplot(grid[0, 1]), records)
    memory_panel(fig.add_subplot(grid[1, 0]), records)
    incremental_panel(fig.add_subplot(grid[1, 1]), records)
    breakdown_panel(fig.add_subplot(grid[2, :]), records)
    if frontier is not None:
        frontier(fig.add_subplot(grid[3, :]))
    handles = status_handles([r.get("status") for r in records])
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles) or 1,
               fontsize=9, title="bar colour = stage status", title_fontsize=9)
    return save(fig, path)
