"""Phase 3, the second look: undecided, rejected and gated speed stages tried again on the final
configuration (effects interact: bf16 pays on a CPU only once the optimizer step is fused); an
undecided one measured afresh with the most rounds the time budget allows."""
from __future__ import annotations

import time
from dataclasses import asdict

from workbench.config import RunConfig
from workbench.errors import StageSkipped
from workbench.run import comparing, first_pass, judge, rounds as paired_rounds
from workbench.run.comparing import LadderState, Verdicts
from workbench.run.record import StageRecord
from workbench.run.session import Session
from workbench.run.stages import SPEED


def _second_look_candidates(finished: list[StageRecord]) -> list[StageRecord]:
    """Speed stages worth another try on the final configuration (measured, not a brief probe of
    emulated bf16, not rejected for breaking training): the undecided ones first, the one whose
    interval reaches the largest gain first (the rounds pay most there), then the rejected ones, then
    those skipped on a measured figure (tried only where the final configuration's figure passes)."""
    looked = [r for r in finished if r.kind == SPEED and not r.probe and not r.training_broke]
    undecided = sorted((r for r in looked if r.status == "undecided"), key=_reach, reverse=True)
    gated = [r for r in looked if r.status == "skipped" and comparing.stage_named(r.stage).gated]
    return undecided + [r for r in looked if r.status == "rejected"] + gated


def _reach(record: StageRecord) -> float:
    """The largest gain an undecided stage's interval still allows."""
    return record.vs_previous.ci95_high if record.vs_previous else 0.0


def _gained_since(finished: list[StageRecord], rejected: StageRecord) -> float:
    """How much faster the configuration got after `rejected` was judged: the kept stages' ratios."""
    later = finished[finished.index(rejected) + 1:]
    gained = 1.0
    for result in later:
        if result.status == "kept":
            gained *= result.vs_previous.ratio
    return gained


def cannot_pay(rejected: StageRecord, gained: float, min_effect: float) -> str | None:
    """Why another look is pointless, or None. Only a stage measured significantly slower is given up
    on, and only when even its interval's upper end, times everything gained since, stays under the
    keep threshold; a stage that merely did not help (bf16 before fused Adam) always gets its look."""
    first = rejected.vs_previous
    if first is None or first.verdict != "slower" or first.ci95_high * gained >= 1 + min_effect:
        return None
    return (f"significantly slower ({first.ci95_high:.2f}x at best) and the {gained:.2f}x gained since "
            f"cannot lift it past {1 + min_effect:.2f}x")


def out_of_time(session: Session) -> str | None:
    """Why no second look starts any more: the run's time budget is spent. A second look is another try,
    not the ladder's answer (leave-one-out, the memory budget and the headline are): it waits for none."""
    spent = time.monotonic() - session.started
    if spent <= session.time_budget_s:
        return None
    return (f"the time budget ({session.time_budget_s:.0f} s, --time-budget) was spent ({spent:.0f} s) before its "
            "second look; a longer --time-budget gives it one")


def _still_skipped(session: Session, stage, state: LadderState) -> bool:
    """Whether a stage the pass skipped would be skipped again (or change nothing) on the final configuration."""
    try:
        return stage.apply(state.cfg, first_pass.context_on(session, state.result)) == state.cfg
    except StageSkipped:
        return True


