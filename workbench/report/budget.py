"""The memory budget in the report: its first lines (fits, or nothing fits and what would), the
memory/throughput frontier as a picture (also a dashboard panel), and each memory move's predicted
saving beside the measured one. From the stage files and verdicts.json only (no torch)."""
from __future__ import annotations

from pathlib import Path

from workbench import frontier
from workbench.frontier import OUT_OF_MEMORY, Point
from workbench.memory_budget import parse
from workbench.report import plots
from workbench.report.markdown import bullet, speedup_text, table, throughput_text
from workbench.report.table import RunView, fmt
from workbench.report.verdicts import load_verdicts

FRONTIER_NAME = "memory_frontier.png"
COLORS = {"fits": "#55A868", "over": "#C44E52", "chosen": "#222222", "front": "#4C72B0"}


def budget_of(view: RunView) -> tuple[float | None, dict]:
    """The run's budget in MiB and verdicts.json's entry for it (None, {} for a run without one)."""
    entry = (load_verdicts(view.run_dir) or {}).get("memory_budget") or {}
    if entry.get("budget_mib"):
        return float(entry["budget_mib"]), entry
    budget = parse(((view.run.get("config") or {}).get("memory_budget")) or "")
    return (budget.mib if budget is not None else None), entry


def points(view: RunView) -> list[Point]:
    return frontier.points_from(view.results)


def first_lines(view: RunView) -> list[str]:
    """The report's opening, for a run with a budget: the answer first."""
    budget_mib, entry = budget_of(view)
    if budget_mib is None:
        return []
    found = points(view)
    text = entry.get("text") or _recomputed(view, found, budget_mib)
    over = [p for p in found if p.status == frontier.MEASURED and p.peak_mib > budget_mib]
    oom = [p for p in found if p.status == OUT_OF_MEMORY]
    lines = [f"**{text}**", ""] + _paired_headline(view, entry) + [
             bullet("Memory budget", entry.get("judged_on") or (view.run.get("decisions") or {}).get("memory_budget")
                    or f"{budget_mib:,.0f} MiB")]
    if over:
        lines.append(bullet("Over the budget", ", ".join(f"{p.name} ({p.peak_mib:,.0f} MiB)" for p in over)))
    if oom:
        lines.append(bullet("Out of memory", ", ".join(p.name for p in oom)))
    return lines + ["", f"![Memory/throughput frontier]({FRONTIER_NAME})", ""]


def _paired_headline(view: RunView, entry: dict) -> list[str]:
    """The chosen configuration's speed as the headline measured it, paired with the baseline in one time
    window: the line above chains each stage's paired ratio, measured at the choice, before the headline."""
    final = view.record("final")
    if not entry.get("fits") or final is None or final.get("speedup_vs_baseline") is None:
        return []
    return [bullet("Paired with the baseline (the headline)", f"{speedup_text(final, 'speedup_vs_baseline')}, "
                                                              f"{throughput_text(final)}")]


def _recomputed(view: RunView, found: list[Point], budget_mib: float) -> str:
    allow = bool((view.run.get("config") or {}).get("allow_optimizer_change"))
    chosen = frontier.choose(found, budget_mib, allow)
    if chosen is None:
        return frontier.nothing_fits_line(found, budget_mib, "see the memory moves below")
    return frontier.fits_line(chosen, budget_mib, frontier.fastest(found))


def section(view: RunView) -> list[str]:
    """Every measured configuration as a point, and the moves' predictions against their measurements."""
    budget_mib, entry = budget_of(view)
    if budget_mib is None:
        return []
    found = points(view)
    front = frontier.pareto(found)
    rows = [[p.name, _peak(p), _fits(p, budget_mib), _speed(p), fmt("rate", p.throughput) if p.throughput else "-",
             "chosen" if p.name == entry.get("chosen") else ("frontier" if p in front else "")]
            for p in found]
    lines = ["## Memory budget: the frontier", "",
             "Every configuration the run measured, by its peak memory and its speed against the baseline "
             "(paired, or chained through the paired comparisons it stands on). Where the speed phases' own "
             "configuration fits it stays; otherwise the choice is the fastest that fits; a change of optimizer "
             "only with --allow-optimizer-change.", "",
             *table(["configuration", "peak (MiB)", "fits", "speed vs baseline", "samples/s", ""], rows), ""]
    return lines + _out_of_memory_note(view)


