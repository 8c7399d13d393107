"""The memory budget, the ladder's second objective: fits, then faster.

After the speed phases the ladder holds its fastest configuration. Where a budget is set and that
configuration's measured peak is over it, memory moves are tried on it, chosen and ordered from its
breakdown (the part that dominates the peak decides what is tried first, memory_model predicts each
saving before it is measured): bf16 autocast, more and smaller micro-batches, checkpointing, and, where
the user allows a change of optimization, 8-bit or factored optimizer states. Each is measured as a
paired trade-off against the configuration it joins, saved as a stage of its own (budget+<move>).
When none fits, the one with the lowest peak is adopted and the rest are tried on top of it.
Then the choice: the speed phases' own configuration where it fits (a stage they rejected is not
faster by their rule); otherwise, among every configuration the run measured (the pass's too), the
fastest whose peak fits (workbench/frontier.py). Nothing fitting ends the run with "nothing fits", the smallest peak,
and what would (sharding over processes, predicted): not an error.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from workbench import frontier, memory_model
from workbench.memory_budget import fits
from workbench.config import RunConfig, divisors
from workbench.errors import StageSkipped
from workbench.memory_model import Basis, Parts, Prediction
from workbench.run import comparing, stage_results
from workbench.run.comparing import LadderState, Verdicts
from workbench.run.record import StageRecord
from workbench.run.stages import (MEMORY, MEMORY_ROUNDS, Stage, StageContext, adafactor, fsdp, optimizer_8bit,
                                  optimizer_offload, zero1)

PREFIX = "budget+"
# The most micro-batches a budget splits a batch into: past this the step is mostly per-call overhead.
MOST_MICRO_BATCHES = 16
# BatchNorm cannot train on one sample ("expected more than 1 value per channel"): micro-batches of 2 at least.
SMALLEST_MICRO_BATCH = 2


@dataclass(frozen=True)
class Move:
    name: str              # the move itself: amp, accumulation_x4, checkpointing, adam8bit, adafactor
    cfg: RunConfig
    prediction: Prediction
    changes: str = ""      # "optimizer" where it changes the optimization


def moves(cfg: RunConfig, basis: Basis, ctx: StageContext, budget_mib: float, allow_optimizer_change: bool) -> list[Move]:
    """The memory moves that apply on cfg (measured as `basis`), largest predicted saving first."""
    predict = lambda changed: basis.predict(changed.to_dict(), ctx.world_size)
    found = [_amp(cfg, ctx), _accumulation(cfg, predict, budget_mib), _checkpointing(cfg),
             _selective_checkpointing(cfg, predict, basis.blocks, budget_mib)]
    found += [_applied(apply, cfg, ctx) for apply in (zero1, fsdp)]  # several processes only
    found.append(_applied(optimizer_offload, cfg, ctx))                # CUDA only
    if allow_optimizer_change:
        found += [_applied(apply, cfg, ctx, frontier.OPTIMIZER_CHANGE) for apply in (optimizer_8bit, adafactor)]
    predicted = []
    for name, changed, changes in (m for m in found if m is not None):
        prediction = predict(changed)
        if prediction.saving_mib > 0:
            predicted.append(Move(name, changed, prediction, changes))
    return sorted(predicted, key=lambda m: m.prediction.saving_mib, reverse=True)


def _amp(cfg: RunConfig, ctx: StageContext):
    # Only where the device does it natively: a CPU without native bf16 emulates it an order of magnitude
    # slower (ResNet-50 at 96 px: minutes a round); the pass's brief amp probe already puts it on the
    # frontier with its peak and its cost.
    dtype = ctx.capabilities.amp_dtype
    return ("amp", cfg.with_overrides(precision=dtype), "") if dtype and cfg.precision == "fp32" else None


def _accumulation(cfg: RunConfig, predict, budget_mib: float):
    """The fewest micro-batches predicted to fit; the most allowed where none is."""
    micro = cfg.effective_micro_batch
    splits = [k for k in divisors(micro) if 2 <= k <= MOST_MICRO_BATCHES and micro // k >= SMALLEST_MICRO_BATCH]
    if not splits:
        return None
    needed = next((k for k in splits if predict(cfg.with_overrides(micro_batch_size=micro // k)).peak_mib <= budget_mib),
                  splits[-1])
    smaller = micro // needed
    return f"accumulation_x{cfg.batch_size // smaller}", cfg.with_overrides(micro_batch_size=smaller), ""


def _checkpointing(cfg: RunConfig):
    return ("checkpointing", cfg.with_overrides(checkpointing="blocks"), "") if cfg.checkpointing == "none" else None


def _selective_checkpointing(cfg: RunConfig, predict, blocks: int | None, budget_mib: float):
    """Only as many blocks as the budget needs (the first K: recomputing fewer costs less time), where
    fewer than all are predicted to fit; None otherwise (all blocks is its own move)."""
    if cfg.checkpointing != "none" or not blocks or blocks < 2:
        return None
    for count in range(1, blocks):
        changed = cfg.with_overrides(checkpointing=f"blocks:{count}")
        if predict(changed).peak_mib <= budget_mib:
            return f"checkpointing_{count}of{blocks}", changed, ""
    return None


def _applied(apply, cfg: RunConfig, ctx: StageContext, changes: str = ""):
    """A stage's own change as a move, named after what it sets (None where it does not apply)."""
    try:
        changed = apply(cfg, ctx)
    except StageSkipped:
        return None
    if changes == frontier.OPTIMIZER_CHANGE:
        name = changed.optimizer
    else:
        name = "offload" if changed.offload_optimizer != cfg.offload_optimizer else changed.sharding
    return name, changed, changes


