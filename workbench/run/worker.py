"""Measure one stage in this (fresh) process: `python -m workbench.run.worker SPEC.json`.

The spec names the configuration, where the trace goes and where the raw result goes. Whatever
happens (out of memory, a compile error, a stage that does not apply) a result file is written, so
the ladder can record the reason and go on. A spec with a "pair" is a paired round: both
configurations in this one process (workbench/run/pair.py).
"""
from __future__ import annotations

import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

import torch

from workbench.run import distributed, forkserver
from workbench.config import RunConfig
from workbench.device import resolve_device_type
from workbench.run.distributed import DistInfo
from workbench.errors import StageSkipped
from workbench.run.executor import build, measure_config
from workbench.progress import Progress
from workbench.results import read_json, write_json_atomic


def peak_for(cfg: RunConfig, device_type: str, peaks: dict) -> tuple[float | None, str]:
    """The peak FLOP/s a configuration's MFU is measured against, and its name."""
    key = cfg.precision if cfg.precision != "fp32" else ("tf32" if cfg.tf32 else "fp32")
    entry = peaks.get(key) or peaks.get("fp32") or {}
    return entry.get("flops_per_s"), entry.get("source", "no peak known")


def run_spec(spec: dict, model_factory=None, dataset=None, dist: DistInfo = DistInfo()) -> dict:
    cfg = RunConfig(**spec["config"])
    # Only the first process talks: N copies of every progress line would say nothing more.
    stream = sys.stderr if dist.is_main else open(os.devnull, "w")
    progress = StoppableProgress(spec["stage"] + (f" x{dist.world_size} processes" if dist.enabled else ""), stream)
    if _IN_WORKER_PROCESS:  # never touch the signal handling of a caller running stages in-process
        _install_stop_handler(progress)
    log = lambda message: print(f"[{spec['stage']}] {message}", file=stream, flush=True)
    built = build(cfg, model_factory, dataset, log=log, dist=dist)
    peak, source = peak_for(cfg, built.device.type, spec.get("peaks", {}))
    trace_dir = Path(spec["trace_dir"]) if spec.get("trace_dir") else None
    raw = measure_config(built, trace_dir, peak, source, built.notes["rss_before_model_mb"], progress,
                         spec.get("extras", True))
    raw.update(status="measured", data=built.data_description, notes=_jsonable(built.notes))
    return raw


class TraceInterrupted(Exception):
    """Raised in the passes after the timed steps: an Exception, so the timed figures are kept."""


class StoppableProgress(Progress):
    """Progress that knows whether the timed steps are done, so a stop can keep their figures."""

    stop_requested = False
    step = total = None

    def timing_done(self) -> bool:
        repeats = self.phase or ""
        last = repeats.startswith("repeat ") and repeats.split()[-1].split("/")[0] == repeats.split("/")[-1]
        return self.phase == "trace" or (last and self.step == self.total)

    def update(self, phase: str, step: int | None = None, total: int | None = None, force: bool = False) -> None:
        self.step, self.total = step, total
        super().update(phase, step, total, force)
        if self.stop_requested and self.phase == "trace":
            raise TraceInterrupted("stopped by the user during the trace pass")


def _install_stop_handler(progress: StoppableProgress) -> None:
    """SIGINT/SIGTERM (the ladder stopping our group): before the timed steps end, stop at once;
    after them, skip the evaluation and trace passes and write the timed figures."""
    import signal

    def handler(signum, frame):
        if progress.stop_requested or not progress.timing_done():
            raise KeyboardInterrupt
        progress.stop_requested = True
        raise TraceInterrupted("stopped by the user after the timed steps")

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)


def _jsonable(notes: dict) -> dict:
    return {key: value for key, value in notes.items() if isinstance(value, (int, float, str, list, bool))}


def failure(status: str, error: BaseException, out_of_memory: bool = False) -> dict:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    prefix = "out of memory: " if out_of_memory else ""
    return {"status": status, "error": f"{prefix}{type(error).__name__}: {message}"[:500]}


def failed_raw(error: BaseException) -> dict:
    """The one reading of a measurement's failure: skipped (the stage does not apply), out of memory,
    or failed with the error's first line."""
    if isinstance(error, StageSkipped):
        return {"status": "skipped", "error": str(error)}
    return failure("failed", error, out_of_memory=isinstance(error, torch.OutOfMemoryError))


def guarded(measure: Callable[[dict], dict], spec: dict) -> dict:
    """measure(spec), with every failure a result that says why (Ctrl-C still stops)."""
    try:
        return measure(spec)
    except (StageSkipped, torch.OutOfMemoryError) as error:
        return failed_raw(error)
    except Exception as error:  # any configuration's failure is recorded; the ladder or experiment goes on
        traceback.print_exc(limit=3, file=sys.stderr)
        return failed_raw(error)


def target_of(function: Callable) -> str:
    return f"{function.__module__}:{function.__qualname__}"


def preload(spec_path: str) -> None:
    """Run by the fork server itself before it forks the round for spec_path: decode the CIFAR-format
    data the spec reads, so the round inherits it (numpy only: no torch op, no thread). Best effort:
    anything wrong here is left for the round itself to find and report."""
    from workbench.training.data import preload_cifar

    spec = read_json(Path(spec_path))
    sides = list(spec["pair"].values()) if "pair" in spec else [spec]
    for config in (side.get("config") or {} for side in sides):
        if config.get("data_dir") and not str(config.get("data", "")).startswith("imagefolder:"):
            preload_cifar(config["data_dir"])


_IN_WORKER_PROCESS = False


def main(spec_path: str) -> int:
    global _IN_WORKER_PROCESS
    _IN_WORKER_PROCESS = True
    spec = read_json(Path(spec_path))
    if "pair" in spec:
        from workbench.run import pair

        return pair.main(spec)
    dist = DistInfo()

    def measure(spec: dict) -> dict:
        nonlocal dist
        if "measure" in spec:  # an experiment's own measuring function, one process
            return forkserver.resolve(spec["measure"])(spec)  # an experiment's own measuring loop
        dist = distributed.setup(resolve_device_type(spec["config"]["device"]))
        return run_spec(spec, dist=dist)
    try:
        raw = guarded(measure, spec)
    except KeyboardInterrupt:  # stopped before the timed steps ended: nothing worth writing, no traceback
        return 130
    if dist.is_main:
        write_json_atomic(Path(spec["out"]), raw)
    if raw["status"] == "measured":
        distributed.teardown(dist)
        return 0
    # A failed rank must not wait at a barrier its peers never reach: exit non-zero, torchrun stops the rest.
    return 1 if dist.enabled else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
