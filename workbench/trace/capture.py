"""torch.profiler capture of a stage, in its own untimed pass.

Layout (workbench/results.py): profiles/<run>/<stage>/<worker>.<timestamp>.pt.trace.json.gz, which is
what torch-tb-profiler lists as one run per folder and what chrome://tracing and Perfetto open.
Traces stay small: a handful of active steps, no Python stacks unless asked, gzip.
"""
from __future__ import annotations

import gzip
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

from torch.profiler import ProfilerActivity, profile, schedule

from workbench.results import TRACE_SUFFIX, write_atomic

WAIT_STEPS, WARMUP_STEPS, ACTIVE_STEPS = 1, 1, 3
# A brief probe (emulated bf16 on a CPU: ~9 s a step) records one active step and no profiler
# warm-up step: its steps are warm already, and the profiler's start-up is small beside 9 s.
BRIEF_SCHEDULE = (0, 0, 1)


def trace_steps(brief: bool = False) -> int:
    """Steps the capture runs: the schedule's wait + warm-up + active. With repeat=1 the trace is
    written at the last active step's prof.step(); a further step would be run and never recorded."""
    return sum(BRIEF_SCHEDULE if brief else (WAIT_STEPS, WARMUP_STEPS, ACTIVE_STEPS))


def activities(device_type: str) -> list[ProfilerActivity]:
    found = [ProfilerActivity.CPU]
    if device_type == "cuda":
        found.append(ProfilerActivity.CUDA)
    return found


def _write_trace(prof, trace_dir: Path, rank: int, world_size: int) -> Path:
    """Export Chrome JSON, add distributedInfo (trace analysers read the rank there), gzip it.

    The rank goes in as text at the top of the document: parsing and re-serializing a trace of
    several MB would cost more than the profiled steps themselves.
    """
    info = {"rank": rank, "world_size": world_size, "backend": "none" if world_size == 1 else "ddp"}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        text = raw.read_text()
    if '"distributedInfo"' not in text[:4096]:
        text = "{\n  \"distributedInfo\": " + json.dumps(info) + "," + text.lstrip()[1:]
    worker = f"{socket.gethostname()}_{os.getpid()}"
    if world_size > 1:
        worker = f"rank{rank}_{worker}"  # one trace per rank; TensorBoard shows each as a worker
    path = trace_dir / f"{worker}.{int(time.time() * 1000)}{TRACE_SUFFIX}"
    return write_atomic(path, lambda handle: _gzip_to(handle, text), binary=True)


def _gzip_to(handle, text: str) -> None:
    # No file name in the gzip header: it would be the temp file's.
    with gzip.GzipFile(filename="", fileobj=handle, mode="wb", compresslevel=5) as packed:
        packed.write(text.encode())


def scheduled_profiler(trace_dir: Path, device_type: str, with_stack: bool = False, rank: int = 0,
                       world_size: int = 1, written: list[Path] | None = None, brief: bool = False) -> profile:
    """A torch.profiler with the workbench's schedule that writes its trace into trace_dir (appended
    to `written`). The caller enters it and calls .step() once per training step."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    written = [] if written is None else written
    on_ready = lambda prof: written.append(_write_trace(prof, trace_dir, rank, world_size))
    return profile(activities=activities(device_type), record_shapes=True, profile_memory=True,
                   with_stack=with_stack, on_trace_ready=on_ready, schedule=_schedule(brief))


def _schedule(brief: bool):
    wait, warmup, active = BRIEF_SCHEDULE if brief else (WAIT_STEPS, WARMUP_STEPS, ACTIVE_STEPS)
    with warnings.catch_warnings():  # "won't be using warmup": chosen for the brief probe (see above)
        warnings.filterwarnings("ignore", message=".*warmup.*", category=UserWarning)
        return schedule(wait=wait, warmup=warmup, active=active, repeat=1)


def capture(step_fn: Callable[[int], None], trace_dir: Path, device_type: str, with_stack: bool = False,
            rank: int = 0, world_size: int = 1, brief: bool = False) -> dict:
    """Run step_fn(i) under the profiler's schedule (BRIEF_SCHEDULE if brief); return the trace path
    and the pass's wall time."""
    written: list[Path] = []
    start = time.perf_counter()
    with scheduled_profiler(trace_dir, device_type, with_stack, rank, world_size, written, brief) as prof:
        for i in range(trace_steps(brief)):
            step_fn(i)
            prof.step()
    return {"file": str(written[-1]) if written else None, "wall_s": time.perf_counter() - start,
            "size_mb": written[-1].stat().st_size / 2**20 if written else 0.0}