def _peak(p: Point) -> str:
    return "out of memory" if p.status == OUT_OF_MEMORY else f"{p.peak_mib:,.0f}"


def _fits(p: Point, budget_mib: float) -> str:
    if p.status == OUT_OF_MEMORY:
        return "no (out of memory)"
    return "yes" if p.peak_mib <= budget_mib else "no"


def _speed(p: Point) -> str:
    return f"{p.speedup:.2f}x" if p.speedup is not None else "-"


def predictions_section(view: RunView) -> list[str]:
    """Every memory stage's predicted saving beside the measured one (with or without a budget)."""
    moves = [r for r in view.results if r.get("memory_prediction")]
    if not moves:
        return []
    rows = []
    for result in moves:
        entry = result["memory_prediction"]
        measured = entry.get("measured_saving_mib")
        error = entry.get("prediction_error")
        rows.append([result["stage"], entry.get("builds_on", "-"), f"{entry['predicted_saving_mib']:,.0f}",
                     "-" if measured is None else f"{measured:,.0f}",
                     "-" if error is None else f"{error:+.0%}", entry.get("basis", "")])
    return ["## Memory stages: predicted against measured", "",
            "Each move's saving was predicted from the breakdown of the configuration it builds on (weights, "
            "gradients and optimizer state from the tensors, the rest of the peak as activations) before it was "
            "measured.", "",
            *table(["move", "builds on", "predicted saving (MiB)", "measured saving (MiB)", "error", "model"], rows), ""]


def _out_of_memory_note(view: RunView) -> list[str]:
    oom = [r for r in view.results if r.get("status") == "failed" and frontier.is_out_of_memory(r.get("reason"))]
    return [f"- {r['stage']}: {r.get('reason')}" for r in oom] + ([""] if oom else [])


def frontier_panel(ax, found: list[Point], budget_mib: float, chosen: str | None) -> None:
    """Peak memory against throughput: fits in green, over in red, the frontier as a line, the budget
    as a vertical line, the chosen configuration ringed, out-of-memory points as crosses past the budget."""
    measured = [p for p in found if p.status == frontier.MEASURED and p.speedup is not None]
    use_rate = all(p.throughput for p in measured)
    y = (lambda p: p.throughput) if use_rate else (lambda p: p.speedup)
    for p in measured:
        ax.scatter(p.peak_mib, y(p), s=40, zorder=3, color=COLORS["fits" if p.peak_mib <= budget_mib else "over"])
        ax.annotate(p.name, (p.peak_mib, y(p)), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = frontier.pareto(measured)
    if len(front) > 1:
        ax.plot([p.peak_mib for p in front], [y(p) for p in front], color=COLORS["front"], linewidth=1, zorder=2,
                label="frontier (nothing both smaller and faster)")
    mark = next((p for p in measured if p.name == chosen), None)
    if mark is not None:
        ax.scatter(mark.peak_mib, y(mark), s=220, facecolors="none", edgecolors=COLORS["chosen"], linewidths=1.5,
                   zorder=4, label=f"chosen: {mark.name}")
    _oom_marks(ax, [p for p in found if p.status == OUT_OF_MEMORY], budget_mib, measured, y)
    ax.axvline(budget_mib, color=COLORS["over"], linestyle="--", linewidth=1.2, label=f"budget {budget_mib:,.0f} MiB")
    ax.set_xlabel("peak memory (MiB)")
    ax.set_ylabel("samples/s (paired against the baseline)" if use_rate else "speed vs baseline (x)")
    ax.set_title("Memory/throughput frontier", fontsize=11)
    ax.legend(fontsize=8, loc="best")


def _oom_marks(ax, oom: list[Point], budget_mib: float, measured: list[Point], y) -> None:
    low = min((y(p) for p in measured), default=0.0)
    for index, p in enumerate(oom):
        ax.scatter(budget_mib * 1.05, low, marker="x", s=60, color=COLORS["over"], zorder=3)
        ax.annotate(f"{p.name} (out of memory)", (budget_mib * 1.05, low), textcoords="offset points",
                    xytext=(4, -10 - 10 * index), fontsize=7)


def frontier_chart(view: RunView, path: Path) -> Path | None:
    budget_mib, entry = budget_of(view)
    if budget_mib is None:
        return None
    fig, ax = plots.new_figure(size=(9.0, 6.0))
    frontier_panel(ax, points(view), budget_mib, entry.get("chosen"))
    return plots.save(fig, path)
