"""Result files: one JSON per stage, written atomically, read back by the report.

This module owns the on-disk layout (every path below is built by a function here, nowhere else)
and the one atomic write every output goes through. Layout of a run (``reports/<run>/``)::

    run.json                     the run: name, mode, environment, stage order
    verdicts.json                noise floor (A/A), order taken and why, second look, leave-one-out, headline
    stages/<stage>.json          one result per stage (schema below), keyed by the stage's name, so a
                                 new stage renumbers nothing; final.json is the final configuration
                                 measured against the baseline; "index" inside says when it was taken
    stages/<stage>.breakdown.csv       per-step time breakdown from the trace
    stages/<stage>.trace_summary.json  trace summary (workbench/trace/analyze.py)
    experiments/<name>.json      results of `workbench experiment <name>` (experiments/all.json: the index)

Traces live in ``profiles/<run>/<stage>/<worker>.<ts>.pt.trace.json.gz``. Runs written before
stage files were keyed by name (``stages/NN-<stage>.json``, ``99-final.json`` for the headline,
``profiles/<run>/NN-<stage>/``) are read as they are.

The stage result's JSON Schema is workbench/schema/stage_result.v<SCHEMA_VERSION>.json.

A stage result, in short (the JSON Schema named above is the published, tested shape; all times in seconds,
memory in MiB, throughput in samples/s)::

    {
      "schema": 2, "run": str, "stage": str, "index": int, "mode": "ladder" | "ablation",
      "status": "baseline" | "kept" | "dropped" | "rejected" | "undecided" | "tradeoff" | "final" | "failed" | "skipped",
      "why_now": str,                   # why this stage was tried at this point (the trace, or the order)
      "rounds": {"count", "a": [float], "b": [float]} | null,  # per-round throughputs of both sides
      "reason": str,                    # why kept/rejected/failed/skipped, one sentence
      "applied": [str],                 # stages in effect for this measurement
      "config": {...},                  # RunConfig fields as measured
      "decisions": {str: str},          # capability decisions (device, amp dtype, workers, ...)
      "data": str,                      # which data was used, e.g. "synthetic CIFAR-format (offline)"
      "environment": {...},             # torch, device name, cpu flags, git revision, threads
      "metrics": {                      # absent when status is failed/skipped
        "samples_per_step": int,
        "step_time_s": {"median", "q1", "q3", "iqr", "mean", "n"},
        "throughput": {"median", "ci95_low", "ci95_high"},
        "repeat_throughputs": [float],
        "warmup_s": float, "compile_s": float | null,
        "epoch_time_s": float,          # dataset size / throughput
        "peak_memory_mb": float,        # the headline figure, see peak_memory_kind
        "peak_memory_kind": str,        # e.g. "cuda max_memory_allocated" or "host peak RSS (sampled)"
        "peak_memory": {...},           # every figure we have (allocated, reserved, rss, ...)
        "memory_breakdown_mb": {"weights", "gradients", "optimizer_state", "activations_and_other"},
        "flops_per_step": float, "achieved_flops_per_s": float,
        "mfu": float | null, "peak_flops_per_s": float | null, "peak_flops_source": str,
        "first_loss": float, "final_loss": float, "loss_finite": bool,
        "speedup_vs_baseline": {"ratio", "ci95_low", "ci95_high", "verdict"},
        "speedup_vs_previous": {"ratio", "ci95_low", "ci95_high", "verdict", "against"} | null,
        "step_times_s": [[float]],      # raw step times, one list per repeat (speedups are computed from these)
        "losses": [float],              # losses of the last repeat
        "eval_accuracy": float | null,  # held-out top-1 after `trained_steps` steps: a sanity check
        "trained_steps": int, "world_size": int,
        "scaling": {...} | absent,      # --nproc > 1: efficiency vs the one-process baseline, communication share
        "trace_overhead_s": float
      },
      "trace": {"dir", "file", "size_mb", "breakdown_csv", "summary_json"} | {"dir", "analysis_error"} | null,
      "trace_file": str | null, "trace_size_mb": float | null,
      "findings": [{"rule", "severity", "evidence", "value", "threshold", "action"}],
      "prediction": {"predicted_to_help", "helped", "agrees"} | null,   # did the finding before predict this stage?
      "wall_s": float,                  # wall time of the whole stage (build, warm-up, timing, trace)
      "error": str | null
    }

``verdict`` is "faster" (the whole 95% interval above 1 + min_effect and the effect above the A/A
noise floor), "slower" (the whole interval below 1), "inconclusive" (too wide to tell) or
"no significant change". Intervals are paired t-intervals over rounds (fresh processes, alternating).
"""
from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import IO, Any, Callable

