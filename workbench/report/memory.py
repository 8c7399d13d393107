"""Where each stage's peak memory goes: weights, gradients and optimizer state measured from the
tensors, the rest of the measured peak as activations and other (a stacked bar per stage)."""
from __future__ import annotations

import textwrap
from pathlib import Path

from workbench.report import plots

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
