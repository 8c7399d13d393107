"""optimization_report.md, part 4: Production Recommendations and Lessons Learned.

Both sections are derived from the measured records only: every recommendation names the number
that justifies it, and every lesson is a comparison across stages that a reader can check in the CSV.
"""
from __future__ import annotations

from statistics import fmean

from workbench.report.markdown import device_name, script_name, show, speedup_text, throughput_text
from workbench.report.table import RunView
from workbench.report.verdicts import interval, load_verdicts, verdict_words
from workbench.trace import diagnose


# --- Production Recommendations ---------------------------------------------------------------

def recommendations_section(view: RunView) -> list[str]:
    lines = ["## Production Recommendations", ""]
    base, final = view.baseline, view.final
    if base is None or final is None:
        return lines + ["No recommendation can be made: the baseline was not measured, so nothing "
                        "can be compared with it.", ""]
    lines += [_headline(view, base, final)] + [_keep(r) for r in view.with_status("kept")]
    lines += [f"- Leave `{r['stage']}` out of the final mix: it was kept in the pass, then no longer paid "
              f"with the stages kept after it ({r.get('reason')})." for r in view.with_status("dropped")]
    lines += [_reject(view, r) for r in view.with_status("rejected", "undecided")]
    lines += [_tradeoff(r) for r in view.with_status("tradeoff")]
    lines += [f"- Fix `{r['stage']}` before relying on it: it failed with "
              f"`{r.get('error') or r.get('reason')}`." for r in view.with_status("failed")]
    # Not "on other hardware": a stage skipped for the model or the data (channels_last without
    # convolutions, image stages on tokens) would not apply on any.
    lines += [f"- `{r['stage']}` was skipped here ({r.get('reason')}); it is measured where that no longer holds."
              for r in view.with_status("skipped")]
    lines += [f"- `{r['stage']}` produced a non-finite loss: do not use it without loss scaling or a fix."
              for r in view.records if r.get("loss_finite") is False]
    return lines + _next_bottlenecks(view, final) + [""]


def _headline(view: RunView, base: dict, final: dict) -> str:
    if final is base:
        return (f"- Keep the baseline settings on {device_name(view)}: no stage was kept. "
                f"`{script_name(view)}` holds them.")
    return (f"- Train with `{final.get('applied')}` on {device_name(view)}: "
            f"{speedup_text(final, 'speedup_vs_baseline')} over the baseline. `{script_name(view)}` holds "
            "these settings.")


def _keep(record: dict) -> str:
    if record.get("verdict_vs_previous") != "faster":
        return (f"- `{record['stage']}` made no measurable difference "
                f"({speedup_text(record, 'speedup_vs_previous')}): it was kept because it did not hurt; "
                "drop it if it complicates your setup.")
    return (f"- Keep `{record['stage']}`: {speedup_text(record, 'speedup_vs_previous')} over "
            f"`{record.get('previous_stage')}`.")


def _reject(view: RunView, record: dict) -> str:
    """The measured reason, plus what the stage's own trace said about why (its serious findings)."""
    findings = (view.result(record["stage"]) or {}).get("findings") or []
    why = " ".join(f.get("evidence", "") for f in findings if f.get("severity") in ("high", "medium"))
    if record.get("status") == "undecided" or record.get("verdict_vs_previous") == "inconclusive":
        return (f"- Undecided: `{record['stage']}` could not be judged ({record.get('reason')}). It is not "
                "carried forward; decide it before relying on it (more --rounds, or a quieter machine).")
    if record.get("verdict_vs_previous") == "no significant change":
        text = f"- `{record['stage']}` gave no clear gain here ({record.get('reason')}): leave it off unless it helps elsewhere."
    else:
        text = f"- Leave `{record['stage']}` off on this hardware: {record.get('reason')}."
    return text + (f" Its trace: {why}" if why else "")


def _tradeoff(record: dict) -> str:
    change = show("signed_pct", record.get("memory_change_vs_previous_percent"), "%")
    return (f"- Use `{record['stage']}` only when memory is the limit: peak memory {change} at "
            f"{speedup_text(record, 'speedup_vs_previous')} against `{record.get('previous_stage')}`.")