def _peak(record: StageRecord) -> float | None:
    return (record.doc.get("metrics") or {}).get("peak_memory_mb")


def fit(session, state: LadderState, verdicts: Verdicts, finished: list[StageRecord]) -> None:
    """Meet the budget: measure moves while the configuration is over it, then choose (see the module)."""
    budget_mib = session.memory_budget_mib
    before = (state.cfg, list(state.applied), state.result)
    current = _current(session, state, finished)
    unconstrained = _unconstrained(finished, current)
    fits_already = current if current is not None and _peak(current) <= budget_mib else None
    while current is not None and _peak(current) > budget_mib:
        records = _measure_moves(session, state, current)
        finished += records
        measured = [r for r in records if _peak(r) is not None]
        if not measured or any(_peak(r) <= budget_mib for r in measured):
            break
        lowest = min(measured, key=_peak)
        if _peak(lowest) >= _peak(current):
            break  # nothing lowered the peak: combining more would not either
        session.log(f"-- memory budget: nothing fits yet; {lowest.stage} has the lowest peak "
                    f"({_peak(lowest):.0f} MiB): the other moves are tried on top of it")
        _adopt(session, state, lowest)
        current = lowest
    if not _choose(session, state, verdicts, finished, unconstrained, fits_already):
        # Nothing fits: the final configuration stays the speed phases' (the moves adopted on the way
        # were steps of a search, not an answer); the report says what would fit.
        state.cfg, state.applied, state.result = before


def _unconstrained(finished: list[StageRecord], current: StageRecord | None) -> frontier.Point | None:
    """What the run would answer without a budget: the speed phases' own configuration (a stage they did
    not keep is not faster by their rule, however its point estimate reads); the fastest point where
    that one has none."""
    points = frontier.points_from(r.doc for r in finished)
    own = next((p for p in points if current is not None and p.name == current.stage), None)
    return own or frontier.fastest(points)


def _current(session, state: LadderState, finished: list[StageRecord]) -> StageRecord | None:
    """The record of the configuration the ladder holds. Where a second look adopted a stage or
    leave-one-out dropped one, that configuration was measured only inside the check (without its
    trace, so without its peak as a CPU run judges it): it is measured here first, as budget+start,
    against the record it came from."""
    record = state.result
    if record is None or (frontier.same_config(record.doc["config"], state.cfg.to_dict()) and _peak(record) is not None):
        return record
    session.log("-- memory budget: the final configuration was not measured as a stage of its own (a second look "
                "or leave-one-out changed it since): measuring it first (budget+start)")
    unchanged = Prediction(_peak(record) or 0.0, 0.0, "the final configuration as the second look or leave-one-out left it")
    start = _measure(session, state, record, Move("start", state.cfg, unchanged), name=PREFIX + "start")
    finished.append(start)
    if _peak(start) is None:
        return None
    applied = list(state.applied)  # the same stages: the start is a measurement, not a move
    _adopt(session, state, start)
    state.applied = applied
    return start


def _measure_moves(session, state: LadderState, current: StageRecord) -> list[StageRecord]:
    metrics = current.doc["metrics"]
    parts = Parts.of(metrics)
    found = moves(state.cfg, Basis.of(current.doc), session.context, session.memory_budget_mib,
                  session.base_cfg.allow_optimizer_change)
    session.log(f"-- memory budget: {current.stage} peaks at {metrics['peak_memory_mb']:.0f} MiB, over the "
                f"{session.memory_budget_mib:.0f} MiB budget; largest part: {parts.largest()}; trying "
                + (", ".join(f"{m.name} (predicted {m.prediction.peak_mib:.0f} MiB)" for m in found) or "nothing: no move applies or is predicted to lower it"))
    return [_measure(session, state, current, move) for move in found]


def _name(state, move: Move) -> str:
    """budget+<moves adopted so far>+<this move>: one file per configuration measured."""
    adopted = [name[len(PREFIX):] for name in state.applied if name.startswith(PREFIX)]
    return PREFIX + "+".join((adopted[-1:] if adopted else []) + [move.name])


