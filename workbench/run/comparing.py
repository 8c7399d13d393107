"""How the ladder's phases measure and save: the state they share, paired comparisons with the rules
for extra rounds (an open answer gets more while they could settle it and the time budget lasts), the
one write of a stage's document, and an interrupted run's results read back for --resume.

Every phase (first_pass, second_look, leave_one_out, budget, headline) compares through `compare` and
writes through `save`, so a test can stand in for measuring in one place.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from workbench import results, stats
from workbench.config import MEASUREMENT_FIELDS, RunConfig
from workbench.errors import ResultFileError, SaveError
from workbench.results import VERDICTS_FILE, stage_result_path, write_json_atomic
from workbench.run import console, rounds as paired_rounds
from workbench.run.record import StageRecord
from workbench.run.rounds import Side
from workbench.run.session import Session
from workbench.run.stages import STAGES, Stage


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


def trace_dir_for(session: Session, cfg: RunConfig, name: str):
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


def compare(session: Session, a: RunConfig, b: RunConfig, label: str, a_name: str, b_name: str,
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


def saved_then_stop(session: Session, result: dict, comparison) -> StageRecord:
    """Save; then, if the run was stopped after this comparison's windows, stop (130/143)."""
    record = save(session, result)
    if comparison.interrupted is not None:
        raise comparison.interrupted
    return record


def previous(session: Session, name: str, cfg: RunConfig, applied: list[str]) -> StageRecord | None:
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


def earlier_floor(session: Session) -> dict | None:
    path = session.run_dir / VERDICTS_FILE
    if not (session.resume and path.is_file()):
        return None
    try:
        return results.read_json(path).get("noise_floor")
    except ResultFileError:
        return None


def save(session: Session, result: dict) -> StageRecord:
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


def stage_named(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def measured_as(cfg: RunConfig, base: RunConfig) -> RunConfig:
    """A measured configuration carried forward with the run's own measuring settings (a brief probe's
    rounds and steps must not become the next stage's)."""
    return cfg.with_overrides(**{key: getattr(base, key) for key in MEASUREMENT_FIELDS})
