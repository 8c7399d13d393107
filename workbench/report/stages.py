"""optimization_report.md, part 3: Optimizations Applied, one section per stage after the baseline.

Each section says what changed against the configuration the stage was built on, what it measured
(speed with its interval, memory), its impact by the stated rule, the verdict and its reason, and
whether the trace before it predicted the outcome (the rule -> stage table of workbench/trace/diagnose.py).
"""
from __future__ import annotations

from workbench.trace import diagnose
from workbench.report.markdown import bullet, plain, show, speedup_text, throughput_text
from workbench.report.table import BREAKDOWN_KEYS, IMPACT_RULES, RunView

# Settings that change how a stage is measured, not how the model trains.
MEASUREMENT_KEYS = ("warmup_steps", "timed_steps", "repeats")
IGNORED_KEYS = ("run_name", "reports_dir", "profiles_dir", "trace", "trace_with_stack", "seed", "data",
                "data_dir", "synthetic_per_batch")
# BatchNorm makes these stages differ numerically from the plain loop (see DESIGN.md pitfalls).
BATCHNORM_CAVEATS = {
    "accumulation": "with BatchNorm, statistics are computed per micro-batch, so accumulation is not "
                    "numerically the same as one large batch.",
    "checkpointing": "with BatchNorm, recomputation in backward updates the running statistics a second "
                     "time (pytorch issue 96136).",
}
BATCHNORM_MODELS = ("resnet", "densenet", "mobilenet", "efficientnet", "regnet", "vgg")


def impact_rule_text() -> str:
    (high, high_x, high_mem), (medium, medium_x, medium_mem) = IMPACT_RULES
    return (f"Impact rule: **{high}** when the stage is faster than the configuration it builds on by at "
            f"least {show('ratio', high_x, 'x')} (95% interval above 1) or cuts peak memory by at least "
            f"{show('pct', high_mem, '%')}; **{medium}** from {show('ratio', medium_x, 'x')} or "
            f"{show('pct', medium_mem, '%')}; otherwise **Low**. Memory saved by a measurably slower "
            "stage counts only when the ladder offers it as a memory trade-off.")


def optimizations_section(view: RunView) -> list[str]:
    lines = ["## Optimizations Applied", "", impact_rule_text(), ""]
    stages = [r for r in view.records if r["status"] != "baseline" and r["stage"] != "baseline"]
    if not stages:
        return lines + ["Only the baseline has a result, so no optimization was measured in this run.", ""]
    for record in stages:
        lines += stage_section(view, record)
    return lines


def stage_section(view: RunView, record: dict) -> list[str]:
    result = view.result(record["stage"]) or {}
    lines = [f"### {record['stage']} ({record['status']})", "",
             bullet("Verdict", f"{record['status']}: {record.get('reason') or 'no reason recorded'}")]
    if record["status"] == "skipped":
        return lines + [""]
    lines.append(bullet("Configuration", configuration_text(view, result, record)))
    if record.get("throughput_samples_per_s") is None:
        why = record.get("error") or "no measurement was recorded"
        return lines + [bullet("Measurement", f"none ({why})."), ""]
    lines += measured_lines(view, record, result)
    return lines + [""]


def measured_lines(view: RunView, record: dict, result: dict) -> list[str]:
    previous = record.get("previous_stage") or "the previous configuration"
    step = f"step {show('ms', record.get('step_time_median_ms'), ' ms')} median " \
           f"(IQR {show('ms', record.get('step_time_iqr_ms'), ' ms')})"
    lines = [bullet("Throughput", f"{throughput_text(record)}; {step}"),
             bullet(f"Speedup over `{previous}`", speedup_text(record, "speedup_vs_previous"))]
    if previous != (view.baseline or {}).get("stage"):
        lines.append(bullet("Speedup over the baseline", speedup_text(record, "speedup_vs_baseline")))
    lines += [
        bullet("Peak memory", _memory_text(record, previous)),
        bullet("Impact", record.get("impact") or "n/a"),
        bullet("Prediction", prediction_text(view, record)),
        bullet("Trace", trace_text(view, record, result)),
        bullet("Loss", _loss_text(record)),
    ]
    lines += [bullet("Compile time", compile_text(view, record))] if record.get("compile_s") else []
    caveat = _caveat(record["stage"], result, (view.run.get("model_facts") or {}).get("batchnorm"))
    return lines + ([bullet("Caveat", caveat)] if caveat else [])


