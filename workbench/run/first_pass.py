"""Phases 1 and 2: the noise floor (the baseline against itself) and the pass, each stage taken in the
order the current trace points at, compared against the configuration it would join, judged, saved."""
from __future__ import annotations

import time
from dataclasses import replace

from workbench import results, stats
from workbench.config import RunConfig
from workbench.errors import ResultFileError, StageSkipped
from workbench.run import batch_search, comparing, console, judge, stage_results
from workbench.run.comparing import LadderState, Verdicts
from workbench.run.record import StageRecord
from workbench.run.session import Session
from workbench.run.stages import BATCH, MEMORY, MEMORY_ROUNDS, REFERENCE, SPEED, STAGE_NAMES, Stage, StageContext
from workbench.trace import diagnose


def measure_baseline(session: Session, state: LadderState, verdicts: Verdicts, alone: bool = False) -> StageRecord:
    """The baseline against itself: the machine's noise floor, and the baseline's own result. Alone
    (no stage to compare with it, as in `make profile-baseline`) one round measures and traces it."""
    cfg = session.base_cfg
    earlier, aa = comparing.previous(session, "baseline", cfg, []), comparing.earlier_floor(session)
    if earlier and aa:
        session.log("== baseline and noise floor: kept from the earlier run")
        state.floor = stats.NoiseFloor.from_aa(aa)
        verdicts.set("noise_floor", aa)
        state.baseline = state.result = earlier
        state.position = 1
        return earlier
    started = time.perf_counter()
    comparison = comparing.compare(session, cfg, cfg, "baseline" if alone else "noise floor (A/A)", "baseline", "baseline",
                          comparing.trace_dir_for(session, cfg, "baseline"), 1 if alone else None)
    result = stage_results.reference(session, comparison, started)
    if comparison.interrupted is not None:
        return comparing.saved_then_stop(session, result, comparison)
    if result["status"] == "baseline" and not alone:  # the judged document, before it is saved
        aa = judge.aa_summary(comparison)
        state.floor = stats.NoiseFloor.from_aa(aa)
        verdicts.set("noise_floor", aa)
        noisy = aa["noise_floor"] > 0.5
        session.log(f"noise floor: baseline vs itself {console.fmt(aa)}; " + (
            "the machine is too noisy to judge small effects: rerun on a quiet machine" if noisy else
            f"one round's spread is {aa['noise_floor']:.1%}: over {cfg.rounds} rounds, effects under "
            f"{stats.floor_at(aa['noise_floor'], cfg.rounds):.1%} are 'no significant change' (a quieter pair "
            "is held to a floor scaled by its own spread)"))
    state.baseline = state.result = record = comparing.save(session, result)
    state.position = 1
    return record


def next_stage(pending: list[Stage], findings: list[dict], order: str) -> tuple[Stage, str]:
    """The stage to try next and why: what the trace points at first (speed before memory), then the
    default order."""
    if order == "trace":
        for stage in pending:
            rules = [f["rule"] for f in findings if stage.name in diagnose.predicts([f])]
            if rules:
                return stage, f"the trace points at it ({', '.join(rules)})"
    return pending[0], "default order" if order == "trace" else "fixed order (the lab's sequence)"


def context_on(session: Session, record: StageRecord | None) -> StageContext:
    """The session's stage context, with what was measured on the configuration a stage builds on."""
    metrics = (record.doc.get("metrics") or {}) if record is not None else {}
    step_time = metrics.get("step_time_s")  # pooled: {median, ...}
    return replace(session.context, host_cpu=metrics.get("host_cpu"),
                   step_time_s=step_time.get("median") if isinstance(step_time, dict) else None)