from workbench.errors import ResultFileError

# The version of the stage result's shape (workbench/schema/stage_result.v2.json), written into every
# result and run.json. The rule for bumping it: bump when a reader of the old version would misread a
# new file (a field removed or renamed, a unit or a meaning changed, a field made required); adding an
# optional field, or a new status value readers may ignore, keeps the version. A bump publishes the
# next schema file beside the old one and teaches read_stage_result to read both.
# Version 2: 'rejected' no longer covers a speed stage its interval could not decide; that one is
# 'undecided' (a v1 reader would count it as measured and turned away). v1 files read as they are.
SCHEMA_VERSION = 2
STAGES_DIR = "stages"
RUN_FILE = "run.json"
# Beside the stage files: the noise floor, the order taken and why, the second look, leave-one-out and
# the paired headline (workbench/run/ladder.py writes it piece by piece).
VERDICTS_FILE = "verdicts.json"
EXPERIMENTS_DIR = "experiments"
# Beside the run folders: reports/latest, a link to the newest reported run, and reports/LATEST, the
# file holding its name where links cannot be made. Neither is a run name (workbench/names.py).
LATEST_LINK, LATEST_FILE = "latest", "LATEST"
EXPERIMENTS_INDEX = "all"                  # experiments/all.json: every experiment of the run
BREAKDOWN_SUFFIX = ".breakdown.csv"
# A trace file: <worker>.<timestamp>.pt.trace.json, the name torch.profiler's TensorBoard handler
# gives it and torch-tb-profiler lists (one run per folder); the workbench writes it gzipped.
TRACE_GLOBS = ("*.pt.trace.json", "*.pt.trace.json.gz")
TRACE_SUFFIX = ".pt.trace.json.gz"
# Beside a stage's trace: its memory over one step by category (trace/memory_timeline.py), and on CUDA
# the caching allocator's snapshot that pytorch.org/memory_viz opens. One per rank under --nproc.
MEMORY_TIMELINE_FILE = "memory_timeline.json"
# What the run measured beside a trace and the trace cannot hold (the timed window's page faults and kernel
# time, the allocator setting): `workbench analyze` on the trace folder reads it, so its findings match the run's.
MEASURED_CONTEXT_FILE = "measured_context.json"
CUDA_SNAPSHOT_FILE = "memory_snapshot.pickle"


def per_rank(name: str, rank: int, world_size: int) -> str:
    """A file name of rank 0 as it is, another rank's with its number (memory_timeline.rank1.json)."""
    if world_size == 1 or rank == 0:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}.rank{rank}{dot}{suffix}"
TRACE_SUMMARY_SUFFIX = ".trace_summary.json"
# Before stage files were keyed by name: NN-<stage>, NN the position the stage was taken at.
LEGACY_STEM = re.compile(r"(\d\d)-(.+)")


def write_atomic(path: Path, write: Callable[[IO], Any], binary: bool = False) -> Path:
    """The one way the workbench writes a file: a reader never sees half of it.

    write(handle) fills a temp file beside the target (text without newline translation, or bytes);
    it is flushed, fsynced and renamed over the target. The temp file is created with mode 0666 less
    the umask, like every other output (mkstemp would make it 0600), and its name starts with a dot
    and ends in .tmp, so no reader's pattern picks it up. A failed write (disk full, read-only,
    Ctrl-C) removes the temp file and raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="")) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, payload: Any) -> Path:
    """JSON, indented with sorted keys, through write_atomic."""
    return write_atomic(path, lambda handle: json.dump(payload, handle, indent=2, sort_keys=True, default=str))


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda handle: handle.write(text))


def read_json(path: Path, expect: type = dict) -> Any:
    """A JSON file written by the workbench; ResultFileError (one line) when it is not one."""
    try:
        with open(path) as handle:
            payload = json.load(handle)
    except OSError as error:
        raise ResultFileError(path, error.strerror or type(error).__name__) from None
    except (ValueError, RecursionError) as error:  # truncated, not JSON, not UTF-8
        raise ResultFileError(path, f"not valid JSON: {str(error)[:120]}") from None
    if not isinstance(payload, expect):
        raise ResultFileError(path, f"holds {type(payload).__name__}, expected a JSON object")
    return payload


# --- the layout: every path of a run is built here ------------------------------------------------

def stage_stem(stage: str) -> str:
    """File stem shared by a stage's result, breakdown, trace summary and trace folder: its name."""
    return stage


def stage_result_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / STAGES_DIR / f"{stage_stem(stage)}.json"


