"""Judging a measured stage: speedups with intervals, kept or rejected, and what the trace says."""
from __future__ import annotations

import math
import time
from pathlib import Path

from workbench import stats
from workbench.run import rounds as paired_rounds
from workbench.results import SCHEMA_VERSION, breakdown_path, trace_summary_path
from workbench.run.stages import MEMORY, REFERENCE, Stage


def fmt(ratio: dict) -> str:
    high = ratio["ci95_high"]
    return f"{ratio['ratio']:.2f}x [{ratio['ci95_low']:.2f}, {high:.2f}]" if math.isfinite(high) else f"{ratio['ratio']:.2f}x"


_fmt = fmt

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


def _speed_verdict(result: dict, previous: dict) -> tuple[str, str]:
    metrics = result["metrics"]
    if not metrics["loss_finite"]:
        result["training_broke"] = True
        return "rejected", "the loss became non-finite: training broke"
    before = previous["metrics"]["final_loss"]
    same_steps = metrics.get("trained_steps") == previous["metrics"].get("trained_steps")
    if same_steps and before > 0 and metrics["final_loss"] > LOSS_DEGRADATION_MAX * before:
        result["training_broke"] = True
        return "rejected", (f"final loss {metrics['final_loss']:.3f} vs {before:.3f} for {previous['stage']} "
                            f"(over {LOSS_DEGRADATION_MAX:.2f}x): training got worse, not carried forward")
    vs_prev = metrics["speedup_vs_previous"]
    text = verdict_text(vs_prev, previous["stage"])
    if vs_prev["verdict"] == "faster":
        return "kept", f"{text} (whole interval above {1 + vs_prev['min_effect']:.2f}x), kept"
    if vs_prev["verdict"] == "slower":
        return "rejected", f"{text}, not carried forward"
    return "rejected", f"{text}, not carried forward (a stage is kept only on a clear gain)"


def _memory_verdict(result: dict, previous: dict) -> tuple[str, str]:
    metrics, before = result["metrics"], previous["metrics"]
    change = metrics["peak_memory_mb"] / before["peak_memory_mb"] - 1 if before["peak_memory_mb"] else 0.0
    return "tradeoff", (f"peak memory {metrics['peak_memory_mb']:.0f} MiB vs {before['peak_memory_mb']:.0f} MiB "
                        f"({change:+.0%}), speed {_fmt(metrics['speedup_vs_previous'])} vs {previous['stage']}; "
                        "a memory/speed trade-off, not carried forward")


def _status(result: dict, kind: str, previous: dict) -> tuple[str, str]:
    if kind == REFERENCE:
        return "baseline", "the reference every stage is compared with"
    if kind == MEMORY:
        return _memory_verdict(result, previous)
    return _speed_verdict(result, previous)


def _analyze_trace(result: dict, session) -> None:
    """Per-step breakdown, summary and findings from the stage's trace (analysis never fails a stage)."""
    if not result.get("trace_file"):
        return
    from workbench.trace import analyze, diagnose

    trace_dir = Path(result["trace_file"]).parent
    csv_path, summary_path = breakdown_path(session.run_dir, result["stage"]), trace_summary_path(session.run_dir, result["stage"])
    try:
        summary = analyze.write_analysis(result["trace_file"], csv_path, summary_path)  # rank 0 under DDP
        _use_tensor_peak(result, summary, session)
        findings = diagnose.diagnose(summary, _context(result, session))
    except Exception as error:  # a malformed trace must not lose the measurement
        result["trace"] = {"dir": str(trace_dir), "analysis_error": f"{type(error).__name__}: {error}"}
        return
    result["trace"] = {"dir": str(trace_dir), "file": result["trace_file"], "size_mb": result.get("trace_size_mb"),
                       "breakdown_csv": str(csv_path), "summary_json": str(summary_path)}
    result["findings"] = findings


def _use_tensor_peak(result: dict, summary: dict, session) -> None:
    """On a CPU, make the headline peak the tensors' own: weights and optimizer state (measured from
    the tensors) plus the peak of allocations inside a profiled step (the profiler's memory events:
    activations, gradients, temporaries). Resident memory cannot show a memory stage's saving, since
    the C allocator keeps and reuses freed pages; it stays in `peak_memory` for reference."""
    step_peak = (summary.get("peak_memory_mb") or {}).get("cpu")
    metrics = result["metrics"]
    if session.environment.get("device_type") != "cpu" or step_peak is None:
        return
    parts = metrics["memory_breakdown_mb"]
    resident = parts["weights"] + parts["optimizer_state"]
    metrics["peak_memory"]["tensor_peak_mb"] = headline = resident + step_peak
    metrics["peak_memory_mb"] = headline
    metrics["peak_memory_kind"] = ("CPU tensor memory: weights + optimizer state (from the tensors) + peak "
                                   "allocations within a training step (profiler memory events)")
    parts["activations_and_other"] = max(0.0, headline - sum(v for k, v in parts.items() if k != "activations_and_other"))


