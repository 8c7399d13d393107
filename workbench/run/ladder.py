"""The ladder: stages tried one at a time, each compared in paired rounds, judged, saved as it finishes.

The flow of a run:
1. noise floor: the baseline against itself (an A/A comparison, the same paired design); its spread
   is the machine's, and its second side is the baseline's result;
2. the pass: the next stage is the one the current configuration's trace points at (or the default
   order where nothing does, or always with order=fixed); a speed stage is carried forward only when
   its whole interval lies above 1 + min_effect and its effect above the noise floor; memory stages
   are trade-offs, reported and not carried;
3. the second look (order=trace): each rejected speed stage is tried once more on the final
   configuration (effects interact: bf16 pays on a CPU only once the optimizer step is fused);
4. leave-one-out (order=trace): each kept stage is removed from the final configuration; one that no
   longer pays there is dropped;
5. the memory budget (--memory-budget): memory moves where the final configuration is
   over it, then the fastest measured configuration that fits becomes the final one;
6. the headline: the final configuration against the baseline, paired, in the same time window.
Every stage result is written atomically the moment it is judged, and verdicts.json holds the noise
floor, the order taken and why, both checks and the headline, so an interrupted run keeps what it did.
Each phase is a module of its own: first_pass (1, 2), second_look (3), leave_one_out (4), budget (5),
headline (6); comparing holds what they share (the state, paired comparisons, the one save).
"""
from __future__ import annotations

from workbench.run import budget, first_pass, headline, leave_one_out, references, second_look
from workbench.run.comparing import LadderState, Verdicts
from workbench.run.session import Session
from workbench.run.stages import REFERENCE, select


def run_ladder(session: Session, stage_names: str | None = None) -> list[dict]:
    """Noise floor, the pass, the second look, leave-one-out, the memory budget and the headline; every
    stage result (the documents as written)."""
    session = references.measure_references(session)
    state, verdicts = LadderState(session.base_cfg), Verdicts(session)
    chosen = select(stage_names)
    alone = all(stage.kind == REFERENCE for stage in chosen)
    baseline = first_pass.measure_baseline(session, state, verdicts, alone)  # first: it reads an earlier run's floor
    verdicts.set("order_mode", session.base_cfg.order)
    if baseline.status != "baseline":
        session.log("the baseline did not run, so no stage can be compared: stopping")
        return [dict(baseline.doc)]
    finished = [baseline] + first_pass.first_pass(session, chosen, state, verdicts)
    if session.mode == "ladder" and session.base_cfg.order == "trace":
        second_look.second_look(session, finished, state, verdicts)
        leave_one_out.leave_one_out(session, state, verdicts, finished)
    if session.mode == "ladder" and session.memory_budget_mib is not None:
        budget.fit(session, state, verdicts, finished)
    if session.mode == "ladder":
        final = headline.headline(session, state, verdicts)
        finished += [final] if final else []
    return [dict(record.doc) for record in finished]
