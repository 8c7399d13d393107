"""Communication in a multi-process trace: how much of each step the collectives take, how much of
that the rank's own work overlaps, and how much is exposed: time in collectives with nothing else of
the rank's running, where it waits for the other ranks or for the wire (no torch).

Two timelines, chosen by what the trace holds:
- NCCL kernels (a GPU trace): the collectives are those kernels; the rank's own work is the other GPU
  kernels and copies (on other streams).
- otherwise (gloo on a CPU, or any host-side collective): the collectives are the host events whose
  names say so (gloo, c10d, all_reduce, ...; DDP runs gloo's on a background thread); the rank's own
  work is its batch fetches and every other host operator, on any thread, and any GPU work.
Intervals are merged before they are measured (overlapping buckets count once) and clipped to the
profiled steps, found as the breakdown finds them, so the figures per step sit beside its step time.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from collections import defaultdict
from pathlib import Path

from workbench.results import trace_files
from workbench.trace.analyze import GPU_CATEGORIES, load_trace, merged, union_us
from workbench.trace.collectives import COLLECTIVE, NCCL_KERNEL
from workbench.trace.markers import STEP_PREFIX, end, extend_to_device, find_steps, named_region, normalize, thread
from workbench.trace.regions import DATA_LOADING

# Host ops that only wrap a collective's bookkeeping (torch's comms tracing): not the rank's own work.
COLLECTIVE_WRAPPER = re.compile(r"^record_param_comms")
GPU_TIMELINE, HOST_TIMELINE = "gpu: NCCL kernels", "host: collective ops"

Span = tuple[float, float]


def _windows(events: list[dict]) -> list[Span]:
    steps, _, _ = find_steps(events)
    steps, _ = extend_to_device(steps, events) if steps else (steps, False)
    return [(step["ts"], end(step)) for step in steps]


def _clipped(spans: list[Span], windows: list[Span]) -> list[Span]:
    return [(max(start, low), min(stop, high)) for start, stop in spans for low, high in windows
            if stop > low and start < high]


def overlap_us(first: list[Span], second: list[Span]) -> float:
    """Length of the intersection of two interval sets' unions."""
    a, b, total, i, j = merged(first), merged(second), 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _name(event: dict) -> str:
    return str(event.get("name", ""))


def _is_host_collective(event: dict) -> bool:
    return event.get("cat") in ("cpu_op", "user_annotation") and bool(COLLECTIVE.search(_name(event)))


def _within(spans: list[Span], event: dict) -> bool:
    """Whether the event lies inside one of the merged, sorted spans."""
    i = bisect_right(spans, (event["ts"], float("inf"))) - 1
    return i >= 0 and end(event) <= spans[i][1]


def _host_work(events: list[dict]) -> list[dict]:
    """Host events that are the rank's own work: its batch fetches, and operators that are not
    annotations (a region or a step wraps the waiting too), not collectives, and not inside a
    collective on the same thread."""
    inside: dict = defaultdict(list)
    for event in events:
        if _is_host_collective(event) or COLLECTIVE_WRAPPER.match(_name(event)):
            inside[thread(event)].append((event["ts"], end(event)))
    covers = {where: merged(spans) for where, spans in inside.items()}
    return [e for e in events if _is_fetch(e) or e.get("cat") == "cpu_op" and not _is_host_collective(e)
            and not _name(e).startswith(STEP_PREFIX) and named_region(_name(e)) is None
            and not _within(covers.get(thread(e), []), e)]


def _is_fetch(event: dict) -> bool:
    """A batch fetch is the rank's own work even where no operator runs in it (a slow disk, a sleep)."""
    return (named_region(_name(event)) or (None,))[0] == DATA_LOADING


def _timeline(events: list[dict]) -> tuple[str, list[dict], list[dict]]:
    """(which timeline, collective events, the rank's own work events)."""
    gpu = [e for e in events if e.get("cat") in GPU_CATEGORIES]
    nccl = [e for e in gpu if NCCL_KERNEL.search(_name(e))]
    others = [e for e in gpu if not NCCL_KERNEL.search(_name(e))]
    if nccl:
        return GPU_TIMELINE, nccl, others
    return HOST_TIMELINE, [e for e in events if _is_host_collective(e)], _host_work(events) + others


def _gpu_kernel_share(events: list[dict]) -> float | None:
    """NCCL kernels' share of all GPU kernel time (summed durations, as the breakdown's kinds are)."""
    kernels = [e for e in events if e.get("cat") == "kernel"]
    total = sum(e.get("dur", 0) for e in kernels)
    return sum(e.get("dur", 0) for e in kernels if NCCL_KERNEL.search(_name(e))) / total if total else None


def communication(trace: dict) -> dict:
    """Per step (ms): time in collectives, the part of it with nothing else of the rank's running
    (waiting), and shares: of the step, overlapped by the rank's own work, of the GPU's kernel time."""
    events = normalize(trace.get("traceEvents", []))
    windows = _windows(events)
    step_us, steps = sum(high - low for low, high in windows), max(len(windows), 1)
    timeline, collectives, work = _timeline(events)
    spans = merged(_clipped([(e["ts"], end(e)) for e in collectives], windows))
    comm_us = union_us(spans)
    overlapped_us = overlap_us(spans, _clipped([(e["ts"], end(e)) for e in work], windows))
    return {"share": comm_us / step_us if step_us else 0.0, "ms_per_step": comm_us / 1000 / steps,
            "waiting_ms_per_step": (comm_us - overlapped_us) / 1000 / steps,
            "overlap_share": overlapped_us / comm_us if comm_us else None, "ops": len(collectives),
            "timeline": timeline, "gpu_kernel_share": _gpu_kernel_share(events),
            "rank": trace.get("distributedInfo", {}).get("rank")}


def per_rank(trace_dir: Path) -> list[dict]:
    """Communication of every rank's trace in a stage folder, rank order."""
    found = [communication(load_trace(path)) for path in trace_files(trace_dir)]
    return sorted(found, key=lambda row: row["rank"] if row["rank"] is not None else -1)
