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
5. the memory budget (--memory-budget; run/budget.py): memory moves where the final configuration is
   over it, then the fastest measured configuration that fits becomes the final one;
6. the headline: the final configuration against the baseline, paired, in the same time window.
Every stage result is written atomically the moment it is judged, and verdicts.json holds the noise
floor, the order taken and why, both checks and the headline, so an interrupted run keeps what it did.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

from workbench import results, stats
from workbench.run import batch_search, budget, console, judge, references, rounds as paired_rounds, stage_results
from workbench.config import MEASUREMENT_FIELDS, RunConfig
from workbench.errors import ResultFileError, SaveError, StageSkipped
from workbench.results import VERDICTS_FILE, stage_result_path, write_json_atomic
from workbench.run.record import StageRecord
from workbench.run.rounds import Side
from workbench.run.session import Session, write_run_file
from workbench.trace import diagnose
from workbench.run.stages import BATCH, MEMORY, MEMORY_ROUNDS, REFERENCE, SPEED, STAGE_NAMES, STAGES, Stage, StageContext, select

FINAL_STAGE = stage_results.FINAL_STAGE  # the headline's stage name, spelled once


@dataclass
class LadderState:
    """What the next stage builds on: the last kept configuration and its measurement."""

    cfg: RunConfig
    applied: list[str] = field(default_factory=list)
    result: StageRecord | None = None
    baseline: StageRecord | None = None
    floor: stats.NoiseFloor = stats.NO_FLOOR   # the A/A's, fitted to each comparison it judges
    position: int = 0              # stages taken so far: the next file's number
    # Paired comparisons already measured, by (a, b): leave-one-out of the last kept stage and the
    # headline of a single kept stage are comparisons the pass already made.
    measured: dict = field(default_factory=dict)


@dataclass
class Verdicts:
    """The run-level record beside the stage files (verdicts.json), rewritten as each piece lands."""

    session: Session
    doc: dict = field(default_factory=lambda: {"order": [], "second_look": [], "leave_one_out": []})

    def save(self) -> None:
        write_json_atomic(self.session.run_dir / VERDICTS_FILE, self.doc)

    def add(self, key: str, entry: dict) -> None:
        self.doc[key].append(entry)
        self.save()

    def set(self, key: str, value) -> None:
        self.doc[key] = value
        self.save()


def _trace_dir(session: Session, cfg: RunConfig, name: str):
    return results.stage_trace_dir(session.profiles_dir, name) if cfg.trace else None


# An inconclusive speed comparison gets more rounds, up to this many times the planned count: a real
# 10% effect needs more than four rounds to show on a noisy machine; a null one settles sooner. An
# undecided stage's second look, measured afresh, may take more: it is where the rounds pay most, and
# the time budget bounds it. Up to 24 rounds (as far as "what it would take" looks) rather than 12, in
# the simulation of tests/run/test_verdicts.py (12% noise, drift, bursts): a 15% effect kept 64% of the
# time instead of 60%, a 10% one 33% instead of 25%, a null one called faster 1.2% instead of 0.8%,
# at 8.8 rounds on average instead of 8.3.
EXTRA_ROUNDS_FACTOR = 2
SETTLING_ROUNDS_FACTOR = 6


def _still_open(floor: stats.NoiseFloor, min_effect: float, max_rounds: int):
    """Whether one more round is worth its time: the answer is inconclusive, and the rounds still
    allowed could settle it (stats.still_open). When even max_rounds rounds with the same mean and
    spread would leave it inconclusive (a 4% effect in 10% noise), more rounds are futile: it stays
    inconclusive, said so, and the time goes to the next stage. Stopping here can only end in
    'inconclusive', so it cannot make a stage look faster or slower than it is."""
    def more(comparison: paired_rounds.Comparison) -> bool:
        if len(comparison.a_rounds) < 2 or comparison.failure is not None or comparison.interrupted is not None:
            return False
        return stats.still_open(comparison.ratio(), min_effect, floor, max_rounds)
    return more


