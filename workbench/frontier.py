"""The memory/throughput frontier: every configuration a run measured as a point (its peak memory and
its paired speed against the baseline), out-of-memory failures as points of their own, and the choice a
budget makes: the fastest measured configuration whose peak fits.

Pure and torch-free: the ladder chooses with it, the report draws and words it from the same points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from workbench.config import MEASUREMENT_FIELDS

MEASURED, OUT_OF_MEMORY = "measured", "out of memory"
# The words a failure reads as when it ran out of memory: CUDA's OutOfMemoryError and the CPU
# allocator's (measure/failures.py writes the first; the second is the allocator's own text).
OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")
# A trade-off that changes the optimization (another optimizer) is chosen only when the user allows it.
OPTIMIZER_CHANGE = "optimizer"


@dataclass(frozen=True)
class Point:
    name: str
    peak_mib: float | None
    speedup: float | None        # paired (or chained) against the baseline
    throughput: float | None     # samples/s: the baseline's pooled throughput times the speedup
    status: str                  # MEASURED or OUT_OF_MEMORY
    changes_optimizer: bool = False


def is_out_of_memory(reason: str | None) -> bool:
    text = (reason or "").lower()
    return any(marker in text for marker in OOM_MARKERS)


def points_from(docs: Iterable[Mapping]) -> list[Point]:
    """A point per measured stage document (the headline's 'final' repeats a point: left out)."""
    docs = list(docs)
    base = next((d for d in docs if d.get("stage") == "baseline"), None)
    base_rate = _rate(base) if base else None
    points = []
    for doc in docs:
        if doc.get("stage") == "final":
            continue
        point = _point(doc, base_rate)
        if point is not None:
            points.append(point)
    return points


def _point(doc: Mapping, base_rate: float | None) -> Point | None:
    changes = doc.get("changes") == OPTIMIZER_CHANGE
    if doc.get("status") == "failed" and is_out_of_memory(doc.get("reason")):
        return Point(doc["stage"], None, None, None, OUT_OF_MEMORY, changes)
    metrics = doc.get("metrics") or {}
    if doc.get("status") in ("failed", "skipped", "cancelled") or metrics.get("peak_memory_mb") is None:
        return None
    if doc.get("adopted_config") and not same_config(doc["adopted_config"], doc.get("config") or {}):
        # Adopted on its second look onto another configuration: its speed stands on the one it joined,
        # its peak on the one its pass measured. No configuration has both; the budget measures the
        # joined one itself (budget+start).
        return None
    speedup = 1.0 if doc["stage"] == "baseline" else (metrics.get("speedup_vs_baseline") or {}).get("ratio")
    throughput = base_rate * speedup if base_rate and speedup else None
    return Point(doc["stage"], metrics["peak_memory_mb"], speedup, throughput, MEASURED, changes)


def same_config(a: Mapping, b: Mapping) -> bool:
    """Two configurations (RunConfig dicts) alike but for how they were measured (rounds, steps)."""
    measured = set(MEASUREMENT_FIELDS)
    return {k: v for k, v in a.items() if k not in measured} == {k: v for k, v in b.items() if k not in measured}


def _rate(doc: Mapping) -> float | None:
    rate = ((doc.get("metrics") or {}).get("throughput") or {})
    return rate.get("median") if isinstance(rate, Mapping) else rate


def fitting(points: Iterable[Point], budget_mib: float, allow_optimizer_change: bool) -> list[Point]:
    return [p for p in points if p.status == MEASURED and p.speedup is not None and p.peak_mib <= budget_mib
            and (allow_optimizer_change or not p.changes_optimizer)]


def choose(points: Iterable[Point], budget_mib: float, allow_optimizer_change: bool = False) -> Point | None:
    """The fastest point that fits (the lower peak between equals); None when nothing fits."""
    candidates = fitting(points, budget_mib, allow_optimizer_change)
    return max(candidates, key=lambda p: (p.speedup, -p.peak_mib), default=None)


def smallest(points: Iterable[Point]) -> Point | None:
    measured = [p for p in points if p.status == MEASURED]
    return min(measured, key=lambda p: p.peak_mib, default=None)


def pareto(points: Iterable[Point]) -> list[Point]:
    """The measured points no other point beats on both peak and speed, by peak."""
    measured = [p for p in points if p.status == MEASURED and p.speedup is not None]
    front = [p for p in measured if not any(_dominates(q, p) for q in measured)]
    return sorted(front, key=lambda p: p.peak_mib)


def _dominates(q: Point, p: Point) -> bool:
    return q.peak_mib <= p.peak_mib and q.speedup >= p.speedup and (q.peak_mib < p.peak_mib or q.speedup > p.speedup)


def fastest(points: Iterable[Point]) -> Point | None:
    measured = [p for p in points if p.status == MEASURED and p.speedup is not None]
    return max(measured, key=lambda p: p.speedup, default=None)


def fits_line(chosen: Point, budget_mib: float, best: Point | None) -> str:
    """The report's first line when a configuration fits."""
    rate = f"{chosen.throughput:,.0f} samples/s" if chosen.throughput else f"{chosen.speedup:.2f}x the baseline"
    share = f", {chosen.speedup / best.speedup:.2f}x of the unconstrained best ({best.name})" if best and best.speedup else ""
    return f"fits: {chosen.peak_mib:,.0f} MiB of the {budget_mib:,.0f} MiB budget at {rate}{share} ({chosen.name})"


def nothing_fits_line(points: list[Point], budget_mib: float, what_would: str) -> str:
    low = smallest(points)
    where = f"the smallest was {low.peak_mib:,.0f} MiB ({low.name})" if low else "no configuration was measured"
    return f"nothing measured fits the {budget_mib:,.0f} MiB budget; {where}; what would: {what_would}"
