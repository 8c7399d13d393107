"""The ladder: stages applied one at a time, each measured, judged, and saved as it finishes.

Speed stages are kept only when they do not make the step measurably slower than the configuration
before them; memory stages are trade-offs, reported and not carried forward. Every stage result is
written atomically the moment it is judged, so an interrupted run keeps what it finished.
"""
from __future__ import annotations

import gc
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import distributed, judge, procs, results
from workbench.config import RunConfig
from workbench.results import stage_result_path, stage_stem, write_json_atomic
from workbench.session import Session, write_run_file
from workbench.stages import REFERENCE, STAGE_NAMES, Stage, select
from workbench.errors import SaveError, StageSkipped


@dataclass
class LadderState:
    """What the next stage builds on: the last kept configuration and its measurement."""

    cfg: RunConfig
    applied: list[str] = field(default_factory=list)
    result: dict | None = None
    baseline: dict | None = None


def _spec(session: Session, cfg: RunConfig, stage: str, index: int, out: Path) -> dict:
    trace_dir = session.profiles_dir / stage_stem(index, stage) if cfg.trace else None
    return {"config": cfg.to_dict(), "stage": stage, "out": str(out), "peaks": session.peaks,
            "trace_dir": str(trace_dir) if trace_dir else None, "nproc": session.nproc}