def _compare(session: Session, a: RunConfig, b: RunConfig, label: str, a_name: str, b_name: str,
             trace_dir=None, rounds: int | None = None, measured: dict | None = None,
             floor: stats.NoiseFloor | None = None, brief: bool = False, extra: int = EXTRA_ROUNDS_FACTOR,
             fresh: bool = False) -> paired_rounds.Comparison:
    """Paired rounds of a against b; b runs the extras (trace, accuracy) in its last round. With
    `measured`, a pair compared before in this run is not measured again (unless fresh); with a noise
    floor, an inconclusive answer gets more rounds, up to `extra` times as many, while the run's time
    budget lasts (session.time_budget_s). brief: b is a brief probe, whose extras are its trace only."""
    if measured is not None and (a, b) in measured and not fresh:
        session.log(f"== {label}: {a_name} vs {b_name} is a comparison this run already made: reusing its rounds")
        return measured[(a, b)]
    _clear_old_traces(trace_dir)
    count = rounds or b.rounds
    session.log(f"== {label}: {a_name} vs {b_name}, {count} paired round{'s' if count > 1 else ''}")
    most = count * max(1, extra)
    open_now = _still_open(floor, session.base_cfg.min_effect, most) if floor is not None and count > 1 else None
    more = _within_budget(session, open_now, time.monotonic()) if open_now is not None and most > count else None
    comparison = paired_rounds.compare(session, Side(a, a_name), Side(b, b_name, trace_dir, extras="brief" if brief else "full"), count, label,
                                       more, most)
    if more is not None:
        _say_if_futile(session, comparison, floor, most)
    elif open_now is not None:
        _say_if_open(session, comparison, floor)
    if measured is not None and comparison.failure is None and comparison.interrupted is None:
        measured[(a, b)] = comparison
    return comparison


def _within_budget(session: Session, open_now, begun: float):
    """Another round while the answer is open, if it fits in what is left of the run's time budget
    (judged from this comparison's own rounds so far); said once when the budget stops it."""
    def more(comparison: paired_rounds.Comparison) -> bool:
        if not open_now(comparison):
            return False
        per_round = (time.monotonic() - begun) / max(1, len(comparison.a_rounds))
        left = session.time_budget_s - (time.monotonic() - session.started)
        if per_round <= left:
            return True
        session.log(f"   still open, but the time budget ({session.time_budget_s:.0f} s, --time-budget) has "
                    f"{max(0.0, left):.0f} s left, under one round ({per_round:.0f} s): no extra rounds")
        return False
    return more


def _say_if_open(session: Session, comparison: paired_rounds.Comparison, floor: stats.NoiseFloor) -> None:
    """An open answer in the pass: its extra rounds come later, where they pay most (the second look)."""
    ratio = comparison.ratio() if comparison.failure is None and comparison.a_rounds else None
    if ratio is not None and stats.judged_verdict(ratio, session.base_cfg.min_effect, floor) == "inconclusive":
        session.log("   still open: undecided for now; the second look measures it afresh, with more rounds "
                    "where its interval reaches the largest gain")


def _say_if_futile(session: Session, comparison: paired_rounds.Comparison, floor: stats.NoiseFloor, most: int) -> None:
    """An open answer that got no more rounds: say why, with the interval more rounds would give."""
    if comparison.failure is not None or comparison.interrupted is not None or len(comparison.a_rounds) >= most:
        return
    ratio, min_effect = comparison.ratio(), session.base_cfg.min_effect
    if ratio is None or stats.judged_verdict(ratio, min_effect, floor) != "inconclusive":
        return
    ahead = stats.projected(ratio, most)
    session.log(f"   still open after {len(comparison.a_rounds)} rounds; {most} rounds at this spread would give about "
                f"[{ahead['ci95_low']:.2f}, {ahead['ci95_high']:.2f}], still open: no extra rounds")


def _clear_old_traces(trace_dir) -> None:
    """A re-measured stage replaces its trace; stale ones would mix into the analysis."""
    for old in results.trace_files(trace_dir) if trace_dir else []:
        old.unlink()


# --- 1. the noise floor and the baseline -----------------------------------------------------------