def _next_bottlenecks(view: RunView, final: dict) -> list[str]:
    """The final trace's findings, each with what this run already measured of the stages it points
    at: a rule's generic advice ("load batches in workers") must not stand beside a measurement that
    says it did not pay on this machine."""
    findings = (view.result(final["stage"]) or {}).get("findings") or []
    return [f"- Next, on the optimized configuration's trace: `{f.get('rule')}`: {f.get('evidence')} "
            f"{_measured_here(view, f) or f.get('action')}" for f in findings]


# A stage the worker sweep found nothing to change for was measured too: by the sweep.
NOTHING_TO_CHANGE = "nothing to change on this machine"


def _measured_here(view: RunView, finding: dict) -> str | None:
    """'Measured here: ...' when every speed stage the finding points at ran in this run and was not
    kept (a memory stage's trade-off is an answer of another kind: its advice stands)."""
    stages = sorted(diagnose.PREDICTS.get(finding.get("rule"), set()))
    records = [view.record(name) for name in stages]
    if not records or any(r is None or not _not_kept(r) for r in records):
        return None
    said = "; ".join(_measured_text(view, r) for r in records)
    if any(r["status"] == "undecided" for r in records):
        return (f"Measured here: {said}. None of it was kept: decide the undecided ones (more rounds, a "
                "quieter machine) before acting on this.")
    return (f"Measured here: {said}. What the rule suggests did not pay on this machine; look elsewhere, "
            "or rerun where it might (more cores, a GPU).")


def _not_kept(record: dict) -> bool:
    return record.get("status") in ("rejected", "undecided", "dropped") or (
        record.get("status") == "skipped" and NOTHING_TO_CHANGE in (record.get("reason") or ""))


def _measured_text(view: RunView, record: dict) -> str:
    if record["status"] == "skipped":
        return f"`{record['stage']}` skipped ({record.get('reason')})"
    return (f"`{record['stage']}` {record['status']}, {speedup_text(record, 'speedup_vs_previous')}"
            f"{_second_look(view, record['stage'])}")


def _second_look(view: RunView, stage: str) -> str:
    """The stage's second look on the final configuration, when it was measured (a stage 'not
    retried' carries its first-pass figure, already quoted)."""
    looks = (load_verdicts(view.run_dir) or {}).get("second_look") or []
    entry = next((e for e in looks if e.get("stage") == stage), None)
    if not entry or entry.get("not_retried") or entry.get("ratio") is None or entry.get("ci95_high") is None:
        return ""
    return f", on the final configuration {interval(entry)} ({verdict_words(entry)})"


# --- Lessons Learned --------------------------------------------------------------------------

def lessons_section(view: RunView) -> list[str]:
    lines = ["## Lessons Learned", ""]
    steps = [r for r in view.records if r.get("speedup_vs_previous") is not None]
    if not steps:
        return lines + ["- No stage has a speedup over a previous configuration, so there is "
                        "nothing to compare yet.",
                        "- " + _noise(view.records), ""]
    lessons = [_largest_gain(steps), _largest_loss(steps), _largest_saving(steps), _compounding(view),
               _no_change(steps), _predictions(view), "- " + _noise(view.records)]
    return lines + [lesson for lesson in lessons if lesson] + [""]


def _largest_gain(steps: list[dict]) -> str | None:
    faster = [r for r in steps if r.get("verdict_vs_previous") == "faster"]
    if not faster:
        return "- No stage was measurably faster than the configuration it built on."
    best = max(faster, key=lambda r: r["speedup_vs_previous"])
    return (f"- Largest gain: `{best['stage']}` at {speedup_text(best, 'speedup_vs_previous')} over "
            f"`{best.get('previous_stage')}`.")


