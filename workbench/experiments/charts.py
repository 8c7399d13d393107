"""Panels the experiments share, drawn from their rows with the generic helpers of workbench.report.plots.

A row that was not measured (failed, skipped) keeps its place on the axis and prints its status
instead of a bar, so a chart never silently drops a configuration.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable, Sequence

from workbench.report import plots
from workbench.experiments.rows import interval, too_wide, value

INCONCLUSIVE_LABEL = "inconclusive:\ntoo noisy,\nrerun on a\nquiet machine"

OK_COLOR, REFERENCE_COLOR = plots.STATUS_COLORS["kept"], plots.STATUS_COLORS["baseline"]
SLOWER_COLOR = plots.STATUS_COLORS["tradeoff"]


def labels(rows: Sequence[dict]) -> list[str]:
    return [r["label"] for r in rows]


def missing(rows: Sequence[dict]) -> list[str]:
    return [r["status"] if r["status"] != "ok" else "n/a" for r in rows]


def colors(rows: Sequence[dict], reference: str, speed: bool = True) -> list[str]:
    """Reference blue, failed red, skipped grey, others green; with speed, measurably slower orange."""
    chosen = []
    for r in rows:
        slower = speed and value(r, "speedup", "verdict") == "slower"
        if r["status"] in ("failed", "skipped"):
            chosen.append(plots.STATUS_COLORS[r["status"]])
        elif r["label"] == reference:
            chosen.append(REFERENCE_COLOR)
        else:
            chosen.append(SLOWER_COLOR if slower else OK_COLOR)
    return chosen


def metric_panel(ax, rows: Sequence[dict], reference: str, path: tuple[str, ...], ylabel: str, title: str,
                 fmt: Callable[[float], str] = "{:.1f}".format, with_interval: bool = False,
                 line: float | None = None, line_label: str = "", speed: bool = True) -> None:
    """Bars of one figure per row (optionally with its 95% interval and a reference line).

    speed: colour measurably slower rows orange (leave it off for figures that are not about speed).
    """
    # A figure whose interval is too wide to tell is not drawn as a bare number: it says so instead.
    noisy = [with_interval and too_wide(r, path[0]) for r in rows]
    values = [None if n else value(r, *path) for r, n in zip(rows, noisy)]
    errors = [None if n else interval(r, path[0]) for r, n in zip(rows, noisy)] if with_interval else None
    labels_missing = [INCONCLUSIVE_LABEL if n else m for n, m in zip(noisy, missing(rows))]
    plots.bar_chart(ax, labels(rows), values, errors=errors, colors=colors(rows, reference, speed), ylabel=ylabel,
                    title=title, reference=line, reference_label=line_label, value_label=fmt,
                    missing_label=labels_missing)


def throughput_panel(ax, rows: Sequence[dict], reference: str, title: str = "Throughput") -> None:
    metric_panel(ax, rows, reference, ("throughput", "median"), "samples/s (median, 95% CI)", title,
                 with_interval=True)


def speedup_panel(ax, rows: Sequence[dict], reference: str, title: str = "") -> None:
    metric_panel(ax, rows, reference, ("speedup", "ratio"), "speedup (x, 95% CI)",
                 title or f"Speedup vs {reference}", fmt=lambda v: f"{v:.2f}x", with_interval=True,
                 line=1.0, line_label="1x (reference)")


def memory_panel(ax, rows: Sequence[dict], reference: str, title: str = "Peak memory") -> None:
    kinds = [r["peak_memory_kind"] for r in rows if r.get("peak_memory_kind")]
    unit = "MiB" + (" (host RSS growth)" if kinds and "RSS" in kinds[0] else "")
    metric_panel(ax, rows, reference, ("peak_memory_mb",), unit, title, fmt="{:.0f}".format, speed=False)


def figure(rows: int, cols: int, title: str, width: float = 6.0, height: float = 4.5):
    fig, axes = plots.new_figure(rows, cols, (width * cols, height * rows))
    fig.suptitle(title, fontsize=13)
    return fig, axes


def footnote(fig, text: str) -> None:
    """A sentence under the panels (what the memory figure is, what was skipped and why)."""
    # supxlabel, unlike fig.text, gets its own room in the constrained layout.
    if text:
        width = int(fig.get_figwidth() * 16)  # characters of 7-point text per line of this figure
        fig.supxlabel(textwrap.fill(text, width), fontsize=7, ha="center")


def save(fig, out_dir: Path, name: str) -> Path:
    return plots.save(fig, Path(out_dir) / name)