def measure_baseline(session: Session, state: LadderState, verdicts: Verdicts, alone: bool = False) -> StageRecord:
    """The baseline against itself: the machine's noise floor, and the baseline's own result. Alone
    (no stage to compare with it, as in `make profile-baseline`) one round measures and traces it."""
    cfg = session.base_cfg
    earlier, aa = _previous(session, "baseline", cfg, []), _earlier_floor(session)
    if earlier and aa:
        session.log("== baseline and noise floor: kept from the earlier run")
        state.floor = stats.NoiseFloor.from_aa(aa)
        verdicts.set("noise_floor", aa)
        state.baseline = state.result = earlier
        state.position = 1
        return earlier
    started = time.perf_counter()
    comparison = _compare(session, cfg, cfg, "baseline" if alone else "noise floor (A/A)", "baseline", "baseline",
                          _trace_dir(session, cfg, "baseline"), 1 if alone else None)
    result = stage_results.reference(session, comparison, started)
    if comparison.interrupted is not None:
        return _saved_then_stop(session, result, comparison)
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
    state.baseline = state.result = record = _save(session, result)
    state.position = 1
    return record


# --- 2. the pass -----------------------------------------------------------------------------------

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
    return replace(session.context, host_cpu=metrics.get("host_cpu"))


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
        return _save(session, stage_results.skipped(session, stage, position, before, str(error), why))
    if cfg == before:
        return _save(session, stage_results.skipped(session, stage, position, cfg, _nothing_to_change(session, stage, against), why))
    applied = (state.applied if session.mode == "ladder" else []) + [stage.name]
    earlier = _previous(session, stage.name, cfg, applied)
    if earlier is not None:
        session.log(f"== {stage.name}: kept from the earlier run ({earlier.status})")
        return earlier
    started = time.perf_counter()
    rounds = min(cfg.rounds, MEMORY_ROUNDS) if stage.kind == MEMORY else cfg.rounds
    # With a second look to come, an open answer waits for it: its extra rounds go, within the time
    # budget, to the undecided stages whose intervals reach the largest gains, on the final configuration.
    extra = 1 if _second_look_ahead(session) and stage.kind == SPEED else EXTRA_ROUNDS_FACTOR  # only speed stages get one
    comparison = _compare(session, before, cfg, stage.name, against.stage, stage.name,
                          _trace_dir(session, cfg, stage.name), rounds, state.measured,
                          state.floor if stage.kind in (SPEED, BATCH) else None, brief=cfg.rounds < before.rounds, extra=extra)
    result = stage_results.stage(session, stage, position, cfg, applied, comparison, against.doc, state, why, started)
    if search is not None:
        result = _with_batch_search(result, search, before, cfg, against)
    return _saved_then_stop(session, result, comparison)


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


def _saved_then_stop(session: Session, result: dict, comparison) -> StageRecord:
    """Save; then, if the run was stopped after this comparison's windows, stop (130/143)."""
    record = _save(session, result)
    if comparison.interrupted is not None:
        raise comparison.interrupted
    return record


def _previous(session: Session, name: str, cfg: RunConfig, applied: list[str]) -> StageRecord | None:
    """A finished result of an interrupted run that measured exactly what this run would now."""
    if not session.resume:
        return None
    for path in results.stage_files(session.run_dir, name):  # a run begun before files were keyed by name too
        try:
            found = first_pass_view(results.read_stage_result(path))
        except ResultFileError as error:  # truncated or damaged: set aside and measure again
            aside = path.with_name(path.name + ".corrupt")
            path.replace(aside)
            session.log(f"warning: {error.reason} in {path.name}: moved to {aside.name}; measuring {name} again")
            continue
        same_machine = found.get("environment", {}).get("device_name") == session.environment.get("device_name")
        if (found.get("status") not in ("failed", None) and found.get("config") == cfg.to_dict()
                and found.get("applied", applied) == applied and same_machine):
            return StageRecord.of(found)
    return None


def _earlier_floor(session: Session) -> dict | None:
    path = session.run_dir / VERDICTS_FILE
    if not (session.resume and path.is_file()):
        return None
    try:
        return results.read_json(path).get("noise_floor")
    except ResultFileError:
        return None


