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
from workbench.trace import memory_timeline as timeline
from workbench.trace.regions import REGIONS

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


def memory_timeline(step_fn: Callable[[int], None], device: str, model, optimizer) -> dict:
    """One more step under torch.profiler's memory profiler (it needs shapes, memory and Python stacks,
    too heavy for the trace itself): the memory by category over the step and the moment of its peak
    (trace/memory_timeline.py). Weights, optimizer state and gradients are told by the tensors
    themselves (torch's own labels miss them on a CPU: weights as "input", the state as "temporary");
    the rest keeps torch's label (activation, temporary, autograd detail, input). Uses the profiler's
    memory-timeline internals (export_memory_timeline, their public face, is deprecated in torch 2.14);
    the caller records a failure and goes on."""
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    known = _known_storages(model, optimizer)
    grads, hooks = _gradient_sightings(model)
    try:
        with profile(activities=activities(device.split(":")[0]), record_shapes=True, profile_memory=True,
                     with_stack=True) as prof:
            step_fn(0)
    finally:
        for hook in hooks:
            hook.remove()
    profiled = MemoryProfileTimeline(prof._memory_profile())
    events = [(t, action.name, key, version, numbytes) for t, action, (key, version), numbytes in profiled.timeline]
    labels = lambda key, version: _torch_label(profiled.categories, key, version)
    times, sizes = timeline.coalesce(events, _device_of(device), known, grads, labels)
    tree = prof.profiler.kineto_results.experimental_event_tree()
    regions = [(node.name, node.start_time_ns / 1000, node.end_time_ns / 1000) for node in _walk(tree)
               if node.name in REGIONS]
    return timeline.summarize(times, sizes, list(timeline.CATEGORIES), regions)


def _known_storages(model, optimizer) -> dict[int, str]:
    """Storage pointers of the tensors that live through the step: weights and optimizer state."""
    inner = getattr(optimizer, "optim", optimizer)  # ZeRO-1's shard
    known = {t.untyped_storage().data_ptr(): "optimizer_state" for s in inner.state.values() for t in s.values()
             if hasattr(t, "untyped_storage")}
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        known[local.untyped_storage().data_ptr()] = "weights"
    return known


def _gradient_sightings(model):
    """(pointer, time in ns) of each gradient once accumulated: which allocation is a gradient."""
    import torch

    seen: list[tuple[int, int]] = []
    def saw(p) -> None:
        grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
        seen.append((grad.untyped_storage().data_ptr(), time.time_ns()))
    hooks = [p.register_post_accumulate_grad_hook(saw) for p in model.parameters()
             if p.requires_grad and isinstance(p, torch.Tensor)]
    return seen, hooks


def _torch_label(categories, key, version) -> str | None:
    try:
        category = categories.get(key, version)
    except Exception:  # a key the categorizer never saw
        return None
    return category.name.lower() if category is not None else None


def _device_of(device: str):
    import torch

    return torch.device(device)


def _walk(nodes):
    for node in nodes:
        yield node
        yield from _walk(node.children)


def cuda_snapshot(step_fn: Callable[[int], None], path: Path) -> Path:
    """One step with the CUDA caching allocator's history recorded, dumped where pytorch.org/memory_viz
    opens it (every allocation with its stack, the segments, the moment of the peak)."""
    import torch

    torch.cuda.memory._record_memory_history(max_entries=100_000)
    try:
        step_fn(0)
        torch.cuda.memory._dump_snapshot(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    return path


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