def _largest_loss(steps: list[dict]) -> str | None:
    slower = [r for r in steps if r.get("verdict_vs_previous") == "slower"]
    if not slower:
        return None
    worst = min(slower, key=lambda r: r["speedup_vs_previous"])
    return (f"- Largest loss: `{worst['stage']}` at {speedup_text(worst, 'speedup_vs_previous')}; "
            f"status {worst['status']}.")


def _largest_saving(steps: list[dict]) -> str | None:
    saving = [r for r in steps if (r.get("memory_change_vs_previous_percent") or 0.0) < 0]
    if not saving:
        return "- No stage lowered peak memory."
    best = min(saving, key=lambda r: r["memory_change_vs_previous_percent"])
    return (f"- Largest memory saving: `{best['stage']}` at "
            f"{show('signed_pct', best['memory_change_vs_previous_percent'], '%')} peak memory, at "
            f"{speedup_text(best, 'speedup_vs_previous')} against `{best.get('previous_stage')}`.")


def _compounding(view: RunView) -> str | None:
    base, final = view.baseline, view.final
    kept = view.with_status("kept")
    if not base or not final or final is base or len(kept) < 2:
        return None
    return (f"- Gains compound: {len(kept)} kept stages took throughput from {throughput_text(base)} to "
            f"{throughput_text(final)}, {show('ratio', final.get('speedup_vs_baseline'), 'x')} in all.")


def _no_change(steps: list[dict]) -> str | None:
    """Stages judged "no significant change": those whose interval holds 1, and apart from them those whose
    interval excludes 1 but stays under the bar to keep (min_effect, or the machine's noise floor)."""
    flat = [r for r in steps if r.get("verdict_vs_previous") == "no significant change"]
    if not flat:
        return None
    holds = [r for r in flat if not _excludes_one(r)]
    under_bar = [r for r in flat if _excludes_one(r)]
    parts = []
    if holds:
        names = ", ".join(f"`{r['stage']}`" for r in holds)
        parts.append(f"No measurable change (95% interval holds 1): {names}. "
                     "Small effects need more rounds to resolve.")
    if under_bar:
        shown = ", ".join(f"`{r['stage']}` {speedup_text(r, 'speedup_vs_previous')}" for r in under_bar)
        parts.append(f"Measurable but too small to keep (the interval excludes 1, yet stays under the smallest "
                     f"effect worth keeping or the machine's noise floor): {shown}.")
    return "- " + " ".join(parts)


def _excludes_one(record: dict) -> bool:
    low, high = record.get("speedup_vs_previous_ci95_low"), record.get("speedup_vs_previous_ci95_high")
    return low is not None and high is not None and (low > 1 or high < 1)


def _predictions(view: RunView) -> str | None:
    checked = [r for r in view.results if isinstance(r.get("prediction"), dict)]
    if not checked:
        return None
    agreed = [r["stage"] for r in checked if r["prediction"].get("agrees")]
    missed = [r["stage"] for r in checked if not r["prediction"].get("agrees")]
    text = (f"- Profile first: the trace before each stage called {len(agreed)} of {len(checked)} "
            "outcomes right")
    return text + (f"; it did not foresee {', '.join(f'`{s}`' for s in missed)}." if missed else ".")


def _noise(records: list[dict]) -> str:
    widths = [(r["stage"], (r["throughput_ci95_high"] - r["throughput_ci95_low"]) / 2
               / r["throughput_samples_per_s"] * 100) for r in records
              if r.get("throughput_ci95_low") is not None and r.get("throughput_samples_per_s")]
    if not widths:
        return "No throughput intervals were recorded, so the noise level is unknown."
    stage, widest = max(widths, key=lambda item: item[1])
    iqr = [r["step_time_iqr_ms"] / r["step_time_median_ms"] * 100 for r in records
           if r.get("step_time_iqr_ms") is not None and r.get("step_time_median_ms")]
    spread = f"; step-time IQR averaged {show('pct', fmean(iqr), '%')} of the median" if iqr else ""
    return (f"Noise: throughput 95% intervals spanned ±{show('pct', fmean(w for _, w in widths), '%')} "
            f"of the median on average (widest: `{stage}`, ±{show('pct', widest, '%')}){spread}.")