def second_look(session: Session, finished: list[StageRecord], state: LadderState, verdicts: Verdicts) -> None:
    for rejected in _second_look_candidates(finished):
        stage = comparing.stage_named(rejected.stage)
        if rejected.status == "skipped" and _still_skipped(session, stage, state):
            continue  # still below its gate, or skipped for another reason: nothing new to say
        why_not = cannot_pay(rejected, _gained_since(finished, rejected), session.base_cfg.min_effect) \
            or out_of_time(session)
        if why_not:
            first = asdict(rejected.vs_previous) if rejected.vs_previous else {}
            verdicts.add("second_look", {"stage": stage.name, **first,
                                         "adopted": False, "not_retried": why_not, "text": f"not retried: {why_not}"})
            session.log(f"-- second look {stage.name}: not retried: {why_not}")
            continue
        gated = rejected.status == "skipped"
        try:  # a stage the pass measured passed its gate then; one it skipped on the gate meets it again
            cfg = stage.apply(state.cfg, first_pass.context_on(session, state.result) if gated else session.context)
        except StageSkipped as skipped:
            first = asdict(rejected.vs_previous) if rejected.vs_previous else {}
            verdicts.add("second_look", {"stage": stage.name, **first, "adopted": False, "not_retried": str(skipped),
                                         "text": f"not retried: {skipped}"})
            session.log(f"-- second look {stage.name}: not retried: {skipped}")
            continue
        if cfg == state.cfg:
            continue
        undecided = rejected.status in ("undecided", "skipped")  # measured afresh, with the most rounds the budget allows
        comparison = comparing.compare(session, state.cfg, cfg, f"second look: {stage.name}", "final so far", f"+{stage.name}",
                              measured=state.measured, floor=state.floor, fresh=undecided,
                              extra=comparing.SETTLING_ROUNDS_FACTOR if undecided else comparing.EXTRA_ROUNDS_FACTOR)
        entry = judge.check_entry(stage.name, comparison, session.base_cfg.min_effect, state.floor)
        entry["adopted"] = entry["verdict"] == "faster"
        if entry["adopted"]:
            state.cfg, state.applied = cfg, state.applied + [stage.name]
        verdicts.add("second_look", entry)
        session.log(f"-- second look {stage.name}: {entry['text']}{'; adopted' if entry['adopted'] else ''}")
        record = _record_second_look(session, finished, rejected, entry, state, comparison, cfg)
        if entry["adopted"] and record is not None:  # the configuration so far now stands on this record
            state.result = record
        if comparison.interrupted is not None:
            raise comparison.interrupted


def _record_second_look(session: Session, finished: list[StageRecord], looked: StageRecord, entry: dict,
                        state: LadderState, comparison=None, measured_cfg: RunConfig | None = None) -> StageRecord | None:
    """The stage's own file says where it ended: adopted on its second look (kept, with the comparison
    that decided it), or an undecided stage the second look found no better (rejected); a stage still
    open stays undecided, with what deciding it would take now. So the outcome line, the CSV and the
    report agree with verdicts.json. The saved record, or None where nothing changed."""
    decided = entry.get("verdict") in ("faster", "no significant change", "slower")
    if entry.get("verdict") == "failed" or not (entry["adopted"] or looked.status in ("undecided", "skipped")):
        return None
    status = "kept" if entry["adopted"] else ("rejected" if decided else "undecided")
    doc = {**looked.doc, "status": status, "second_look": entry,
           "reason": f"{looked.doc.get('reason', '')}; second look on the final configuration: {entry['text']}"
                     f"{', adopted' if entry['adopted'] else ''}",
           # What the pass measured and decided, as it was: a resumed run's pass reads this, not the end.
           "first_pass": {key: looked.doc.get(key) for key in comparing.FIRST_PASS_KEYS}}
    if looked.status == "skipped" and comparison is not None and comparison.b_rounds:
        # The pass skipped it: the second look is its only measurement, its figures and configuration that one's.
        doc["metrics"] = {**paired_rounds.pooled(comparison.b_rounds).metrics,
                          "speedup_vs_previous": _second_look_ratio(entry)}
        if measured_cfg is not None:
            doc["config"] = measured_cfg.to_dict()
    if entry["adopted"]:
        doc.update(_adopted_figures(doc, entry, state))
    record = finished[finished.index(looked)] = comparing.save(session, doc)
    return record


def _second_look_ratio(entry: dict) -> dict:
    """A second look's comparison as a stage's speedup over the configuration it was measured on."""
    ratio = {key: entry[key] for key in ("ratio", "ci95_low", "ci95_high", "verdict", "rounds", "log_ratios", "method")
             if key in entry}
    return {**ratio, "against": "final so far (second look)"}


def _adopted_figures(doc: dict, entry: dict, state: LadderState) -> dict:
    """An adopted stage's figures stand on the comparison that decided it: its speedup over the
    configuration so far, and against the baseline that configuration's own figure times it (the
    first pass measured another configuration, one without the stages kept since). The configuration
    it joined is recorded too, so the report knows when it is the final one."""
    ratio = _second_look_ratio(entry)
    metrics = {**(doc.get("metrics") or {}), "speedup_vs_previous": ratio}
    if state.result is not None:
        baseline = state.baseline.doc if state.baseline is not None else None
        metrics["speedup_vs_baseline"] = judge.vs_baseline(doc["stage"], ratio, state.result.doc, metrics, baseline)
    return {"adopted_config": state.cfg.to_dict(), "metrics": metrics}
