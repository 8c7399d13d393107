"""Judging a measured stage: speedups with intervals, kept or rejected, and what the trace says.

Judging never changes what was measured: each function here reads a Measurement and its
TraceReading and returns a Verdict; workbench/run/result.py assembles the three into the stage
result, once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from workbench import stats
from workbench.run.console import fmt
from workbench.run.reading import read_trace
from workbench.run.result import Measurement, Verdict, assemble, judged_metrics, measured
from workbench.run.stages import MEMORY, REFERENCE, Stage

FINAL_STAGE = "final"
# The headline's position: after every stage (runs in the old layout named its file 99-final.json).
FINAL_INDEX = 99


# The baseline against itself, as the baseline's own speedup: exactly 1 by definition.
SAME = {"ratio": 1.0, "ci95_low": 1.0, "ci95_high": 1.0, "verdict": "no significant change"}

# A speed stage whose final loss is this much above the configuration before it changed what is
# learned (same seed, same data, same steps), whatever it does to speed.
LOSS_DEGRADATION_MAX = 1.25


def paired_speedup(comparison, min_effect: float, floor: float) -> dict:
    """b/a over the paired rounds with its verdict; one round (a brief probe) falls back to a
    bootstrap over that round's steps, which is all one round can say."""
    if len(comparison.a_rounds) > 1:
        ratio = comparison.ratio()
    else:
        a, b = comparison.a_final["metrics"], comparison.b_final["metrics"]
        ratio = stats.speedup(b["step_times_s"], b["samples_per_step"], a["step_times_s"], a["samples_per_step"])
    return {**ratio, "verdict": stats.judged_verdict(ratio, min_effect, floor), "min_effect": min_effect,
            "noise_floor": floor}


def verdict_text(ratio: dict, against: str) -> str:
    text = f"{fmt(ratio)} vs {against}"
    if ratio["verdict"] == "inconclusive":
        return f"{text}: {stats.INCONCLUSIVE_TEXT}"
    return f"{text}: {ratio['verdict']}"


BROKE = {"training_broke": True}


def _speed_verdict(metrics: Mapping, previous: dict) -> tuple[str, str, dict]:
    """(status, reason, marks) of a speed stage; marks say when it broke training."""
    if not metrics["loss_finite"]:
        return "rejected", "the loss became non-finite: training broke", BROKE
    before = previous["metrics"]["final_loss"]
    same_steps = metrics.get("trained_steps") == previous["metrics"].get("trained_steps")
    if same_steps and before > 0 and metrics["final_loss"] > LOSS_DEGRADATION_MAX * before:
        return "rejected", (f"final loss {metrics['final_loss']:.3f} vs {before:.3f} for {previous['stage']} "
                            f"(over {LOSS_DEGRADATION_MAX:.2f}x): training got worse, not carried forward"), BROKE
    vs_prev = metrics["speedup_vs_previous"]
    text = verdict_text(vs_prev, previous["stage"])
    if vs_prev["verdict"] == "faster":
        return "kept", f"{text} (whole interval above {1 + vs_prev['min_effect']:.2f}x), kept", {}
    if vs_prev["verdict"] == "slower":
        return "rejected", f"{text}, not carried forward", {}
    return "rejected", f"{text}, not carried forward (a stage is kept only on a clear gain)", {}


def _memory_verdict(metrics: Mapping, previous: dict) -> tuple[str, str, dict]:
    before = previous["metrics"]
    change = metrics["peak_memory_mb"] / before["peak_memory_mb"] - 1 if before["peak_memory_mb"] else 0.0
    return "tradeoff", (f"peak memory {metrics['peak_memory_mb']:.0f} MiB vs {before['peak_memory_mb']:.0f} MiB "
                        f"({change:+.0%}), speed {fmt(metrics['speedup_vs_previous'])} vs {previous['stage']}; "
                        "a memory/speed trade-off, not carried forward"), {}


def _status(metrics: Mapping, kind: str, previous: dict) -> tuple[str, str, dict]:
    """(status, reason, marks) from the figures the verdict looks at (the trace's headline memory in)."""
    if kind == REFERENCE:
        return "baseline", "the reference every stage is compared with", {}
    if kind == MEMORY:
        return _memory_verdict(metrics, previous)
    return _speed_verdict(metrics, previous)


def _prediction(stage: str, vs_previous: dict, previous: dict | None) -> dict | None:
    """Did the finding before this stage predict what the stage then did?"""
    if previous is None or stage == "baseline":
        return None
    from workbench.trace import diagnose

    predicted = stage in diagnose.predicts(previous.get("findings", []))
    helped = vs_previous["verdict"] == "faster"
    return {"predicted_to_help": predicted, "helped": helped, "agrees": predicted == helped}


def skipped(session, stage: Stage, position: int, cfg, reason: str, why: str) -> dict:
    verdict = Verdict("skipped", reason, stage.kind)
    return assemble(session, stage.name, position, cfg, [], why, Measurement("skipped", error=reason), None, verdict)


def _not_measured(session, name: str, position: int, cfg, applied: list[str], why: str, measurement: Measurement,
                  kind: str | None, **marks) -> dict:
    """A side that did not measure: its own reason, or that of the configuration it was compared with."""
    verdict = Verdict(measurement.status, measurement.failure_reason(), kind, marks=marks)
    return assemble(session, name, position, cfg, applied, why, measurement, None, verdict)


