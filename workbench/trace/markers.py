"""Where the steps and the regions of a step are, in any torch.profiler trace (PyTorch 1.8 to today).

The workbench's own loop names its regions (``regions.REGIONS``); a user's loop, a Lightning fit or
an old trace does not. Then the regions come from markers PyTorch and Lightning write themselves:

- steps: ``ProfilerStep#N`` (only with a profiler schedule); else the ends of ``Optimizer.step#...``
  calls; else the whole window as one step.
- data_loading: ``enumerate(DataLoader)#...__next__``; Lightning's ``train_dataloader_next``.
- optimizer_step: ``Optimizer.step#<Name>.step``, ``Optimizer.zero_grad#...``; Lightning's
  ``optimizer_step`` / ``optimizer_zero_grad``.
- backward: the autograd engine's work (``autograd::engine::evaluate_function`` on any thread of the
  loop's process: the backward thread on a GPU); Lightning's ``[Strategy]...backward``.
- host_to_device: the loop thread's top-level op that launched a host-to-device copy (GPU traces).
- forward: Lightning's ``training_step``; else the step's CPU ops from the first one outside the
  regions above up to backward, inferred, and said so.

The choice is made per region: a region the trace names itself (``regions.REGIONS``) comes from that
annotation alone, every other region from the markers above, so a user's loop that names only its
"forward" still has its fetch, backward and optimizer step read. Each source found is named in
``markers`` so a reader knows how far to trust each share. Old traces capitalize their categories
("Operator", "Kernel", ...): ``normalize`` maps them to today's names. No torch import.
"""
from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from typing import Any

from workbench.trace.regions import BACKWARD, DATA_LOADING, FORWARD, HOST_TO_DEVICE, OPTIMIZER_STEP, REGIONS

STEP_PREFIX = "ProfilerStep#"
HOST_CATEGORIES = frozenset({"user_annotation", "cpu_op"})
# PyTorch 1.8/1.9 (and torch-tb-profiler) spell categories differently; lower-cased lookup.
CATEGORY_ALIASES = {"operator": "cpu_op", "kernel": "kernel", "memcpy": "gpu_memcpy", "memset": "gpu_memset",
                    "runtime": "cuda_runtime", "driver": "cuda_driver"}
LIGHTNING_PREFIX = "[pl][profile]"  # Lightning's PyTorchProfiler prefixes its record_function ranges
# Lightning action names (lightning/pytorch/loops/training_epoch_loop.py, trainer/call.py) by suffix.
LIGHTNING_REGIONS = ((".train_dataloader_next", DATA_LOADING), (".batch_to_device", HOST_TO_DEVICE),
                     (".training_step", FORWARD), (".backward", BACKWARD),
                     (".optimizer_step", OPTIMIZER_STEP), (".optimizer_zero_grad", OPTIMIZER_STEP))
PYTORCH_REGIONS = (("enumerate(DataLoader)", DATA_LOADING), ("Optimizer.step#", OPTIMIZER_STEP),
                   ("Optimizer.zero_grad#", OPTIMIZER_STEP))
BACKWARD_OP = re.compile(r"^autograd::engine::evaluate_function|Backward\d*$|AccumulateGrad")
OWN_SOURCE = "workbench regions"  # the source of a range named after one of regions.REGIONS


def normalize(events: list[dict]) -> list[dict]:
    """Complete events ("X") with today's category names (in place: it is idempotent)."""
    complete = [e for e in events if e.get("ph") == "X" and "ts" in e]
    for event in complete:
        cat = event.get("cat")
        if isinstance(cat, str):
            event["cat"] = CATEGORY_ALIASES.get(cat.lower(), cat)
    return complete


def end(event: dict) -> float:
    return event["ts"] + event.get("dur", 0)


def thread(event: dict) -> tuple[Any, Any]:
    return event.get("pid"), event.get("tid")


def _host(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("cat") in HOST_CATEGORIES]


def _named(events: list[dict], prefix: str) -> list[dict]:
    return [e for e in _host(events) if e.get("name", "").startswith(prefix)]


def loop_thread(events: list[dict]) -> tuple[Any, Any] | None:
    """The thread that runs the loop: the one with the step (or optimizer, or loader) markers, else
    the one with the most host time."""
    for prefix in (STEP_PREFIX, "Optimizer.step#", "enumerate(DataLoader)"):
        marked = _named(events, prefix)
        if marked:
            return Counter(thread(e) for e in marked).most_common(1)[0][0]
    busy: Counter = Counter()
    for event in _host(events):
        busy[thread(event)] += event.get("dur", 0)
    return busy.most_common(1)[0][0] if busy else None