def _nothing_to_change(session: Session, stage: Stage, against: StageRecord) -> str:
    """Why a stage whose configuration equals the one before it is not measured (noise could 'keep' it)."""
    detail = f" ({session.decisions['workers_choice']})" if stage.name == "dataloader" and "workers_choice" in session.decisions else ""
    return f"nothing to change on this machine{detail}: the configuration is {against.stage}'s"


def _save(session: Session, result: dict) -> StageRecord:
    """Write the judged document (atomically) and return it as the ladder reads it."""
    path = stage_result_path(session.run_dir, result["stage"])
    session.log(console.one_line(result))  # said before the write, so a failed write loses nothing
    try:
        for old in [p for p in results.stage_files(session.run_dir, result["stage"]) if p != path]:
            old.unlink()  # a resumed run begun before files were keyed by name holds it as NN-<stage>
        write_json_atomic(path, result)
    except OSError as error:  # disk full, read-only: keep the measurement, say where and why
        raise SaveError(path, error, result) from None
    return StageRecord.of(result)




def _advance(state: LadderState, result: StageRecord, mode: str, base: RunConfig) -> None:
    if mode == "ladder" and result.status == "kept":
        measured = {key: getattr(base, key) for key in MEASUREMENT_FIELDS}
        state.cfg = result.config.with_overrides(**measured)
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


# --- 3. the second look, 4. leave-one-out ----------------------------------------------------------

def _second_look_ahead(session: Session) -> bool:
    return session.mode == "ladder" and session.base_cfg.order == "trace"


def _second_look_candidates(finished: list[StageRecord]) -> list[StageRecord]:
    """Speed stages worth another try on the final configuration (measured, not a brief probe of
    emulated bf16, not rejected for breaking training): the undecided ones first, the one whose
    interval reaches the largest gain first (the rounds pay most there), then the rejected ones, then
    those skipped on a measured figure (tried only where the final configuration's figure passes)."""
    looked = [r for r in finished if r.kind == SPEED and not r.probe and not r.training_broke]
    undecided = sorted((r for r in looked if r.status == "undecided"), key=_reach, reverse=True)
    gated = [r for r in looked if r.status == "skipped" and _stage(r.stage).gated]
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


def second_look(session: Session, finished: list[StageRecord], state: LadderState, verdicts: Verdicts) -> None:
    for rejected in _second_look_candidates(finished):
        stage = _stage(rejected.stage)
        why_not = cannot_pay(rejected, _gained_since(finished, rejected), session.base_cfg.min_effect)
        if why_not:
            verdicts.add("second_look", {"stage": stage.name, **asdict(rejected.vs_previous),
                                         "adopted": False, "not_retried": why_not, "text": f"not retried: {why_not}"})
            session.log(f"-- second look {stage.name}: not retried: {why_not}")
            continue
        gated = rejected.status == "skipped"
        try:  # a stage the pass measured passed its gate then; one it skipped on the gate meets it again
            cfg = stage.apply(state.cfg, context_on(session, state.result) if gated else session.context)
        except StageSkipped as skipped:
            if gated:  # still below its gate on the final configuration: nothing new to say
                continue
            first = asdict(rejected.vs_previous) if rejected.vs_previous else {}
            verdicts.add("second_look", {"stage": stage.name, **first, "adopted": False, "not_retried": str(skipped),
                                         "text": f"not retried: {skipped}"})
            session.log(f"-- second look {stage.name}: not retried: {skipped}")
            continue
        if cfg == state.cfg:
            continue
        undecided = rejected.status in ("undecided", "skipped")  # measured afresh, with the most rounds the budget allows
        comparison = _compare(session, state.cfg, cfg, f"second look: {stage.name}", "final so far", f"+{stage.name}",
                              measured=state.measured, floor=state.floor, fresh=undecided,
                              extra=SETTLING_ROUNDS_FACTOR if undecided else EXTRA_ROUNDS_FACTOR)
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


FIRST_PASS_KEYS = ("status", "reason", "metrics")


