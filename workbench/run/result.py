"""A stage result, typed: what was measured, what its trace says, and the verdict, each built once.

A result is assembled in exactly one place (`assemble`) from three parts that nothing changes after
they are built:
- Measurement: what one configuration measured, pooled over its rounds (workbench/run/rounds.py),
  or why it did not measure;
- TraceReading: what the stage's trace says (workbench/run/reading.py);
- Verdict: what judging (workbench/run/judge.py) adds beside them: status, reason, the speedups,
  the multi-process scaling and the marks the ladder reads back (probe, training_broke, prediction).
The assembled dict is the stage result of workbench/results.py (JSON Schema:
workbench/schema/stage_result.v2.json); the measured figures in it are the Measurement's own, with
the TraceReading's headline memory and the Verdict's speedups added beside them.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Protocol

from workbench.launch import SideReport
from workbench.results import SCHEMA_VERSION
from workbench.run.reading import TraceReading
from workbench.run.rounds import Comparison, pooled

EMPTY: Mapping[str, Any] = MappingProxyType({})


class RunFacts(Protocol):
    """What a stage result needs from its run, and all judging reads of it (a Session is one)."""

    run_dir: Path
    mode: str
    decisions: Mapping[str, Any]
    data_description: str
    environment: Mapping[str, Any]
    base_cfg: Any                           # the RunConfig every stage builds on
    nproc: int
    single_process: Mapping[str, Any] | None  # the one-process baseline a multi-process run scales against
    nnodes: int                             # nodes in the run (1 unless --nnodes)
    single_node: Mapping[str, Any] | None     # the one-node baseline a multi-node run scales against


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


def assemble(session: RunFacts, stage: str, position: int, cfg, applied: list[str], why: str, measurement: Measurement,
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