def _step(number: int, start: float, stop: float) -> dict:
    return {"name": f"{STEP_PREFIX}{number}", "number": number, "ts": start, "dur": stop - start}


def find_steps(events: list[dict]) -> tuple[list[dict], str, tuple | None]:
    """(steps, how they were found, loop thread); steps are {"name", "number", "ts", "dur"}."""
    where = loop_thread(events)
    mine = [e for e in _host(events) if thread(e) == where]
    marked = sorted((e for e in mine if e["name"].startswith(STEP_PREFIX)), key=lambda e: e["ts"])
    if marked:
        return marked, "ProfilerStep#N", where
    ends = sorted(end(e) for e in mine if e["name"].startswith("Optimizer.step#"))
    if len(ends) >= 2:
        steps = [_step(i + 1, low, high) for i, (low, high) in enumerate(zip(ends, ends[1:]))]
        return steps, "between Optimizer.step ends (no ProfilerStep#N: profiler ran without a schedule)", where
    if not mine:
        return [], "none", where
    window = _step(0, min(e["ts"] for e in mine), max(end(e) for e in mine))
    return [window], "whole window as one step (no ProfilerStep#N or Optimizer.step markers)", where


DEVICE_CATEGORIES = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})


def _device_ends(steps: list[dict], events: list[dict]) -> list[float | None]:
    """Per step, the end of the last GPU event whose launch (runtime call, by correlation) lies in it."""
    launched: dict = {}
    for event in events:
        if event.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in event.get("args", {}):
            launched.setdefault(event["args"]["correlation"], event["ts"])
    starts, ends = [s["ts"] for s in steps], [None] * len(steps)
    for event in (e for e in events if e.get("cat") in DEVICE_CATEGORIES):
        ts = launched.get(event.get("args", {}).get("correlation"))
        i = bisect_right(starts, ts) - 1 if ts is not None else -1
        if i >= 0 and ts < end(steps[i]):
            ends[i] = max(ends[i] or end(event), end(event))
    return ends


def extend_to_device(steps: list[dict], events: list[dict]) -> tuple[list[dict], bool]:
    """torch-tb-profiler's rule on GPU traces: a step lasts until the GPU work its host side launched
    ends, and the next step starts no earlier (a fetch overlapping the GPU's tail of the step before
    is not the GPU waiting for data). Returns (steps, whether any step changed)."""
    ends = _device_ends(steps, events)
    if not any(e is not None for e in ends):
        return steps, False
    out, previous = [], steps[0]["ts"]
    for step, device_end in zip(steps, ends):
        start = max(previous, step["ts"])
        stop = max(end(step), device_end if device_end is not None else start)
        out.append({**step, "ts": start, "dur": stop - start})
        previous = stop
    return out, any(a["ts"] != b["ts"] or a["dur"] != b["dur"] for a, b in zip(out, steps))


def named_region(name: str) -> tuple[str, str] | None:
    """(region, source) for an annotation PyTorch or Lightning writes, else None."""
    if name in REGIONS:
        return name, OWN_SOURCE
    bare = name[len(LIGHTNING_PREFIX):] if name.startswith(LIGHTNING_PREFIX) else name
    for suffix, region in LIGHTNING_REGIONS:
        if bare.endswith(suffix) and (bare.startswith("[") or bare == suffix[1:]):
            return region, "Lightning " + suffix[1:]
    for prefix, region in PYTORCH_REGIONS:
        if name.startswith(prefix):
            return region, prefix.rstrip("#") + "#..."
    return None