def _measure(session, state: LadderState, current: StageRecord, move: Move, name: str | None = None) -> StageRecord:
    name = name or _name(state, move)
    stage = Stage(name, MEMORY, f"memory budget: {move.name} on {current.stage}", lambda cfg, ctx: move.cfg,
                  changes=move.changes)
    position, started = state.position, time.perf_counter()
    state.position += 1
    trace_dir = comparing.trace_dir_for(session, move.cfg, name)
    # Measured afresh, with its trace, even where the pass compared the same pair: on a CPU the peak a
    # budget is judged on comes from the trace's memory events (resident memory hides what a move frees).
    comparison = comparing.compare(session, state.cfg, move.cfg, name, current.stage, name, trace_dir,
                               min(move.cfg.rounds, MEMORY_ROUNDS), None, None)
    why = f"memory budget: {current.stage} is over it; predicted {move.prediction.peak_mib:.0f} MiB ({move.prediction.basis})"
    doc = stage_results.stage(session, stage, position, move.cfg, list(state.applied) + [name], comparison,
                              current.doc, state, why, started)
    if move.name == "start":  # the configuration the ladder holds, measured: not a move, nothing was predicted
        doc = {key: value for key, value in doc.items() if key != "memory_prediction"}
    peak = (doc.get("metrics") or {}).get("peak_memory_mb")
    doc = {**doc, "memory_budget": {"budget_mib": session.memory_budget_mib, "fits": fits(peak, session.memory_budget_mib),
                                    "out_of_memory": frontier.is_out_of_memory(doc.get("reason"))}}
    record = comparing.save(session, doc)
    if comparison.interrupted is not None:
        raise comparison.interrupted
    return record


def _adopt(session, state, record: StageRecord) -> None:
    state.cfg = comparing.measured_as(record.config, session.base_cfg)
    state.applied, state.result = list(record.applied), record


def _choose(session, state: LadderState, verdicts: Verdicts, finished: list[StageRecord], unconstrained,
            fits_already: StageRecord | None = None) -> bool:
    """The fastest measured configuration that fits becomes the final one (True); or nothing fits, said so.
    Where the speed phases' own configuration fits, it stays: a stage they did not keep is not faster by
    their rule, however its point estimate reads."""
    budget_mib, allow = session.memory_budget_mib, session.base_cfg.allow_optimizer_change
    points = frontier.points_from(r.doc for r in finished)
    kept = next((p for p in points if fits_already is not None and p.name == fits_already.stage), None)
    chosen = kept or frontier.choose(points, budget_mib, allow)
    entry = {"budget": session.base_cfg.memory_budget, "budget_mib": budget_mib,
             "judged_on": session.decisions.get("memory_budget", ""),
             "unconstrained_best": unconstrained.name if unconstrained else None,
             "points": [vars(p) for p in points]}
    if chosen is None:
        line = frontier.nothing_fits_line(points, budget_mib, what_would(finished, budget_mib, allow))
        verdicts.set("memory_budget", {**entry, "fits": False, "chosen": None, "text": line})
        session.log(f"-- memory budget: {line}")
        return False
    record = next(r for r in finished if r.stage == chosen.name)
    line = frontier.fits_line(chosen, budget_mib, unconstrained)
    verdicts.set("memory_budget", {**entry, "fits": True, "chosen": chosen.name, "text": line})
    session.log(f"-- memory budget: {line}")
    if record.stage.startswith(PREFIX):
        doc = {**record.doc, "status": "kept",
               "reason": f"{record.doc.get('reason', '')}; the fastest measured configuration within the "
                         f"{budget_mib:.0f} MiB memory budget: carried into the final configuration"}
        finished[finished.index(record)] = record = comparing.save(session, doc)
    _adopt(session, state, record)
    return True


def what_would(finished: list[StageRecord], budget_mib: float, allow_optimizer_change: bool) -> str:
    """What could meet a budget no measured configuration met, predicted from the smallest one's parts."""
    measured = [r for r in finished if _peak(r) is not None and Parts.of(r.doc["metrics"]) is not None]
    if not measured:
        return "nothing was measured to predict from"
    smallest = min(measured, key=_peak)
    parts = Parts.of(smallest.doc["metrics"])
    ideas = []
    world = memory_model.processes_to_fit(parts, budget_mib)
    if world:
        ideas.append(f"sharding weights, gradients and optimizer state over {world} processes (FSDP, "
                     f"--nproc {world}): predicted {memory_model.sharded_peak(parts, world):.0f} MiB per process")
    else:
        ideas.append(f"its activations alone ({parts.activations:.0f} MiB) exceed the budget: a smaller batch "
                     "or image size")
    states = smallest.doc["metrics"].get("optimizer_state_mib_by_kind") or {}
    if not allow_optimizer_change and states.get("adamw8bit") is not None and parts.optimizer_state > states["adamw8bit"]:
        ideas.append(f"--allow-optimizer-change: 8-bit Adam states predicted {states['adamw8bit']:.0f} MiB instead of "
                     f"{parts.optimizer_state:.0f}")
    return "; ".join(ideas)