def reference_result(session, comparison, started: float) -> dict:
    """The baseline: the second side of the A/A comparison, pooled over its rounds."""
    cfg, measurement = session.base_cfg, measured(comparison, started)
    if not measurement.measured:
        return _not_measured(session, "baseline", 0, cfg, [], "the reference", measurement, None)
    reading = read_trace(session, "baseline", cfg, measurement)
    refused = nonfinite_baseline_reason(measurement.metrics)
    status, reason = ("failed", refused) if refused else ("baseline", "the reference every stage is compared with")
    verdict = Verdict(status, reason, REFERENCE, {"speedup_vs_baseline": SAME, "speedup_vs_previous": None},
                      _scaling(measurement, session))
    return assemble(session, "baseline", 0, cfg, [], "the reference", measurement, reading, verdict)


def nonfinite_baseline_reason(metrics: Mapping | None) -> str | None:
    """A NaN or infinite baseline loss is no reference: every comparison with it would mislead."""
    metrics = metrics or {}
    if metrics.get("loss_finite") is not False:
        return None
    return (f"the baseline's training loss is not finite (final loss {metrics.get('final_loss')}): "
            "it cannot be the reference; check the model, data and learning rate")


def aa_summary(comparison) -> dict:
    ratio = comparison.ratio()
    return {**ratio, "noise_floor": stats.noise_floor(ratio)}


def stage_result(session, stage: Stage, position: int, cfg, applied: list[str], comparison, against: dict,
                 state, why: str, started: float) -> dict:
    """Judge one stage from its paired comparison with the configuration it would join."""
    measurement = measured(comparison, started)
    probe = len(comparison.b_rounds) == 1 and cfg.rounds == 1
    if not measurement.measured:
        return _not_measured(session, stage.name, position, cfg, applied, why, measurement, stage.kind, probe=probe)
    floor, min_effect = state.floor, session.base_cfg.min_effect
    speedups = {"speedup_vs_previous": {**paired_speedup(comparison, min_effect, floor), "against": against["stage"]},
                "speedup_vs_baseline": _unpaired_vs_baseline(measurement.metrics, state.baseline.doc if state.baseline else None)}
    # The trace first: on a CPU it settles which peak-memory figure a memory stage is judged on.
    reading = read_trace(session, stage.name, cfg, measurement)
    status, reason, marks = _status(judged_metrics(measurement, reading, **speedups), stage.kind, against)
    prediction = _prediction(stage.name, speedups["speedup_vs_previous"], against)
    verdict = Verdict(status, reason, stage.kind, speedups, _scaling(measurement, session),
                      {"probe": probe, **marks, "prediction": prediction})
    return assemble(session, stage.name, position, cfg, applied, why, measurement, reading, verdict)


def _unpaired_vs_baseline(metrics: Mapping, baseline: dict | None) -> dict:
    """Against the baseline measured minutes earlier: indicative only (the headline is paired)."""
    rates = (baseline or {}).get("metrics", {}).get("round_throughputs")
    if not rates:
        return SAME
    ratio = stats.welch_rates(metrics["round_throughputs"], rates)
    return {**ratio, "verdict": stats.judged_verdict(ratio, 0.0), "paired": False}


def check_entry(name: str, comparison, min_effect: float, floor: float) -> dict:
    """A second-look or leave-one-out comparison, as one entry of verdicts.json."""
    if comparison.failure is not None:
        return {"stage": name, "verdict": "failed", "text": f"failed: {comparison.failure.get('error')}"}
    ratio = paired_speedup(comparison, min_effect, floor)
    return {"stage": name, **ratio, "text": verdict_text(ratio, "the configuration without it")}


def final_result(session, state, comparison, started: float) -> dict:
    """The final configuration, measured against the baseline in the same time window."""
    measurement, why = measured(comparison, started), "the headline"
    if not measurement.measured:
        return _not_measured(session, FINAL_STAGE, FINAL_INDEX, state.cfg, state.applied, why, measurement, "final")
    ratio = {**paired_speedup(comparison, 0.0, state.floor), "against": "baseline", "paired": True}
    reason = f"{' + '.join(state.applied)}: {verdict_text(ratio, 'baseline')} (paired, same time window)"
    verdict = Verdict("final", reason, "final", {"speedup_vs_baseline": ratio, "speedup_vs_previous": ratio},
                      _scaling(measurement, session))
    reading = read_trace(session, FINAL_STAGE, state.cfg, measurement)
    return assemble(session, FINAL_STAGE, FINAL_INDEX, state.cfg, state.applied, why, measurement, reading, verdict)


def _scaling(measurement: Measurement, session) -> dict | None:
    """Multi-process runs: efficiency against the one-process baseline, and time in collectives."""
    single = session.single_process
    if session.nproc == 1 or not single or not single.get("throughput"):
        return None
    metrics = measurement.metrics
    one = single["throughput"]["median"]
    scaling = {"world_size": session.nproc, "one_process_baseline_throughput": one,
               "efficiency": metrics["throughput"]["median"] / (session.nproc * one),
               "speedup_vs_one_process_baseline": stats.speedup(
                   metrics["step_times_s"], metrics["samples_per_step"], single["step_times_s"], single["samples_per_step"])}
    if measurement.trace_file:
        from workbench.trace import comm

        try:
            ranks = comm.per_rank(Path(measurement.trace_file).parent)
            scaling["communication_per_rank"] = ranks
            scaling["communication_share"] = max((r["share"] for r in ranks), default=None)
        except Exception as error:  # the scaling figure stands without the trace's view of it
            scaling["communication_error"] = f"{type(error).__name__}: {error}"
    return scaling
