"""Where each stage's peak memory goes: weights, gradients and optimizer state measured from the
tensors, the rest of the measured peak as activations and other (a stacked bar per stage)."""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

from matplotlib.patches import Patch

from workbench.report import plots
from workbench.trace.regions import COMPUTE_PARTS

MEMORY_CHART_NAME = "memory_breakdown_stages.png"
PARTS = (("weights", "weights"), ("gradients", "gradients"), ("optimizer_state", "optimizer state"),
         ("activations_and_other", "activations + other"))
COLORS = ("#4C72B0", "#DD8452", "#8172B3", "#55A868")


def _measured(results: list[dict]) -> list[dict]:
    return [r for r in results if (r.get("metrics") or {}).get("memory_breakdown_mb")]


def memory_chart(results: list[dict], path: Path) -> Path | None:
    """The stacked chart, or None when no stage recorded a breakdown."""
    measured = _measured(results)
    if not measured:
        return None
    labels = [r["stage"] for r in measured]
    series = {label: [r["metrics"]["memory_breakdown_mb"].get(key) for r in measured] for key, label in PARTS}
    totals = [f"{r['metrics']['peak_memory_mb']:.0f} MiB" for r in measured]
    kind = measured[0]["metrics"].get("peak_memory_kind", "peak memory")
    fig, ax = plots.new_figure(size=(10.0, 5.0))
    plots.stacked_bars(ax, labels, series, ylabel="MiB", colors=COLORS, totals=totals,
                       title="Peak memory by part, per stage\n" + textwrap.fill(f"({kind})", 90))
    return plots.save(fig, path)


TIMELINE_CHART_NAME = "memory_timelines.png"
# torch's categories, drawn in a fixed order and colour (the ones a stage never used are left out).
TIMELINE_COLORS = {"weights": "#4C72B0", "gradients": "#DD8452", "optimizer_state": "#8172B3",
                   "activations": "#55A868", "temporaries": "#C44E52", "input": "#937860", "other": "#BBBBBB"}
LABELS_NOTE = ("Weights, gradients and optimizer state are told by the tensors themselves; the rest carries "
               "torch.profiler's memory profiler's label (activations include autograd's saved detail).")


def _timelines(results: list[dict]) -> list[tuple[str, dict]]:
    """(stage, timeline) for each stage whose memory timeline file is still where the run wrote it."""
    found = []
    for result in results:
        path = ((result.get("metrics") or {}).get("memory_timeline") or {}).get("file")
        if path and Path(path).is_file():
            try:
                found.append((result["stage"], json.loads(Path(path).read_text())))
            except (OSError, ValueError):
                continue
    return found


def timeline_chart(results: list[dict], path: Path) -> Path | None:
    """Memory over one step by category, a panel per stage, the peak marked and its moment named."""
    found = [(stage, t) for stage, t in _timelines(results) if t.get("times_ms")]
    if not found:
        return None
    cols = min(3, len(found))
    rows = math.ceil(len(found) / cols)
    fig, axes = plots.new_figure(rows, cols, size=(5.0 * cols, 3.4 * rows + 0.6))
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, (stage, timeline) in zip(flat, found):
        _timeline_panel(ax, stage, timeline)
    for ax in flat[len(found):]:
        ax.set_axis_off()
    handles = [Patch(color=TIMELINE_COLORS.get(name, "#BBBBBB"), label=name.replace("_", " "))
               for name in TIMELINE_COLORS if any(name in t["categories"] and any(t["sizes_mib"][t["categories"].index(name)])
                                                  for _, t in found)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles) or 1, fontsize=8)
    fig.suptitle("Memory over one training step, by category\n" + textwrap.fill(LABELS_NOTE, 120), fontsize=10)
    return plots.save(fig, path)


def _timeline_panel(ax, stage: str, timeline: dict) -> None:
    used = [(name, sizes) for name, sizes in zip(timeline["categories"], timeline["sizes_mib"]) if any(sizes)]
    ax.stackplot(timeline["times_ms"], *[sizes for _, sizes in used],
                 colors=[TIMELINE_COLORS.get(name, "#BBBBBB") for name, _ in used], linewidth=0)
    for region in [r for r in timeline.get("regions", []) if r["name"] in COMPUTE_PARTS]:
        ax.axvline(region["start_ms"], color="#333333", linewidth=0.5, linestyle=":")
        ax.text(region["start_ms"], 1.0, region["name"], transform=ax.get_xaxis_transform(), fontsize=6,
                va="bottom", rotation=0)
    peak = timeline.get("peak")
    if peak:
        ax.axvline(peak["at_ms"], color="#C44E52", linewidth=1.0)
        ax.set_title(f"{stage}: peak {peak['mib']:,.0f} MiB at {peak['during']}", fontsize=9, pad=12)
    ax.set_xlabel("ms into the step", fontsize=8)
    ax.set_ylabel("MiB", fontsize=8)
    ax.tick_params(labelsize=7)


def timeline_lines(results: list[dict]) -> list[str]:
    """One line per stage: when its peak happens and what held the memory then."""
    lines = []
    for result in results:
        peak = (((result.get("metrics") or {}).get("memory_timeline") or {}).get("peak")) or None
        if not peak:
            continue
        held = sorted(peak.get("by_category_mib", {}).items(), key=lambda item: -item[1])
        parts = ", ".join(f"{name.replace('_', ' ')} {mib:,.0f}" for name, mib in held if mib >= 0.5)
        lines.append(f"- {result['stage']}: peak {peak['mib']:,.0f} MiB at {peak['during']} ({parts})")
    if not lines:
        return []
    return (["## When the memory peaks", "",
             f"From one extra profiled step per stage (torch.profiler's memory profiler); "
             f"[{TIMELINE_CHART_NAME}]({TIMELINE_CHART_NAME}) draws each step. {LABELS_NOTE}", ""] + lines + [""])