def _run_isolated(spec: dict) -> dict:
    """Measure in a fresh Python process; a crash or a kill still yields a result."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        write_json_atomic(spec_path, spec)
        nproc, timeout_s = spec.get("nproc", 1), procs.stage_timeout_s()
        out = Path(spec["out"])
        try:
            code = procs.run_worker([*distributed.launcher(nproc), "workbench.worker_entry", str(spec_path)],
                                    distributed.launch_environment(nproc), timeout_s)
        except KeyboardInterrupt as stop:  # the worker's group is stopped; its finished timings stand
            stop.partial = _partial(out)
            raise
        if code is None:
            return {"status": "failed", "error": f"timed out after {timeout_s:g} s (a hang in compile or "
                    "in a collective?); set WORKBENCH_STAGE_TIMEOUT_S to allow longer"}
        if code < 0 and -code == 2:  # SIGINT: the user stopped the run
            raise KeyboardInterrupt
        if out.exists():
            return results.read_json(out)
        return {"status": "failed", "error": f"worker exited with status {code} "
                f"{'(killed: out of host memory?)' if code in (-9, 137) else ''}".strip()}


def _partial(out: Path) -> dict | None:
    """What a stopped worker wrote, if anything readable: the stop, not a damaged file, is the news."""
    try:
        return results.read_json(out) if out.exists() else None
    except results.ResultFileError:
        return None


def _run_in_process(spec: dict, session: Session) -> dict:
    from workbench import worker

    try:
        return worker.run_spec(spec, session.model_factory, session.dataset)
    except StageSkipped as error:
        return {"status": "skipped", "error": str(error)}
    except Exception as error:  # as in a fresh process: the stage fails, the ladder goes on
        failed = worker.failure("failed", error)
        if isinstance(error, torch.OutOfMemoryError):
            failed["error"] = "out of memory: " + failed["error"]
        return failed
    finally:
        gc.collect()  # a failed stage's tensors must not crowd the next one
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def measure_stage(session: Session, cfg: RunConfig, stage: str, index: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec = _spec(session, cfg, stage, index, Path(tmp) / "raw.json")
        _clear_old_traces(spec["trace_dir"])
        return _run_isolated(spec) if session.isolate else _run_in_process(spec, session)


def _clear_old_traces(trace_dir: str | None) -> None:
    """A re-measured stage replaces its trace; stale ones would mix into the analysis."""
    for old in Path(trace_dir).glob("*.pt.trace.json*") if trace_dir else []:
        old.unlink()


def _skipped(session: Session, stage: Stage, index: int, reason: str, cfg: RunConfig) -> dict:
    return session.envelope(stage.name, index, cfg, [], {"status": "skipped", "error": reason})


def run_stage(session: Session, stage: Stage, state: LadderState) -> dict:
    """Apply, measure, judge and save one stage; return its result."""
    index = STAGE_NAMES.index(stage.name)
    before = state.cfg if session.mode == "ladder" else session.base_cfg
    try:
        cfg = stage.apply(before, session.context)
    except StageSkipped as error:
        return _save(session, _skipped(session, stage, index, str(error), state.cfg))
    if stage.kind != REFERENCE and cfg == before:
        return _save(session, _skipped(session, stage, index, _nothing_to_change(session, stage, state), cfg))
    session.log(f"== stage {index}: {stage.name} ({stage.summary})")
    started = time.perf_counter()
    try:
        raw = measure_stage(session, cfg, stage.name, index)
    except KeyboardInterrupt as stop:  # stopped in its trace pass: the timed figures are kept
        if (getattr(stop, "partial", None) or {}).get("status") == "measured":
            _finish(session, stage, state, cfg, stop.partial, started)
        raise
    return _finish(session, stage, state, cfg, raw, started)


def _finish(session: Session, stage: Stage, state: LadderState, cfg: RunConfig, raw: dict, started: float) -> dict:
    index = STAGE_NAMES.index(stage.name)
    applied = state.applied + ([stage.name] if stage.kind != REFERENCE else [])
    result = session.envelope(stage.name, index, cfg, applied, raw)
    result["wall_s"] = time.perf_counter() - started
    judge.judge(result, stage, state, session)
    if stage.kind == REFERENCE:
        refuse_nonfinite_baseline(result)
    return _save(session, result)


def refuse_nonfinite_baseline(result: dict) -> None:
    """A NaN or infinite baseline loss is no reference: every comparison with it would mislead."""
    metrics = result.get("metrics") or {}
    if result["status"] == "baseline" and metrics.get("loss_finite") is False:
        result["status"] = "failed"
        result["reason"] = (f"the baseline's training loss is not finite (final loss {metrics.get('final_loss')}): "
                            "it cannot be the reference; check the model, data and learning rate")


def _nothing_to_change(session: Session, stage: Stage, state: LadderState) -> str:
    """Why a stage whose configuration equals the one before it is not measured (noise could 'keep' it)."""
    against = (state.result or {}).get("stage", "baseline") if session.mode == "ladder" else "baseline"
    detail = f" ({session.decisions['workers_choice']})" if stage.name == "dataloader" and "workers_choice" in session.decisions else ""
    return f"nothing to change on this machine{detail}: the configuration is {against}'s"


def _save(session: Session, result: dict) -> dict:
    path = stage_result_path(session.run_dir, result["index"], result["stage"])
    session.log(judge.one_line(result))  # said before the write, so a failed write loses nothing
    try:
        write_json_atomic(path, result)
    except OSError as error:  # disk full, read-only: keep the measurement, say where and why
        raise SaveError(path, error, result) from None
    return result


def _advance(state: LadderState, stage: Stage, result: dict, mode: str) -> None:
    if stage.kind == REFERENCE and result["status"] == "baseline":
        state.baseline = state.result = result
        return
    if mode == "ladder" and result["status"] == "kept":
        # What the stage changed carries forward; how it was measured does not (a brief probe, say).
        base = state.baseline["config"] if state.baseline else result["config"]
        measured = {key: base[key] for key in ("repeats", "warmup_steps", "timed_steps")}
        state.cfg = RunConfig(**{**result["config"], **measured})
        state.applied, state.result = result["applied"], result


def _previous_result(session: Session, stage: Stage, state: LadderState) -> dict | None:
    """A finished result of an earlier attempt, if it measured exactly what this ladder would now."""
    path = stage_result_path(session.run_dir, STAGE_NAMES.index(stage.name), stage.name)
    if not (session.resume and path.exists()):
        return None
    try:
        found = results.read_stage_result(path)
    except results.ResultFileError as error:  # truncated or damaged: set aside and measure again
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        session.log(f"warning: {error.reason} in {path.name}: moved to {aside.name}; measuring {stage.name} again")
        return None
    return found if found.get("status") != "failed" and _still_valid(session, stage, state, found) else None


def _still_valid(session: Session, stage: Stage, state: LadderState, found: dict) -> bool:
    before = state.cfg if session.mode == "ladder" else session.base_cfg
    try:
        expected = stage.apply(before, session.context)
    except StageSkipped:
        return found["status"] == "skipped"
    applied = state.applied + ([stage.name] if stage.kind != REFERENCE else [])
    same_machine = found.get("environment", {}).get("device_name") == session.environment.get("device_name")
    return found.get("config") == expected.to_dict() and found.get("applied", applied) == applied and same_machine


def measure_single_process(session: Session) -> None:
    """The baseline in one process: what a multi-process run's scaling efficiency is measured against."""
    if session.nproc == 1 or session.single_process:
        return
    session.log(f"== one-process baseline (the reference for {session.nproc}-process scaling)")
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**_spec(session, session.base_cfg, "baseline", 0, Path(tmp) / "raw.json"), "nproc": 1, "trace_dir": None}
        raw = _run_isolated(spec)
    metrics = raw.get("metrics") or {}
    session.single_process = {"throughput": metrics.get("throughput"), "step_times_s": metrics.get("step_times_s"),
                              "samples_per_step": metrics.get("samples_per_step"), "error": raw.get("error")}
    write_run_file(session)


def run_ladder(session: Session, stage_names: str | None = None) -> list[dict]:
    """Run the selected stages in ladder order; return every stage result."""
    measure_single_process(session)
    state = LadderState(session.base_cfg)
    finished = []
    remeasured = False  # once a stage is measured anew, every later stage builds on new numbers
    for stage in select(stage_names):
        result = None if remeasured else _previous_result(session, stage, state)
        if result is not None:
            session.log(f"== stage {stage.name}: kept from the earlier run ({result['status']})")
        else:
            result = run_stage(session, stage, state)
            remeasured = result["status"] != "skipped"
        _advance(state, stage, result, session.mode)
        finished.append(result)
        if stage.kind == REFERENCE and result["status"] != "baseline":
            session.log("the baseline did not run, so no stage can be compared: stopping")
            break
    return finished
