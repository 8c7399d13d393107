"""A multi-node run's references, measured on node 0 alone before the ladder: the baseline in one
process and in one node (nproc processes), so each stage's scaling efficiency is read against both
(run/stage_results.scaling). The other nodes wait meanwhile: no round is announced to them."""
from __future__ import annotations

from dataclasses import replace

from workbench.launch.nodes import Nodes
from workbench.run.rounds import Side, measure_alone
from workbench.run.session import Session, write_run_file


def measure_references(session: Session) -> Session:
    """The session holding both references (the ladder's own one-process baseline is then skipped)."""
    if not session.nodes.multi:
        return session
    alone = replace(session, link=None, nodes=Nodes())  # node 0 by itself
    if not session.single_process:
        session = replace(session, single_process=baseline_alone(replace(alone, nproc=1), "one process"))
    if not session.single_node:
        one_node = session.single_process if session.nproc == 1 else baseline_alone(alone, f"{session.nproc} processes")
        session = replace(session, single_node=one_node)
    write_run_file(session)
    return session


def baseline_alone(session: Session, what: str) -> dict:
    """The baseline measured once, on this node alone, without a trace: its throughput and steps."""
    session.log(f"== scaling reference: the baseline in {what} on node 0 alone")
    report = measure_alone(session, Side(session.base_cfg.with_overrides(trace=False), "baseline"))
    metrics = report.metrics or {}
    return {"throughput": metrics.get("throughput"), "step_times_s": metrics.get("step_times_s"),
            "samples_per_step": metrics.get("samples_per_step"), "world_size": metrics.get("world_size", 1),
            "error": report.error}
