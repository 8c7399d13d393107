"""Communication in a multi-process trace: how much of each step the collectives take (no torch).

DDP's all-reduces show up as CPU-side ops (gloo, c10d, nccl). We take the union of their intervals
on any thread inside the profiled steps, so overlapping buckets count once, and divide by the
steps' time. With NCCL the kernels run on the GPU as well: those count too.
"""
from __future__ import annotations

import re
from pathlib import Path

from workbench.results import trace_files
from workbench.trace.analyze import STEP_PREFIX, union_us, load_trace

COLLECTIVE = re.compile(r"all_?reduce|allgather|all_gather|reduce_scatter|broadcast|nccl|gloo|c10d::", re.I)


def _steps(events: list[dict]) -> list[tuple[float, float]]:
    return [(e["ts"], e["ts"] + e.get("dur", 0)) for e in events
            if e.get("ph") == "X" and str(e.get("name", "")).startswith(STEP_PREFIX)]


def _clipped(events: list[dict], windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    spans = []
    for event in events:
        start, end = event["ts"], event["ts"] + event.get("dur", 0)
        for low, high in windows:
            if end > low and start < high:
                spans.append((max(start, low), min(end, high)))
    return spans


def communication(trace: dict) -> dict:
    """Share of the profiled steps spent in collectives, and the time per step (ms)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    windows = _steps(events)
    step_us = sum(high - low for low, high in windows)
    collectives = [e for e in events if COLLECTIVE.search(str(e.get("name", "")))]
    comm_us = union_us(_clipped(collectives, windows))
    return {"share": comm_us / step_us if step_us else 0.0,
            "ms_per_step": comm_us / 1000 / max(len(windows), 1), "ops": len(collectives),
            "rank": trace.get("distributedInfo", {}).get("rank")}


def per_rank(trace_dir: Path) -> list[dict]:
    """Communication of every rank's trace in a stage folder, rank order."""
    found = [communication(load_trace(path)) for path in trace_files(trace_dir)]
    return sorted(found, key=lambda row: row["rank"] if row["rank"] is not None else -1)
