"""What a stage's trace says: its breakdown and summary files, its findings, and on a CPU the headline
peak memory taken from the tensors instead of resident memory. Read once per stage, beside judging."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from workbench.config import is_token_workload
from workbench.results import breakdown_path, trace_summary_path
from workbench.trace import analyze, diagnose

EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return EMPTY


@dataclass(frozen=True)
class TraceReading:
    """The trace's view of a stage: where its files are, its findings, and the headline memory it
    settles (empty where the measured headline stands)."""

    trace: Mapping[str, Any]
    findings: tuple = ()
    memory: Mapping[str, Any] = field(default_factory=_empty)


def read_trace(session, stage: str, cfg, measurement) -> TraceReading | None:
    """Per-step breakdown, summary and findings from the stage's trace; None without a trace.
    Analysis never fails a stage: a malformed trace is recorded as an analysis error."""
    if not measurement.trace_file:
        return None
    trace_dir = Path(measurement.trace_file).parent
    csv_path, summary_path = breakdown_path(session.run_dir, stage), trace_summary_path(session.run_dir, stage)
    try:
        summary = analyze.write_analysis(measurement.trace_file, csv_path, summary_path)  # rank 0 under DDP
        memory = tensor_peak(measurement.metrics, summary, session.environment.get("device_type"))
        findings = diagnose.diagnose(summary, diagnosis_context(cfg, {**measurement.metrics, **memory}, session))
    except Exception as error:  # a malformed trace must not lose the measurement
        return TraceReading({"dir": str(trace_dir), "analysis_error": f"{type(error).__name__}: {error}"})
    trace = {"dir": str(trace_dir), "file": measurement.trace_file, "size_mb": measurement.trace_size_mb,
             "breakdown_csv": str(csv_path), "summary_json": str(summary_path)}
    return TraceReading(trace, tuple(findings), MappingProxyType(memory))


def tensor_peak(metrics: Mapping, summary: dict, device_type: str | None) -> dict:
    """On a CPU, the headline peak is the tensors' own: weights and optimizer state (measured from
    the tensors) plus the peak of allocations inside a profiled step (the profiler's memory events:
    activations, gradients, temporaries). Resident memory cannot show a memory stage's saving, since
    the C allocator keeps and reuses freed pages; it stays in `peak_memory` for reference."""
    step_peak = (summary.get("peak_memory_mb") or {}).get("cpu")
    if device_type != "cpu" or step_peak is None:
        return {}
    parts = dict(metrics["memory_breakdown_mb"])
    headline = parts["weights"] + parts["optimizer_state"] + step_peak
    parts["activations_and_other"] = max(0.0, headline - sum(v for k, v in parts.items() if k != "activations_and_other"))
    return {"peak_memory_mb": headline, "memory_breakdown_mb": parts,
            "peak_memory": {**(metrics.get("peak_memory") or {}), "tensor_peak_mb": headline},
            "peak_memory_kind": ("CPU tensor memory: weights + optimizer state (from the tensors) + peak "
                                 "allocations within a training step (profiler memory events)")}


def diagnosis_context(cfg, metrics: Mapping, session) -> dict:
    """What the diagnosis rules need besides the trace: the configuration, the machine, the figures."""
    env, caps = session.environment, session.context.capabilities
    return {"device_type": env["device_type"], "pin_memory": cfg.pin_memory, "num_workers": cfg.num_workers,
            "precision": cfg.precision, "cpu_native_bf16": caps.native_bf16_cpu, "tensor_cores": caps.tensor_cores,
            "device_capacity_mb": env.get("device_memory_mb"), "peak_memory_mb": metrics["peak_memory_mb"],
            "compile": cfg.compile, "fused_optimizer": cfg.fused_optimizer,
            "step_time_s": metrics["step_time_s"]["median"], "host_allocator": cfg.host_allocator,
            "host_cpu": metrics.get("host_cpu"), **_model_context(cfg, session.context.model_facts)}


def _model_context(cfg, facts: Mapping) -> dict:
    """What the model's first batch showed, for the attention and logits rules."""
    context = {"attention": facts["attention"]} if facts.get("attention") else {}
    if facts.get("vocab") and is_token_workload(cfg):
        context["logits"] = {"batch": cfg.effective_micro_batch, "seq_len": cfg.seq_len, "vocab": facts["vocab"]}
    return context


