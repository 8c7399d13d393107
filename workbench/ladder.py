"""The ladder: stages applied one at a time, each measured, judged, and saved as it finishes.

Speed stages are kept only when they do not make the step measurably slower than the configuration
before them; memory stages are trade-offs, reported and not carried forward. Every stage result is
written atomically the moment it is judged, so an interrupted run keeps what it finished.
"""
from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbench import distributed, judge, results
from workbench.config import RunConfig
from workbench.results import stage_result_path, stage_stem, write_json_atomic
from workbench.session import Session, write_run_file
from workbench.stages import REFERENCE, STAGE_NAMES, Stage, select
from workbench.errors import StageSkipped


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
        nproc = spec.get("nproc", 1)
        proc = subprocess.run([*distributed.launcher(nproc), "workbench.worker", str(spec_path)],
                              env=distributed.launch_environment(nproc))
        if proc.returncode < 0 and -proc.returncode == 2:  # SIGINT: the user stopped the run
            raise KeyboardInterrupt
        out = Path(spec["out"])
        if out.exists():
            return results.read_json(out)
        return {"status": "failed", "error": f"worker exited with status {proc.returncode} "
                f"{'(killed: out of host memory?)' if proc.returncode in (-9, 137) else ''}".strip()}


def _run_in_process(spec: dict, session: Session) -> dict:
    from workbench import worker

    try:
        return worker.run_spec(spec, session.model_factory, session.dataset)
    except StageSkipped as error:
        return {"status": "skipped", "error": str(error)}


def measure_stage(session: Session, cfg: RunConfig, stage: str, index: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec = _spec(session, cfg, stage, index, Path(tmp) / "raw.json")
        return _run_isolated(spec) if session.isolate else _run_in_process(spec, session)


def _skipped(session: Session, stage: Stage, index: int, reason: str, cfg: RunConfig) -> dict:
    return session.envelope(stage.name, index, cfg, [], {"status": "skipped", "error": reason})


def run_stage(session: Session, stage: Stage, state: LadderState) -> dict:
    """Apply, measure, judge and save one stage; return its result."""
    index = STAGE_NAMES.index(stage.name)
    try:
        cfg = stage.apply(state.cfg if session.mode == "ladder" else session.base_cfg, session.context)
    except StageSkipped as error:
        return _save(session, _skipped(session, stage, index, str(error), state.cfg))
    session.log(f"== stage {index}: {stage.name} ({stage.summary})")
    started = time.perf_counter()
    raw = measure_stage(session, cfg, stage.name, index)
    applied = state.applied + ([stage.name] if stage.kind != REFERENCE else [])
    result = session.envelope(stage.name, index, cfg, applied, raw)
    result["wall_s"] = time.perf_counter() - started
    judge.judge(result, stage, state, session)
    return _save(session, result)


def _save(session: Session, result: dict) -> dict:
    path = stage_result_path(session.run_dir, result["index"], result["stage"])
    write_json_atomic(path, result)
    session.log(judge.one_line(result))
    return result


def _advance(state: LadderState, stage: Stage, result: dict, mode: str) -> None:
    if stage.kind == REFERENCE and result["status"] == "baseline":
        state.baseline = state.result = result
        return
    if mode == "ladder" and result["status"] == "kept":
        state.cfg = RunConfig(**result["config"])
        state.applied, state.result = result["applied"], result


def _previous_result(session: Session, stage: Stage) -> dict | None:
    path = stage_result_path(session.run_dir, STAGE_NAMES.index(stage.name), stage.name)
    if session.resume and path.exists():
        found = results.read_json(path)
        return found if found.get("status") not in ("failed",) else None
    return None


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
    for stage in select(stage_names):
        result = _previous_result(session, stage)
        if result is not None:
            session.log(f"== stage {stage.name}: kept from the earlier run ({result['status']})")
        else:
            result = run_stage(session, stage, state)
        _advance(state, stage, result, session.mode)
        finished.append(result)
        if stage.kind == REFERENCE and result["status"] != "baseline":
            session.log("the baseline did not run, so no stage can be compared: stopping")
            break
    return finished