def configuration_text(view: RunView, result: dict, record: dict) -> str:
    before = (view.result(record.get("previous_stage")) or {}).get("config") or {}
    after = result.get("config") or {}
    changed = [k for k in after if k not in IGNORED_KEYS and before and after.get(k) != before.get(k)]
    training = [f"{k} {plain(before.get(k))} → {plain(after[k])}"
                for k in changed if k not in MEASUREMENT_KEYS]
    measuring = [f"{k} {plain(after[k])}" for k in changed if k in MEASUREMENT_KEYS]
    text = "; ".join(training) or "no training setting differs from the configuration it builds on"
    if record.get("previous_stage"):
        text += f" (against `{record['previous_stage']}`)"
    if measuring:
        text += f"; measured with a shorter protocol: {', '.join(measuring)}"
    return text + f"; in effect: {record.get('applied') or 'the baseline only'}."


def _memory_text(record: dict, previous: str) -> str:
    change = record.get("memory_change_vs_previous_percent")
    versus = f", {show('signed_pct', change, '%')} vs `{previous}`" if change is not None else ""
    return f"{show('mb', record.get('peak_memory_mb'), ' MiB')}{versus}"


def _loss_text(record: dict) -> str:
    finite = record.get("loss_finite")
    state = "finite throughout" if finite else \
        "NOT finite: training broke" if finite is False else "finiteness not recorded"
    return f"final {show('loss', record.get('final_loss'))} ({state})"


def prediction_text(view: RunView, record: dict) -> str:
    """What the findings on the configuration this stage built on said about it, and the outcome."""
    stage, before = record["stage"], record.get("previous_stage")
    findings = (view.result(before) or {}).get("findings") or []
    ratio = show("ratio", record.get("speedup_vs_previous"), "x")
    outcome = f"measured {ratio} ({record.get('verdict_vs_previous')})"
    helped = record.get("verdict_vs_previous") == "faster"
    for_it = [f for f in findings if stage in diagnose.PREDICTS.get(f.get("rule"), set())]
    against = [f for f in findings if stage in diagnose.RULES_OUT.get(f.get("rule"), set())]
    if for_it:
        return (f"predicted to help by {_rules(for_it)} on the `{before}` trace; {outcome}: "
                f"{'confirmed' if helped else 'not confirmed'}.")
    if against:
        return (f"predicted not to help by {_rules(against)} on the `{before}` trace; {outcome}: "
                f"{'not confirmed' if helped else 'confirmed'}.")
    trace = f"the `{before}` trace" if before else "the previous trace"
    reason = f"no finding on {trace} pointed at it" if findings else f"{trace} had no findings"
    return f"not predicted (the stage is on the ladder; {reason}); {outcome}."


def _rules(findings: list[dict]) -> str:
    return ", ".join(f"`{f.get('rule')}` ({f.get('evidence')})" for f in findings)


def trace_text(view: RunView, record: dict, result: dict) -> str:
    if record.get("trace_step_time_ms") is None:
        error = (result.get("trace") or {}).get("analysis_error")
        failed = f" (analysis failed: {error})" if error else ""
        return f"no trace summary was recorded for this stage{failed}."
    parts = ", ".join(f"{key.replace('_', ' ')} {show('pct', record.get(f'{key}_percent'), '%')}"
                      for key in BREAKDOWN_KEYS)
    rules = [f.get("rule") for f in result.get("findings") or []]
    found = f"; findings on this trace: {', '.join(f'`{r}`' for r in rules)}" if rules else ""
    return f"{show('ms', record['trace_step_time_ms'], ' ms')} per profiled step ({parts}){found}."


def compile_text(view: RunView, record: dict) -> str:
    """Compile time and when it pays back, from the step time saved against the previous stage."""
    text = f"{show('seconds', record['compile_s'], ' s')} of warm-up before the first timed step"
    before = view.record(record.get("previous_stage")) or {}
    saved_ms = (before.get("step_time_median_ms") or 0.0) - (record.get("step_time_median_ms") or 0.0)
    if saved_ms <= 0 or not record.get("step_time_median_ms"):
        return text + "; the compiled step is not faster, so it never pays back."
    steps = record["compile_s"] * 1000.0 / saved_ms
    per_epoch = (record.get("epoch_time_s") or 0.0) * 1000.0 / record["step_time_median_ms"]
    epochs = f" (about {show('seconds', steps / per_epoch)} epochs)" if per_epoch else ""
    return (text + f"; at {show('ms', saved_ms, ' ms')} saved per step it pays back after about "
            f"{round(steps)} steps{epochs}.")


def _caveat(stage: str, result: dict, batchnorm: bool | None = None) -> str | None:
    """A BatchNorm caveat where the model has BatchNorm: known from its first batch (run.json's model_facts),
    else guessed from a torchvision family's name (runs recorded before the facts were)."""
    model = str((result.get("config") or {}).get("model", "")).lower()
    has = batchnorm if batchnorm is not None else any(name in model for name in BATCHNORM_MODELS)
    if stage in BATCHNORM_CAVEATS and has:
        return f"{model} uses BatchNorm: {BATCHNORM_CAVEATS[stage]}"
    return None