def run_stage(session: Session, stage: Stage, state: LadderState, why: str) -> StageRecord:
    """Apply, compare against the configuration it would join, judge and save one stage."""
    before = state.cfg if session.mode == "ladder" else session.base_cfg
    against: StageRecord = state.result if session.mode == "ladder" else state.baseline
    position = state.position
    state.position += 1
    search = None
    try:
        cfg = stage.apply(before, context_on(session, against))
        if stage.kind == BATCH:
            cfg, search = _searched_before(session, cfg) or batch_search.run_search(session, cfg)
    except StageSkipped as error:
        return comparing.save(session, stage_results.skipped(session, stage, position, before, str(error), why))
    if cfg == before:
        return comparing.save(session, stage_results.skipped(session, stage, position, cfg, _nothing_to_change(session, stage, against), why))
    applied = (state.applied if session.mode == "ladder" else []) + [stage.name]
    earlier = comparing.previous(session, stage.name, cfg, applied)
    if earlier is not None:
        session.log(f"== {stage.name}: kept from the earlier run ({earlier.status})")
        return earlier
    started = time.perf_counter()
    rounds = min(cfg.rounds, MEMORY_ROUNDS) if stage.kind == MEMORY else cfg.rounds
    # With a second look to come, an open answer waits for it: its extra rounds go, within the time
    # budget, to the undecided stages whose intervals reach the largest gains, on the final configuration.
    extra = 1 if second_look_ahead(session) and stage.kind == SPEED else comparing.EXTRA_ROUNDS_FACTOR  # only speed stages get one
    comparison = comparing.compare(session, before, cfg, stage.name, against.stage, stage.name,
                          comparing.trace_dir_for(session, cfg, stage.name), rounds, state.measured,
                          state.floor if stage.kind in (SPEED, BATCH) else None, brief=cfg.rounds < before.rounds, extra=extra)
    result = stage_results.stage(session, stage, position, cfg, applied, comparison, against.doc, state, why, started)
    if search is not None:
        result = _with_batch_search(result, search, before, cfg, against)
    return comparing.saved_then_stop(session, result, comparison)


def _searched_before(session: Session, cfg: RunConfig) -> tuple[RunConfig, dict] | None:
    """A resumed run's batch search, when the run being resumed finished one from this same start:
    searching again would cost its probes and, the choice being noisy, might pick another size."""
    if not session.resume:
        return None
    for path in results.stage_files(session.run_dir, "batch_size"):
        try:
            search = results.read_stage_result(path).get("batch_search") or {}
        except ResultFileError:
            continue
        if search.get("chosen") and search.get("start") == cfg.batch_size:
            chosen = search["chosen"]
            return cfg.with_overrides(batch_size=chosen, micro_batch_size=0, lr=batch_search.scaled_lr(cfg, chosen)), search
    return None


def _with_batch_search(result: dict, search: dict, before: RunConfig, cfg: RunConfig, against: StageRecord) -> dict:
    """The batch stage's result with its search and the trade-off said: the learning-rate rule it
    assumes, and the held-out accuracy beside the speed (a different optimization, not only faster)."""
    if result.get("status") in ("failed", "cancelled", "skipped"):
        return {**result, "batch_search": search}
    accuracy = (result.get("metrics") or {}).get("eval_accuracy"), (against.doc.get("metrics") or {}).get("eval_accuracy")
    held_out = (f"held-out accuracy {accuracy[0]:.1%} vs {accuracy[1]:.1%} after the same number of steps"
                if None not in accuracy else "no held-out split to compare accuracy on")
    return {**result, "batch_search": search,
            "reason": f"{batch_search.lr_text(before, cfg)}; {held_out}; {result['reason']}"}


def _nothing_to_change(session: Session, stage: Stage, against: StageRecord) -> str:
    """Why a stage whose configuration equals the one before it is not measured (noise could 'keep' it)."""
    detail = f" ({session.decisions['workers_choice']})" if stage.name == "dataloader" and "workers_choice" in session.decisions else ""
    return f"nothing to change on this machine{detail}: the configuration is {against.stage}'s"


def _advance(state: LadderState, result: StageRecord, mode: str, base: RunConfig) -> None:
    if mode == "ladder" and result.status == "kept":
        state.cfg = comparing.measured_as(result.config, base)
        state.applied, state.result = list(result.applied), result


# Speed stages first; then the batch, so the memory stages are measured at the batch the run keeps.
PASS_ORDER = (SPEED, BATCH, MEMORY)


def first_pass(session: Session, chosen: list[Stage], state: LadderState, verdicts: Verdicts) -> list[StageRecord]:
    pending = [s for s in chosen if s.kind != REFERENCE]
    if session.memory_budget_mib is not None and session.mode == "ladder":
        # Under a budget the memory stages are moves on the final configuration (run/budget.py), where
        # what they save and cost is what the choice needs; measured here they would describe another.
        pending = [s for s in pending if s.kind != MEMORY]
    pending.sort(key=lambda s: (PASS_ORDER.index(s.kind), STAGE_NAMES.index(s.name)))
    finished = []
    while pending:
        stage, why = next_stage(pending, list(state.result.findings) if state.result else [], session.base_cfg.order)
        pending.remove(stage)
        verdicts.add("order", {"stage": stage.name, "why": why, "builds_on": state.applied or ["baseline"]})
        result = run_stage(session, stage, state, why)
        _advance(state, result, session.mode, session.base_cfg)
        finished.append(result)
    return finished


def second_look_ahead(session: Session) -> bool:
    return session.mode == "ladder" and session.base_cfg.order == "trace"
