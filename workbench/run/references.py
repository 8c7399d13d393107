"""A multi-process run's references, measured before the ladder: the baseline in one process, and on
several nodes also in one node (nproc processes, on node 0 alone), so each stage's scaling efficiency
is read against both (run/stage_results.scaling). Each is one configuration measured alone, never a
pair: a reference, not a verdict. The other nodes wait meanwhile: no round is announced to them."""
from __future__ import annotations

from dataclasses import replace

from workbench.launch.nodes import Nodes
from workbench.run.rounds import Side, measure_alone
from workbench.run.session import Session, write_run_file


def measure_references(session: Session) -> Session:
    """The session holding the references it needs (a session is read-only once built). A resumed run
    measures them again: run.json records them but a session is not rebuilt from it, so stages kept
    from the earlier run keep the efficiency they were given against the earlier references."""
    if session.nproc == 1 and not session.nodes.multi:
        return session
    alone = replace(session, link=None, nodes=Nodes())  # this node (node 0) by itself
    if not session.single_process:
        session = replace(session, single_process=baseline_alone(replace(alone, nproc=1), "one process"))
    if session.nodes.multi and not session.single_node:
        one_node = session.single_process if session.nproc == 1 else baseline_alone(alone, f"{session.nproc} processes")
        session = replace(session, single_node=one_node)
    write_run_file(session)
    return session


def baseline_alone(session: Session, what: str) -> dict:
    """The baseline measured once, on this node alone, without a trace: its throughput and steps."""
    session.log(f"== scaling reference: the baseline in {what}, alone on this node, untraced")
    report = measure_alone(session, Side(session.base_cfg.with_overrides(trace=False), "baseline"))
    metrics = report.metrics or {}
    return {"throughput": metrics.get("throughput"), "step_times_s": metrics.get("step_times_s"),
            "samples_per_step": metrics.get("samples_per_step"), "world_size": metrics.get("world_size", 1),
            "error": report.error}
