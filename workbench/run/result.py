"""A stage result, typed: what was measured, what its trace says, and the verdict, each built once.

A result is assembled in exactly one place (`assemble`) from three parts that nothing changes after
they are built:
- Measurement: what one configuration measured, pooled over its rounds (workbench/run/rounds.py),
  or why it did not measure;
- TraceReading: what the stage's trace says (breakdown and summary files, findings) and, on a CPU,
  the headline peak memory taken from the tensors instead of resident memory;
- Verdict: what judging (workbench/run/judge.py) adds beside them: status, reason, the speedups,
  the multi-process scaling and the marks the ladder reads back (probe, training_broke, prediction).
The assembled dict is the stage result of workbench/results.py (JSON Schema:
workbench/schema/stage_result.v1.json); the measured figures in it are the Measurement's own, with
the TraceReading's headline memory and the Verdict's speedups added beside them.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from workbench.launch import SideReport
from workbench.results import SCHEMA_VERSION, breakdown_path, trace_summary_path
from workbench.run.rounds import Comparison, pooled

EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return EMPTY


@dataclass(frozen=True)
class Measurement:
    """One configuration's measurement (read-only); status is "measured" or why it is not."""

    status: str
    metrics: Mapping[str, Any] | None = None
    error: str | None = None
    data: str | None = None
    notes: Mapping[str, Any] = field(default_factory=_empty)
    trace_file: str | None = None
    trace_size_mb: float | None = None
    rounds: Mapping[str, Any] | None = None       # {"count", "a": [rate], "b": [rate]}
    wall_s: float | None = None
    failed_side: str | None = None                # "a": the configuration it was compared with failed

    @classmethod
    def from_report(cls, report: SideReport, **extra: Any) -> "Measurement":
        """From the child's report of a side (a copy: the rounds stay as measured)."""
        metrics = report.metrics
        return cls(report.status, MappingProxyType(copy.deepcopy(dict(metrics))) if metrics else None,
                   report.error, report.data, MappingProxyType(dict(report.notes or {})),
                   report.trace_file, report.trace_size_mb, **extra)

    @property
    def measured(self) -> bool:
        return self.status == "measured"

    def failure_reason(self) -> str:
        if self.failed_side == "a":
            return f"the configuration it is compared with failed this time: {self.error}"
        return self.error or self.status


def measured(comparison: Comparison, started: float) -> Measurement:
    """The candidate's side of a paired comparison, pooled over its rounds, or the failed side's reason."""
    if comparison.failure is not None:
        return Measurement.from_report(comparison.failure, failed_side=comparison.failed_side)
    rounds = {"count": len(comparison.b_rounds), "a": comparison.rates("a"), "b": comparison.rates("b")}
    return Measurement.from_report(pooled(comparison.b_rounds), rounds=MappingProxyType(rounds),
                                   wall_s=time.perf_counter() - started)


@dataclass(frozen=True)
class TraceReading:
    """The trace's view of a stage: where its files are, its findings, and the headline memory it
    settles (empty where the measured headline stands)."""

    trace: Mapping[str, Any]
    findings: tuple = ()
    memory: Mapping[str, Any] = field(default_factory=_empty)


def read_trace(session, stage: str, cfg, measurement: Measurement) -> TraceReading | None:
    """Per-step breakdown, summary and findings from the stage's trace; None without a trace.
    Analysis never fails a stage: a malformed trace is recorded as an analysis error."""
    if not measurement.trace_file:
        return None
    from workbench.trace import analyze, diagnose

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
            "step_time_s": metrics["step_time_s"]["median"]}


@dataclass(frozen=True)
class Verdict:
    """What judging adds beside a measurement."""

    status: str
    reason: str
    kind: str | None = None
    speedups: Mapping[str, Any] = field(default_factory=_empty)  # speedup_vs_baseline/_previous: in metrics
    scaling: Mapping[str, Any] | None = None                      # multi-process runs: in metrics
    marks: Mapping[str, Any] = field(default_factory=_empty)     # probe, training_broke, prediction


def judged_metrics(measurement: Measurement, reading: TraceReading | None, **added: Any) -> dict:
    """The figures a verdict looks at: the measurement's, with the trace's headline memory."""
    return {**measurement.metrics, **(reading.memory if reading else {}), **added}


def assemble(session, stage: str, position: int, cfg, applied: list[str], why: str, measurement: Measurement,
             reading: TraceReading | None, verdict: Verdict) -> dict:
    """The stage result in the schema of workbench/results.py, built here and nowhere else."""
    result = {
        "schema": SCHEMA_VERSION, "run": session.run_dir.name, "stage": stage, "index": position,
        "mode": session.mode, "status": verdict.status, "reason": verdict.reason, "applied": list(applied),
        "config": cfg.to_dict(), "decisions": {**session.decisions, **measurement.notes},
        "data": measurement.data or session.data_description, "environment": session.environment,
        "metrics": _metrics(measurement, reading, verdict), "trace": dict(reading.trace) if reading else None,
        "trace_file": measurement.trace_file, "trace_size_mb": measurement.trace_size_mb,
        "findings": list(reading.findings) if reading else [], "error": measurement.error, "why_now": why,
        "rounds": _plain(measurement.rounds)}
    if verdict.kind is not None:
        result["kind"] = verdict.kind
    if measurement.wall_s is not None:
        result["wall_s"] = measurement.wall_s
    return {**result, **verdict.marks}


def _metrics(measurement: Measurement, reading: TraceReading | None, verdict: Verdict) -> dict | None:
    if measurement.metrics is None:
        return None
    metrics = copy.deepcopy(judged_metrics(measurement, reading, **verdict.speedups))
    if verdict.scaling is not None:
        metrics["scaling"] = _plain(verdict.scaling)
    return metrics


def _plain(mapping: Mapping | None) -> dict | None:
    return None if mapping is None else copy.deepcopy(dict(mapping))
