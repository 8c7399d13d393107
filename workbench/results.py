"""Result files: one JSON per stage, written atomically, read back by the report.

Layout of a run (``reports/<run>/``)::

    run.json                     the run: name, mode, environment, stage order
    verdicts.json                noise floor (A/A), order taken and why, second look, leave-one-out, headline
    stages/<NN>-<stage>.json     one result per stage (schema below), NN = the position it was taken at;
                                 99-final.json is the final configuration measured against the baseline
    stages/<NN>-<stage>.breakdown.csv     per-step time breakdown from the trace
    stages/<NN>-<stage>.trace_summary.json  trace summary (analyze.py)
    experiments/<name>.json      results of `workbench experiment <name>`

Traces live in ``profiles/<run>/<NN>-<stage>/<worker>.<ts>.pt.trace.json.gz``.

A stage result (all times in seconds, memory in MiB, throughput in samples/s)::

    {
      "schema": 1, "run": str, "stage": str, "index": int, "mode": "ladder" | "ablation",
      "status": "baseline" | "kept" | "rejected" | "tradeoff" | "final" | "failed" | "skipped",
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
import secrets
from pathlib import Path
from typing import Any

from workbench.errors import ResultFileError

SCHEMA_VERSION = 1
STAGES_DIR = "stages"
RUN_FILE = "run.json"
# Beside the stage files: the noise floor, the order taken and why, the second look, leave-one-out and
# the paired headline (workbench/run/ladder.py writes it piece by piece).
VERDICTS_FILE = "verdicts.json"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so a reader never sees half a file: temp file, fsync, rename.

    The temp file is created with mode 0666 less the umask, like every other output (mkstemp would
    make it 0600). A failed write (disk full, read-only) removes the temp file and raises OSError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def stage_stem(index: int, stage: str) -> str:
    """File stem shared by a stage's result, breakdown and trace folder: '03-amp'."""
    return f"{index:02d}-{stage}"


def stage_result_path(run_dir: Path, index: int, stage: str) -> Path:
    return Path(run_dir) / STAGES_DIR / f"{stage_stem(index, stage)}.json"


def load_stage_results(run_dir: Path) -> list[dict]:
    """Every finished stage of a run, in ladder order (ResultFileError on a damaged file)."""
    stage_dir = Path(run_dir) / STAGES_DIR
    if not stage_dir.is_dir():
        return []
    paths = sorted(p for p in stage_dir.glob("[0-9][0-9]-*.json") if ".trace_summary" not in p.name)
    return [read_stage_result(p) for p in paths]


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