def _context(result: dict, session) -> dict:
    cfg, metrics = result["config"], result["metrics"]
    env, caps = session.environment, session.context.capabilities
    return {"device_type": env["device_type"], "pin_memory": cfg["pin_memory"], "num_workers": cfg["num_workers"],
            "precision": cfg["precision"], "cpu_native_bf16": caps.native_bf16_cpu, "tensor_cores": caps.tensor_cores,
            "device_capacity_mb": env.get("device_memory_mb"), "peak_memory_mb": metrics["peak_memory_mb"],
            "compile": cfg["compile"], "fused_optimizer": cfg.get("fused_optimizer", False), "step_time_s": metrics["step_time_s"]["median"]}


def _prediction(result: dict, previous: dict | None) -> dict | None:
    """Did the finding before this stage predict what the stage then did?"""
    if previous is None or result["stage"] == "baseline" or not result.get("metrics"):
        return None
    from workbench.trace import diagnose

    predicted = result["stage"] in diagnose.predicts(previous.get("findings", []))
    helped = result["metrics"]["speedup_vs_previous"]["verdict"] == "faster"
    return {"predicted_to_help": predicted, "helped": helped, "agrees": predicted == helped}


def envelope(session, stage: str, position: int, cfg, applied: list[str], raw: dict, why: str = "") -> dict:
    """A stage result in the schema of workbench/results.py, built in one place."""
    return {"schema": SCHEMA_VERSION, "run": session.run_dir.name, "stage": stage, "index": position,
            "mode": session.mode, "status": raw.get("status", "failed"), "reason": raw.get("error") or "",
            "applied": applied, "config": cfg.to_dict(), "decisions": {**session.decisions, **raw.get("notes", {})},
            "data": raw.get("data", session.data_description), "environment": session.environment,
            "metrics": raw.get("metrics"), "trace": None, "trace_file": raw.get("trace_file"),
            "trace_size_mb": raw.get("trace_size_mb"), "findings": [], "error": raw.get("error"),
            "why_now": why, "rounds": None}


def skipped(session, stage: Stage, position: int, cfg, reason: str, why: str) -> dict:
    result = envelope(session, stage.name, position, cfg, [], {"status": "skipped", "error": reason}, why)
    result["reason"], result["kind"] = reason, stage.kind
    return result


def _from_comparison(session, name: str, position: int, cfg, applied: list[str], comparison, why: str,
                     started: float) -> dict:
    """The b side's result, pooled over its rounds; a failed side's reason when it did not measure."""
    if comparison.failure is not None:
        raw = comparison.failure
        result = envelope(session, name, position, cfg, applied, raw, why)
        if comparison.failed_side == "a":
            result["reason"] = f"the configuration it is compared with failed this time: {raw.get('error')}"
        else:
            result["reason"] = raw.get("error") or raw.get("status", "failed")
        return result
    result = envelope(session, name, position, cfg, applied, paired_rounds.pooled(comparison.b_rounds), why)
    result["rounds"] = {"count": len(comparison.b_rounds), "a": comparison.rates("a"), "b": comparison.rates("b")}
    result["wall_s"] = time.perf_counter() - started
    return result


def reference_result(session, comparison, started: float) -> dict:
    """The baseline: the second side of the A/A comparison, pooled over its rounds."""
    result = _from_comparison(session, "baseline", 0, session.base_cfg, [], comparison, "the reference", started)
    if result["status"] != "measured":
        return result
    metrics = result["metrics"]
    metrics["speedup_vs_baseline"], metrics["speedup_vs_previous"] = SAME, None
    _analyze_trace(result, session)
    result["status"], result["reason"] = "baseline", "the reference every stage is compared with"
    result["kind"] = REFERENCE
    _add_scaling(result, session)
    refuse_nonfinite_baseline(result)
    return result


