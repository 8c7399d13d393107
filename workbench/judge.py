"""Judging a measured stage: speedups with intervals, kept or rejected, and what the trace says."""
from __future__ import annotations

from pathlib import Path

from workbench import stats
from workbench.results import stage_stem
from workbench.stages import MEMORY, REFERENCE


def _ratio(result: dict, other: dict | None) -> dict | None:
    if not other or not other.get("metrics") or not result.get("metrics"):
        return None
    new, old = result["metrics"], other["metrics"]
    return stats.speedup(new["step_times_s"], new["samples_per_step"], old["step_times_s"], old["samples_per_step"])


# The baseline against itself: exactly 1, not a bootstrap of two resamples of the same steps.
SAME = {"ratio": 1.0, "ci95_low": 1.0, "ci95_high": 1.0, "verdict": "no significant change"}


def _fmt(ratio: dict) -> str:
    return f"{ratio['ratio']:.2f}x [{ratio['ci95_low']:.2f}, {ratio['ci95_high']:.2f}]"


# A speed stage whose final loss is this much above the configuration before it changed what is
# learned (same seed, same data, same steps), whatever it does to speed.
LOSS_DEGRADATION_MAX = 1.25


def _speed_verdict(result: dict, previous: dict) -> tuple[str, str]:
    metrics = result["metrics"]
    if not metrics["loss_finite"]:
        return "rejected", "the loss became non-finite: training broke"
    before = previous["metrics"]["final_loss"]
    same_steps = metrics.get("trained_steps") == previous["metrics"].get("trained_steps")
    if same_steps and before > 0 and metrics["final_loss"] > LOSS_DEGRADATION_MAX * before:
        return "rejected", (f"final loss {metrics['final_loss']:.3f} vs {before:.3f} for {previous['stage']} "
                            f"(over {LOSS_DEGRADATION_MAX:.2f}x): training got worse, not carried forward")
    vs_prev = metrics["speedup_vs_previous"]
    text = f"{_fmt(vs_prev)} vs {previous['stage']}"
    if vs_prev["verdict"] == "slower":
        return "rejected", f"{text}: significantly slower, not carried forward"
    if vs_prev["verdict"] == "faster":
        return "kept", f"{text}: faster"
    if vs_prev["ratio"] >= 1.0:
        return "kept", f"{text}: no significant change (does not hurt), kept"
    return "rejected", f"{text}: no significant change and no gain, not carried forward"


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
    from workbench import analyze, diagnose

    stem = stage_stem(result["index"], result["stage"])
    trace_dir = Path(result["trace_file"]).parent
    csv_path, summary_path = session.run_dir / "stages" / f"{stem}.breakdown.csv", session.run_dir / "stages" / f"{stem}.trace_summary.json"
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
    from workbench import diagnose

    predicted = result["stage"] in diagnose.predicts(previous.get("findings", []))
    helped = result["metrics"]["speedup_vs_previous"]["verdict"] == "faster"
    return {"predicted_to_help": predicted, "helped": helped, "agrees": predicted == helped}


def judge(result: dict, stage, state, session) -> None:
    """Fill in speedups, status, reason, trace analysis and the prediction check, in place."""
    if result["status"] != "measured":
        result["reason"] = result.get("error") or result["status"]
        return
    previous = state.result or result
    result["metrics"]["speedup_vs_baseline"] = _ratio(result, state.baseline) if state.baseline else SAME
    result["metrics"]["speedup_vs_previous"] = _ratio(result, previous) if stage.kind != REFERENCE else None
    if result["metrics"]["speedup_vs_previous"]:
        result["metrics"]["speedup_vs_previous"]["against"] = previous["stage"]
    _analyze_trace(result, session)  # first: on a CPU it settles which peak-memory figure is the headline
    result["status"], result["reason"] = _status(result, stage.kind, previous)
    _add_scaling(result, session)
    result["prediction"] = _prediction(result, state.result)


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
        from workbench import comm

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
