"""A stage's result, built once: its measurement pooled over the rounds, what its trace says, the
judge's verdict (pure: workbench/run/judge.py), assembled into the document that is written.

The I/O of judging lives here, not in the judge: reading the trace (run/reading.py) and the
communication per rank of a multi-process run (trace/comm.py).
"""
from __future__ import annotations

from pathlib import Path

from workbench import stats
from workbench.run import judge
from workbench.run.reading import read_trace
from workbench.run.result import Measurement, RunFacts, Verdict, assemble, judged_metrics, measured
from workbench.run.rounds import Comparison
from workbench.memory_model import Basis
from workbench.run.stages import MEMORY, REFERENCE, Stage
from workbench.trace import comm

FINAL_STAGE = "final"
# The headline's position: after every stage (runs in the old layout named its file 99-final.json).
FINAL_INDEX = 99


def skipped(facts: RunFacts, stage: Stage, position: int, cfg, reason: str, why: str) -> dict:
    verdict = Verdict("skipped", reason, stage.kind)
    return assemble(facts, stage.name, position, cfg, [], why, Measurement("skipped", error=reason), None, verdict)


def _not_measured(facts: RunFacts, name: str, position: int, cfg, applied: list[str], why: str,
                  measurement: Measurement, kind: str | None, **marks) -> dict:
    """A side that did not measure: its own reason, or that of the configuration it was compared with."""
    verdict = Verdict(measurement.status, measurement.failure_reason(), kind, marks=marks)
    return assemble(facts, name, position, cfg, applied, why, measurement, None, verdict)


def reference(facts: RunFacts, comparison: Comparison, started: float) -> dict:
    """The baseline: the second side of the A/A comparison, pooled over its rounds."""
    cfg, measurement = facts.base_cfg, measured(comparison, started)
    if not measurement.measured:
        return _not_measured(facts, "baseline", 0, cfg, [], "the reference", measurement, None)
    reading = read_trace(facts, "baseline", cfg, measurement)
    status, reason = judge.reference_status(measurement.metrics)
    verdict = Verdict(status, reason, REFERENCE, {"speedup_vs_baseline": judge.SAME, "speedup_vs_previous": None},
                      scaling(measurement, facts))
    return assemble(facts, "baseline", 0, cfg, [], "the reference", measurement, reading, verdict)


def stage(facts: RunFacts, stage: Stage, position: int, cfg, applied: list[str], comparison: Comparison,
          against: dict, state, why: str, started: float) -> dict:
    """One stage from its paired comparison with the configuration it would join (against)."""
    measurement = measured(comparison, started)
    probe = len(comparison.b_rounds) == 1 and cfg.rounds == 1
    if not measurement.measured:
        return _not_measured(facts, stage.name, position, cfg, applied, why, measurement, stage.kind, probe=probe)
    floor, min_effect = state.floor, facts.base_cfg.min_effect
    baseline = state.baseline.doc if state.baseline else None
    vs_previous = {**judge.paired_speedup(comparison, min_effect, floor), "against": against["stage"]}
    speedups = {"speedup_vs_previous": vs_previous,
                "speedup_vs_baseline": judge.vs_baseline(stage.name, vs_previous, against, measurement.metrics, baseline)}
    # The trace first: on a CPU it settles which peak-memory figure a memory stage is judged on.
    reading = read_trace(facts, stage.name, cfg, measurement)
    status, reason, marks = judge.status(judged_metrics(measurement, reading, **speedups), stage.kind, against)
    prediction = judge.prediction(stage.name, speedups["speedup_vs_previous"], against)
    memory = memory_prediction(against, cfg, judged_metrics(measurement, reading), facts) if stage.kind == MEMORY else None
    verdict = Verdict(status, reason, stage.kind, speedups, scaling(measurement, facts),
                      {"probe": probe, **marks, "prediction": prediction,
                       **({"changes": stage.changes} if stage.changes else {}),
                       **({"memory_prediction": memory} if memory else {})})
    return assemble(facts, stage.name, position, cfg, applied, why, measurement, reading, verdict)


def memory_prediction(against: dict, cfg, metrics: dict, facts) -> dict | None:
    """A memory stage's saving as predicted from the breakdown of the configuration it builds on
    (workbench/memory_model.py), beside the saving measured: the report shows both."""
    basis = Basis.of(against)
    if basis is None:
        return None
    predicted = basis.predict(cfg.to_dict(), getattr(facts.context, "world_size", 1))
    peak = metrics.get("peak_memory_mb")
    measured = basis.peak_mib - peak if peak is not None else None
    return {"builds_on": against.get("stage"), "predicted_peak_mib": predicted.peak_mib,
            "predicted_saving_mib": predicted.saving_mib, "measured_saving_mib": measured,
            "prediction_error": (predicted.saving_mib / measured - 1) if measured else None, "basis": predicted.basis}


def final(facts: RunFacts, state, comparison: Comparison, started: float) -> dict:
    """The final configuration, measured against the baseline in the same time window."""
    measurement, why = measured(comparison, started), "the headline"
    if not measurement.measured:
        return _not_measured(facts, FINAL_STAGE, FINAL_INDEX, state.cfg, state.applied, why, measurement, "final")
    ratio = {**judge.paired_speedup(comparison, 0.0, state.floor), "against": "baseline", "paired": True}
    verdict = Verdict("final", judge.headline_reason(state.applied, ratio), "final",
                      {"speedup_vs_baseline": ratio, "speedup_vs_previous": ratio}, scaling(measurement, facts))
    reading = read_trace(facts, FINAL_STAGE, state.cfg, measurement)
    return assemble(facts, FINAL_STAGE, FINAL_INDEX, state.cfg, state.applied, why, measurement, reading, verdict)


def scaling(measurement: Measurement, facts: RunFacts) -> dict | None:
    """Multi-process runs: efficiency against the one-process baseline (and, on several nodes, against
    one node's), and time in collectives."""
    single = facts.single_process
    nnodes = getattr(facts, "nnodes", 1)  # a RunFacts without nodes is one node
    world = facts.nproc * nnodes
    if world == 1 or not single or not single.get("throughput"):
        return None
    metrics = measurement.metrics
    one = single["throughput"]["median"]
    figures = {"world_size": world, "one_process_baseline_throughput": one,
               "efficiency": metrics["throughput"]["median"] / (world * one),
               "speedup_vs_one_process_baseline": stats.speedup(
                   metrics["step_times_s"], metrics["samples_per_step"], single["step_times_s"], single["samples_per_step"]),
               **_across_nodes(metrics, nnodes, facts.nproc, getattr(facts, "single_node", None))}
    if measurement.trace_file:
        try:
            ranks = comm.per_rank(Path(measurement.trace_file).parent)
            figures["communication_per_rank"] = ranks
            figures["communication_share"] = max((r["share"] for r in ranks), default=None)
        except Exception as error:  # the scaling figure stands without the trace's view of it
            figures["communication_error"] = f"{type(error).__name__}: {error}"
    return figures


def _across_nodes(metrics: dict, nnodes: int, nproc: int, one_node: dict | None) -> dict:
    """Several nodes: efficiency against nnodes x one node's baseline (nproc processes on node 0 alone)."""
    if nnodes == 1:
        return {}
    figures = {"nnodes": nnodes, "nproc_per_node": nproc}
    if one_node and one_node.get("throughput"):
        node = one_node["throughput"]["median"]
        figures.update(one_node_baseline_throughput=node,
                       efficiency_vs_one_node=metrics["throughput"]["median"] / (nnodes * node))
    return figures