def first_pass_view(found: dict) -> dict:
    """A stage file as the pass left it: a second look rewrites status, reason and figures (and an
    adopted stage's figures stand on a configuration the pass never measured), leave-one-out the status
    of a stage it dropped; both keep the originals."""
    if not found.get("first_pass"):
        return found
    rest = {key: value for key, value in found.items()
            if key not in ("first_pass", "second_look", "adopted_config", "leave_one_out")}
    return {**rest, **found["first_pass"]}


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
           "first_pass": {key: looked.doc.get(key) for key in FIRST_PASS_KEYS}}
    if looked.status == "skipped" and comparison is not None and comparison.b_rounds:
        # The pass skipped it: the second look is its only measurement, its figures and configuration that one's.
        doc["metrics"] = {**paired_rounds.pooled(comparison.b_rounds).metrics,
                          "speedup_vs_previous": _second_look_ratio(entry)}
        if measured_cfg is not None:
            doc["config"] = measured_cfg.to_dict()
    if entry["adopted"]:
        doc.update(_adopted_figures(doc, entry, state))
    record = finished[finished.index(looked)] = _save(session, doc)
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


def _record_dropped(session: Session, finished: list[StageRecord], name: str, entry: dict) -> None:
    """A kept stage leave-one-out dropped: its file says "dropped", with why, and keeps what the pass
    decided (first_pass: a resumed run's pass builds on it as it did)."""
    record = next((r for r in finished if r.stage == name and r.status == "kept"), None)
    if record is None:
        return
    doc = {**record.doc, "status": "dropped", "leave_one_out": entry,
           "reason": f"{record.doc.get('reason', '')}; leave-one-out on the final configuration: {entry['text']}, "
                     "so it is not in the final configuration",
           "first_pass": record.doc.get("first_pass") or {key: record.doc.get(key) for key in FIRST_PASS_KEYS}}
    finished[finished.index(record)] = _save(session, doc)


def _without(session: Session, applied: list[str], dropped: str, final: RunConfig) -> RunConfig:
    """The final configuration rebuilt without one stage. The batch stage's size was measured, not
    derived: it is taken from the final configuration (with its learning rate)."""
    cfg = session.base_cfg
    for name in applied:
        if name == dropped:
            continue
        stage = _stage(name)
        cfg = (cfg.with_overrides(batch_size=final.batch_size, lr=final.lr, micro_batch_size=final.micro_batch_size)
               if stage.kind == BATCH else stage.apply(cfg, session.context))
    return cfg


def leave_one_out(session: Session, state: LadderState, verdicts: Verdicts, finished: list[StageRecord]) -> None:
    """Does each kept stage still pay in the final mix? One that does not is dropped, and its own file
    says so (status "dropped"), so no figure calls it kept while the final configuration lacks it."""
    for name in list(state.applied):
        try:
            without = _without(session, state.applied, name, state.cfg)
        except StageSkipped:
            continue
        if without == state.cfg:  # a later stage set the same field (cuda_graphs after compile): nothing to measure
            state.applied = [s for s in state.applied if s != name]
            entry = {"stage": name, "verdict": "replaced by a later stage", "dropped": True,
                     "text": "a later stage replaced what it set: the final configuration is the same without it"}
            verdicts.add("leave_one_out", entry)
            _record_dropped(session, finished, name, entry)
            session.log(f"-- leave-one-out {name}: a later kept stage replaced what it set; dropped from the list")
            continue
        comparison = _compare(session, without, state.cfg, f"leave-one-out: {name}", f"final without {name}", "final",
                              measured=state.measured, floor=state.floor)
        entry = judge.check_entry(name, comparison, session.base_cfg.min_effect, state.floor)
        entry["still_pays"] = entry["verdict"] in ("faster", "inconclusive")
        if entry["verdict"] in ("no significant change", "slower"):
            state.cfg, state.applied = without, [s for s in state.applied if s != name]
            entry["dropped"] = True
        verdicts.add("leave_one_out", entry)
        if entry.get("dropped"):
            _record_dropped(session, finished, name, entry)
        session.log(f"-- leave-one-out {name}: final vs without it {entry['text']}"
                    f"{'; dropped from the final configuration' if entry.get('dropped') else ''}")
        if comparison.interrupted is not None:
            raise comparison.interrupted


def _stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


# --- 5. the headline ---------------------------------------------------------------------------------