class StepRegions:
    """Region intervals of every step, and the sources they came from."""

    def __init__(self, events: list[dict], where: tuple | None) -> None:
        mine = [e for e in _host(events) if thread(e) == where]
        named = [(e, named_region(e["name"])) for e in mine]
        named = [(e, found) for e, found in named if found]
        # Per region, not per trace: one user range that happens to be called "forward" must not hide
        # the DataLoader, optimizer and autograd markers of the regions the user did not name.
        self.annotated = {region for _, (region, source) in named if source == OWN_SOURCE}
        self.named = [(e, (region, source)) for e, (region, source) in named
                      if source == OWN_SOURCE or region not in self.annotated]
        self.top = _top_level(mine)
        self.where = where  # the loop thread
        self.backward_ops = [e for e in _host(events) if e.get("pid") == (where or (None,))[0]
                             and e.get("cat") == "cpu_op" and BACKWARD_OP.search(e["name"])]
        self.h2d_ops = _h2d_launchers(events, self.top)
        self.sources: dict[str, set[str]] = defaultdict(set)

    def intervals(self, start: float, stop: float) -> list[tuple[float, float, str]]:
        """(start, end, region) clipped to [start, stop]."""
        overlapping = [(e, found) for e, found in self.named if start < end(e) and e["ts"] < stop]
        found = [(e["ts"], end(e), region) for e, (region, _) in overlapping]
        for _, (region, source) in overlapping:
            self.sources[region].add(source)
        found += self._inferred(start, stop, found)
        clipped = [(max(a, start), min(b, stop), region) for a, b, region in found]
        return [iv for iv in clipped if iv[1] > iv[0]]

    def _inferred(self, start: float, stop: float, named: list[tuple]) -> list[tuple]:
        """Regions the trace does not annotate, inferred from ops (none when it annotates them all)."""
        inside = lambda e: start <= e["ts"] < stop
        extra = [] if HOST_TO_DEVICE in self.annotated else \
            [(e["ts"], end(e), HOST_TO_DEVICE) for e in self.h2d_ops if inside(e)]
        if extra:
            self.sources[HOST_TO_DEVICE].add("op launching a host-to-device copy")
        have = self.annotated | {region for a, b, region in named if a < stop and b > start}
        if BACKWARD not in have:
            extra += self._backward(start, stop)
        if FORWARD not in have:
            extra += self._forward(start, stop, named + extra)
        return extra

    def _backward(self, start: float, stop: float) -> list[tuple]:
        ops = [e for e in self.backward_ops if start <= e["ts"] < stop]
        if not ops:
            return []
        self.sources[BACKWARD].add("autograd engine ops (first to last, all threads)")
        return [(min(e["ts"] for e in ops), max(end(e) for e in ops), BACKWARD)]

    def _forward(self, start: float, stop: float, known: list[tuple]) -> list[tuple]:
        """From the first top-level op outside every known region up to backward (inferred)."""
        backward = [a for a, _, region in known if region == BACKWARD and start <= a < stop]
        limit = min(backward) if backward else stop
        covered = lambda e: any(a <= e["ts"] < b for a, b, _ in known)
        free = [e for e in self.top if start <= e["ts"] < limit and not covered(e)]
        if not free:
            return []
        if not backward:  # no backward to end at: only the ops themselves, not the gaps
            self.sources[FORWARD].add("top-level CPU ops outside the other regions (no backward seen)")
            return [(e["ts"], end(e), FORWARD) for e in free]
        self.sources[FORWARD].add("CPU ops from the first outside the other regions up to backward (inferred)")
        return [(min(e["ts"] for e in free), limit, FORWARD)]

    def describe(self, steps: str) -> dict[str, str]:
        """{"steps": ..., region: "source, source" or "not found"} for the summary's "markers"."""
        return {"steps": steps, **{region: ", ".join(sorted(self.sources[region])) or "not found"
                                   for region in REGIONS}}


def _top_level(mine: list[dict]) -> list[dict]:
    """Host events of one thread with no enclosing event other than a ProfilerStep."""
    top, reach = [], float("-inf")
    for event in sorted((e for e in mine if not e["name"].startswith(STEP_PREFIX)),
                        key=lambda e: (e["ts"], -e.get("dur", 0))):
        if event["ts"] >= reach:
            top.append(event)
            reach = end(event)
    return top


def _h2d_launchers(events: list[dict], top: list[dict]) -> list[dict]:
    """Top-level loop-thread ops whose runtime call launched a host-to-device memcpy."""
    copies = {e.get("args", {}).get("correlation") for e in events
              if e.get("cat") == "gpu_memcpy" and "HtoD" in e.get("name", "")}
    copies.discard(None)
    calls = sorted(e["ts"] for e in events if e.get("cat") == "cuda_runtime"
                   and e.get("args", {}).get("correlation") in copies)
    # A call lies inside the op when the first call at or after the op's start begins before its end.
    return [op for op in top if bisect_left(calls, op["ts"]) < len(calls)
            and calls[bisect_left(calls, op["ts"])] < end(op)]