def breakdown_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / STAGES_DIR / f"{stage_stem(stage)}{BREAKDOWN_SUFFIX}"


def trace_summary_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / STAGES_DIR / f"{stage_stem(stage)}{TRACE_SUMMARY_SUFFIX}"


def stage_trace_dir(run_profiles_dir: Path, stage: str) -> Path:
    """profiles/<run>/<stage>/: the stage's traces (and the Python-level views of profile-lines)."""
    return Path(run_profiles_dir) / stage_stem(stage)


def trace_files(folder: Path) -> list[Path]:
    """The trace files in a folder (one per rank under DDP), by name."""
    folder = Path(folder)
    return sorted(path for pattern in TRACE_GLOBS for path in folder.glob(pattern)) if folder.is_dir() else []


def experiments_dir(run_dir: Path) -> Path:
    return Path(run_dir) / EXPERIMENTS_DIR


def experiment_path(run_dir: Path, name: str) -> Path:
    return experiments_dir(run_dir) / f"{name}.json"


def stage_files(run_dir: Path, stage: str, suffix: str = ".json") -> list[Path]:
    """A stage's existing files with this suffix, in both layouts: stages/<stage><suffix> first,
    then any stages/NN-<stage><suffix> of a run written before files were keyed by name."""
    folder = Path(run_dir) / STAGES_DIR
    current = folder / f"{stage_stem(stage)}{suffix}"
    legacy = sorted(folder.glob(f"[0-9][0-9]-{stage}{suffix}")) if folder.is_dir() else []
    return [current] * current.is_file() + legacy


def _stage_of(path: Path) -> str:
    """The stage a result file belongs to: its stem, without the old layout's NN- prefix."""
    legacy = LEGACY_STEM.fullmatch(path.stem)
    return legacy.group(2) if legacy else path.stem


def stage_result_files(run_dir: Path) -> list[Path]:
    """One result file per stage (the name-keyed one where a stage has both), in no set order."""
    folder = Path(run_dir) / STAGES_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("*.json") if not p.name.startswith(".") and not p.name.endswith(TRACE_SUMMARY_SUFFIX)]
    by_stage: dict[str, Path] = {}
    for path in sorted(found, key=lambda p: LEGACY_STEM.fullmatch(p.stem) is None):  # legacy first: replaced
        by_stage[_stage_of(path)] = path
    return list(by_stage.values())


def load_stage_results(run_dir: Path) -> list[dict]:
    """Every finished stage of a run, in the order it was taken (the "index" each result records),
    from either layout (ResultFileError on a damaged file)."""
    loaded = [read_stage_result(path) for path in stage_result_files(run_dir)]
    return sorted(loaded, key=lambda result: (result["index"], result["stage"]))


# The fields every reader of a stage result relies on, with their types.
STAGE_KEYS = {"stage": str, "status": str, "index": int}


def read_stage_result(path: Path) -> dict:
    result = read_json(path)
    for key, kind in STAGE_KEYS.items():
        if not isinstance(result.get(key), kind):
            raise ResultFileError(path, f"{key!r} is missing or not a {kind.__name__}")
    if not isinstance(result.get("metrics") or {}, dict) or not isinstance(result.get("config") or {}, dict):
        raise ResultFileError(path, "'metrics' and 'config' must be JSON objects")
    return result


def read_run_file(run_dir: Path) -> dict:
    """run.json with a config that would build a valid RunConfig (ResultFileError otherwise)."""
    path = Path(run_dir) / RUN_FILE
    run = read_json(path)
    run["config"] = checked_config(path, run.get("config", {}))  # absent: the defaults
    if not isinstance(run.get("stages", []), list) or run.get("mode", "ladder") not in ("ladder", "ablation"):
        raise ResultFileError(path, "'stages' must be a list and 'mode' ladder or ablation")
    return run


def checked_config(path: Path, config: Any) -> dict:
    from workbench.config import RunConfig, field_kinds

    if not isinstance(config, dict):
        raise ResultFileError(path, "'config' is missing or not a JSON object")
    kinds = field_kinds()
    for key, value in config.items():
        if key not in kinds:
            raise ResultFileError(path, f"unknown config key {key!r}")
        if not _has_kind(value, kinds[key]):
            raise ResultFileError(path, f"config {key}={value!r} is not of type {kinds[key].__name__}")
    try:
        RunConfig(**config)
    except Exception as error:  # a UsageError from validation: the file, not the user, holds the value
        raise ResultFileError(path, f"config is invalid: {error}") from None
    return config


def _has_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)