def refuse_nonfinite_baseline(result: dict) -> None:
    """A NaN or infinite baseline loss is no reference: every comparison with it would mislead."""
    metrics = result.get("metrics") or {}
    if result["status"] == "baseline" and metrics.get("loss_finite") is False:
        result["status"] = "failed"
        result["reason"] = (f"the baseline's training loss is not finite (final loss {metrics.get('final_loss')}): "
                            "it cannot be the reference; check the model, data and learning rate")


def aa_summary(comparison) -> dict:
    ratio = comparison.ratio()
    return {**ratio, "noise_floor": stats.noise_floor(ratio)}


def stage_result(session, stage: Stage, position: int, cfg, applied: list[str], comparison, against: dict,
                 state, why: str, started: float) -> dict:
    """Judge one stage from its paired comparison with the configuration it would join."""
    result = _from_comparison(session, stage.name, position, cfg, applied, comparison, why, started)
    result["kind"], result["probe"] = stage.kind, len(comparison.b_rounds) == 1 and cfg.rounds == 1
    if result["status"] != "measured":
        result["reason"] = result["reason"] or result["status"]
        return result
    metrics = result["metrics"]
    floor, min_effect = state.floor, session.base_cfg.min_effect
    metrics["speedup_vs_previous"] = {**paired_speedup(comparison, min_effect, floor), "against": against["stage"]}
    metrics["speedup_vs_baseline"] = _unpaired_vs_baseline(metrics, state.baseline)
    _analyze_trace(result, session)  # first: on a CPU it settles which peak-memory figure is the headline
    result["status"], result["reason"] = _status(result, stage.kind, against)
    _add_scaling(result, session)
    result["prediction"] = _prediction(result, against)
    return result


def _unpaired_vs_baseline(metrics: dict, baseline: dict | None) -> dict:
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
    result = _from_comparison(session, "final", 99, state.cfg, state.applied, comparison, "the headline", started)
    result["kind"] = "final"
    if result["status"] != "measured":
        return result
    metrics = result["metrics"]
    ratio = paired_speedup(comparison, 0.0, state.floor)
    metrics["speedup_vs_baseline"] = metrics["speedup_vs_previous"] = {**ratio, "against": "baseline", "paired": True}
    _analyze_trace(result, session)
    result["status"] = "final"
    result["reason"] = f"{' + '.join(state.applied)}: {verdict_text(ratio, 'baseline')} (paired, same time window)"
    _add_scaling(result, session)
    return result


def _add_scaling(result: dict, session) -> None:
    """Multi-process runs: efficiency against the one-process baseline, and time in collectives."""
    single = session.single_process
    if session.nproc == 1 or not single or not single.get("throughput"):
        return
    metrics = result["metrics"]
    one = single["throughput"]["median"]
    scaling = {"world_size": session.nproc, "one_process_baseline_throughput": one,
               "efficiency": metrics["throughput"]["median"] / (session.nproc * one),
               "speedup_vs_one_process_baseline": stats.speedup(
                   metrics["step_times_s"], metrics["samples_per_step"], single["step_times_s"], single["samples_per_step"])}
    if result.get("trace_file"):
        from workbench.trace import comm

        try:
            ranks = comm.per_rank(Path(result["trace_file"]).parent)
            scaling["communication_per_rank"] = ranks
            scaling["communication_share"] = max((r["share"] for r in ranks), default=None)
        except Exception as error:  # the scaling figure stands without the trace's view of it
            scaling["communication_error"] = f"{type(error).__name__}: {error}"
    metrics["scaling"] = scaling


def one_line(result: dict) -> str:
    """The console line for a finished stage."""
    metrics = result.get("metrics")
    if not metrics:
        return f"-- {result['stage']}: {result['status']}: {result['reason']}"
    tp = metrics["throughput"]
    mfu = f", MFU {metrics['mfu']:.1%}" if metrics.get("mfu") else ""
    return (f"-- {result['stage']}: {result['status']}: {tp['median']:.1f} samples/s "
            f"[{tp['ci95_low']:.1f}, {tp['ci95_high']:.1f}], step {metrics['step_time_s']['median'] * 1000:.1f} ms, "
            f"peak {metrics['peak_memory_mb']:.0f} MiB{mfu}, loss {metrics['final_loss']:.3f}{_accuracy(metrics)}; "
            f"{result['reason']}")


def _accuracy(metrics: dict) -> str:
    value = metrics.get("eval_accuracy")
    return f", held-out accuracy {value:.1%}" if value is not None else ""
