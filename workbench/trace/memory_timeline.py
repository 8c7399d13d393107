"""Memory over one training step by category, and the moment of its peak (torch-free).

The capture side (trace/capture.memory_timeline) profiles one step with torch.profiler's memory
profiler and hands its allocation events here with what the tensors themselves say: which storages
are weights and optimizer state (alive before the step), and when each gradient was accumulated.
Those three are told by identity (torch's own labels miss them on a CPU, calling the weights "input"
and an existing optimizer state "temporary"); every other allocation keeps torch's label (activations,
autograd's saved detail counted with them, temporaries, the input batch). The timeline is cut to a
plottable size and its peak named by the step region it falls in (forward, backward, optimizer_step).
"""
from __future__ import annotations

import bisect
from typing import Sequence

from workbench.trace.regions import COMPUTE_PARTS

MIB = 2**20
MAX_POINTS = 400
CATEGORIES = ("weights", "gradients", "optimizer_state", "activations", "temporaries", "input", "other")
FROM_TORCH = {"activation": "activations", "autograd_detail": "activations", "temporary": "temporaries",
              "input": "input", "gradient": "gradients", "optimizer_state": "optimizer_state"}
# A gradient seen by its hook at time t (ns) is the allocation at its address alive then; the two
# clocks (the profiler's, Python's) may differ by a little.
SIGHTING_SLACK_NS = 2_000_000


def coalesce(events, device, known: dict[int, str], sightings: list[tuple[int, int]], labels) -> tuple[list, list]:
    """(times in µs, bytes per CATEGORIES at each time) from the memory profiler's events
    (t_ns, action name, key, version, bytes) on one device; known: storage pointer -> weights or
    optimizer_state for tensors alive before the step; sightings: (pointer, ns) of each gradient."""
    events = [e for e in events if getattr(e[2], "device", None) == device]
    lifetimes = _lifetimes(events)
    gradients = {key for ptr, seen in sightings for key in _alive_at(lifetimes, ptr, seen)}

    def category(key, version) -> int:
        if key in gradients:
            return CATEGORIES.index("gradients")
        if lifetimes.get(key, (None, None, False))[2] and _ptr(key) in known:
            return CATEGORIES.index(known[_ptr(key)])
        return CATEGORIES.index(FROM_TORCH.get(labels(key, version), "other"))
    return _coalesced(events, category)


def _ptr(key) -> int | None:
    return getattr(getattr(key, "storage", None), "ptr", None)


def _lifetimes(events) -> dict:
    """key -> (created ns, destroyed ns or None, existed before the step)."""
    spans: dict = {}
    for t, action, key, _, _ in events:
        if action in ("PREEXISTING", "CREATE") and key not in spans:
            spans[key] = (t, None, action == "PREEXISTING")
        elif action == "DESTROY" and key in spans:
            spans[key] = (spans[key][0], t, spans[key][2])
    return spans


def _alive_at(lifetimes: dict, ptr: int, seen_ns: int) -> list:
    return [key for key, (born, died, _) in lifetimes.items() if _ptr(key) == ptr
            and born - SIGHTING_SLACK_NS <= seen_ns and (died is None or seen_ns <= died + SIGHTING_SLACK_NS)][-1:]


def _coalesced(events, category) -> tuple[list, list]:
    times: list[float] = []
    sizes: list[list[float]] = []
    first = min((t for t, *_ in events if t > 0), default=0)
    for t, action, key, version, numbytes in events:
        t = first / 1000 if t < 0 else t / 1000  # ns -> µs; what existed before the step, at its start
        if not times or t != times[-1]:
            times.append(t)
            sizes.append(sizes[-1].copy() if sizes else [0.0] * len(CATEGORIES))
        if action in ("PREEXISTING", "CREATE"):
            sizes[-1][category(key, version)] += numbytes
        elif action == "INCREMENT_VERSION":
            sizes[-1][category(key, version)] -= numbytes
            sizes[-1][category(key, version + 1)] += numbytes
        elif action == "DESTROY":
            sizes[-1][category(key, version)] -= numbytes
    return times, sizes


def summarize(times_us: Sequence[float], sizes: Sequence[Sequence[float]], categories: Sequence[str],
              regions: Sequence[tuple[str, float, float]]) -> dict:
    """{times_ms, categories, sizes_mib (one list per category), regions, peak} from the coalesced
    timeline (sizes[i]: bytes per category at times_us[i]) and the step's regions (name, start, end, µs)."""
    if not times_us:
        return {"times_ms": [], "categories": list(categories), "sizes_mib": [[] for _ in categories],
                "regions": [], "peak": None, "phases": {}}
    start = times_us[0]
    totals = [sum(row) for row in sizes]
    peak = max(range(len(totals)), key=totals.__getitem__)
    keep = _kept_indices(len(times_us), peak)
    return {"times_ms": [(times_us[i] - start) / 1000 for i in keep], "categories": list(categories),
            "sizes_mib": [[sizes[i][c] / MIB for i in keep] for c in range(len(categories))],
            "regions": [{"name": name, "start_ms": (a - start) / 1000, "end_ms": (b - start) / 1000}
                        for name, a, b in regions],
            "peak": {"mib": totals[peak] / MIB, "at_ms": (times_us[peak] - start) / 1000,
                     "during": region_at(times_us[peak], regions), "by_category_mib": _named(sizes[peak], categories)},
            "phases": phase_peaks(times_us, sizes, totals, categories, regions)}


def _named(row: Sequence[float], categories: Sequence[str]) -> dict:
    return {name: row[c] / MIB for c, name in enumerate(categories) if row[c]}


def phase_peaks(times_us: Sequence[float], sizes: Sequence[Sequence[float]], totals: Sequence[float],
                categories: Sequence[str], regions: Sequence[tuple[str, float, float]]) -> dict:
    """Each step part's own highest point (over all its regions: accumulated micro-batches have one
    forward each), by category: a memory move changes each part differently (more micro-batches shrink
    forward and backward, not the optimizer step), so the model predicts each part, then their maximum."""
    found: dict = {}
    for name, a, b in regions:
        if name not in COMPUTE_PARTS:
            continue
        # What was held as it began counts too: the last point before it is in effect at its start.
        inside = range(max(0, bisect.bisect_left(times_us, a) - 1), bisect.bisect_right(times_us, b))
        if inside:
            top = max(inside, key=totals.__getitem__)
            if name not in found or totals[top] / MIB > found[name]["mib"]:
                found[name] = {"mib": totals[top] / MIB, "by_category_mib": _named(sizes[top], categories)}
    return found


def _kept_indices(count: int, peak: int) -> list[int]:
    """Every k-th point, the last one and the peak: the chart keeps its shape and its maximum."""
    every = max(1, count // MAX_POINTS)
    return sorted(set(range(0, count, every)) | {count - 1, peak})


def region_at(t_us: float, regions: Sequence[tuple[str, float, float]]) -> str:
    """The step region a moment falls in; between them, the one that ended last before it."""
    inside = [name for name, a, b in regions if a <= t_us <= b and name in COMPUTE_PARTS]
    if inside:
        return inside[-1]
    before = [(b, name) for name, a, b in regions if b < t_us]
    return f"after {max(before)[1]}" if before else "before the step's regions"