def headline(session: Session, state: LadderState, verdicts: Verdicts) -> StageRecord | None:
    """The final configuration against the baseline, paired: the figure the report leads with."""
    if not state.applied:
        verdicts.set("headline", {"text": "no stage was kept: the baseline is the final configuration"})
        return None
    started = time.perf_counter()
    comparison = _compare(session, session.base_cfg, state.cfg, "headline", "baseline", "final",
                          _trace_dir(session, state.cfg, FINAL_STAGE), measured=state.measured, floor=state.floor)
    comparison = _narrowed(session, comparison, state.cfg)
    result = stage_results.final(session, state, comparison, started)
    verdicts.set("headline", {"applied": state.applied, **(result["metrics"] or {}).get("speedup_vs_baseline", {}),
                              "text": result["reason"]})
    return _saved_then_stop(session, result, comparison)


# The headline is the figure a user quotes: what is left of the time budget goes to narrowing it, to
# about +-5%, with at most HEADLINE_MOST_FACTOR times the planned rounds. How many rounds is settled
# once, from the planned rounds' spread (as if it held), not re-judged round by round: stopping when
# the interval happens to look narrow would leave it covering less than 95% (about 92% simulated).
HEADLINE_HALF_WIDTH = 0.05
HEADLINE_MOST_FACTOR = 3


def _narrowed(session: Session, comparison: paired_rounds.Comparison, final: RunConfig) -> paired_rounds.Comparison:
    """The headline comparison with the extra rounds its spread says a +-HEADLINE_HALF_WIDTH interval
    needs, each only when it fits in what is left of the time budget."""
    ratio = comparison.ratio() if comparison.failure is None and comparison.interrupted is None else None
    done = len(comparison.a_rounds)
    if ratio is None or done < 2 or stats.half_width(ratio) <= HEADLINE_HALF_WIDTH:
        return comparison
    most = max(done, final.rounds * HEADLINE_MOST_FACTOR)
    needed = stats.rounds_for_half_width(ratio, HEADLINE_HALF_WIDTH, most)

    def more(now: paired_rounds.Comparison) -> bool:
        per_round = max(now.seconds[-3:] or [0.0])  # the slowest recent round: an overrun costs the user
        left = session.time_budget_s - (time.monotonic() - session.started)
        return len(now.a_rounds) < needed and per_round <= left
    if not more(comparison):
        return comparison
    session.log(f"   headline {console.fmt(ratio)} after {done} rounds: narrowing it with extra rounds, "
                f"{needed} in all (what this spread needs for about +-{HEADLINE_HALF_WIDTH:.0%}, at most "
                f"{most}), while the time budget lasts")
    base, target = Side(session.base_cfg, "baseline"), Side(final, "final")
    return paired_rounds.extend(session, comparison, base, target, "headline", more, needed, "narrowing the headline")


def run_ladder(session: Session, stage_names: str | None = None) -> list[dict]:
    """Noise floor, the pass, the second look, leave-one-out and the headline; every stage result
    (the documents as written)."""
    session = references.measure_references(session)
    state, verdicts = LadderState(session.base_cfg), Verdicts(session)
    chosen = select(stage_names)
    alone = all(stage.kind == REFERENCE for stage in chosen)
    baseline = measure_baseline(session, state, verdicts, alone)  # first: it reads an earlier run's floor
    verdicts.set("order_mode", session.base_cfg.order)
    if baseline.status != "baseline":
        session.log("the baseline did not run, so no stage can be compared: stopping")
        return [dict(baseline.doc)]
    finished = [baseline] + first_pass(session, chosen, state, verdicts)
    if session.mode == "ladder" and session.base_cfg.order == "trace":
        second_look(session, finished, state, verdicts)
        leave_one_out(session, state, verdicts, finished)
    if session.mode == "ladder" and session.memory_budget_mib is not None:
        budget.fit(session, state, verdicts, finished, budget.Tools(compare=lambda *a, **k: _compare(*a, **k),
                                                                    save=lambda s, doc: _save(s, doc)))
    if session.mode == "ladder":
        final = headline(session, state, verdicts)
        finished += [final] if final else []
    return [dict(record.doc) for record in finished]
