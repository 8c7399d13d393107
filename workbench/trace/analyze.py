"""Trace analysis: a torch.profiler Chrome trace -> step breakdown, device activity, top ops, memory.

Plain Python on purpose (no torch import): the report and the tests read traces without a PyTorch
install, and torch-tb-profiler cannot be relied on (0.4.3 drops user_annotation events, so the
regions below would read 0). In the manner of HolisticTraceAnalysis, each analyzer takes the loaded
trace and returns plain rows with units in the key names; nothing here plots or prints.

The workbench's loop marks its regions with ``torch.profiler.record_function`` using the names in
``REGIONS`` inside ``ProfilerStep#N`` markers; any other trace is read through the markers PyTorch
and Lightning write themselves (workbench.trace.markers), and the summary names the ones it used.
The time outside every region ("other") comes with what ran meanwhile (``other_covered_by``), so a rule
can tell code left unannotated from a rank waiting in a collective (trace/diagnose.py).
"""
from __future__ import annotations

import csv
import gzip
import json
import re
import statistics
from bisect import bisect_right
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from workbench.trace.collectives import is_collective
from workbench.trace.markers import STEP_PREFIX, StepRegions, end as _end, extend_to_device, find_steps, normalize
from workbench.trace.markers import named_region, thread as _thread
from workbench.trace.regions import BREAKDOWN_PARTS, COMPUTE_PARTS, DATA_LOADING, REGIONS
from workbench.results import trace_files, write_atomic, write_json_atomic

BREAKDOWN_COLUMNS = ("step", "step_ms", *(f"{part}_ms" for part in BREAKDOWN_PARTS))

# torch 2.x writes record_function ranges, ProfilerStep#N included, as "user_annotation"; older
# releases wrote ProfilerStep as "cpu_op". The GPU-side mirrors ("gpu_user_annotation") are not
# host time and are left out on purpose.
HOST_CATEGORIES = frozenset({"user_annotation", "cpu_op"})
GPU_CATEGORIES = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
LAUNCH_CATEGORIES = frozenset({"cuda_runtime", "cuda_driver"})
# cudaLaunchKernel, cudaLaunchKernelExC, cuLaunchKernel(Ex), cudaLaunchCooperativeKernel, and
# cudaGraphLaunch: one graph launch replaces many kernel launches, which is what CUDA graphs buy.
LAUNCH_NAME = re.compile(r"^cu(da)?(Graph)?Launch")
DEVICE_TYPE_IDS = {"cpu": 0, "cuda": 1}  # "Device Type" in [memory] events
BYTES_PER_MB = 1024 * 1024  # MiB, like the rest of the result files
OTHER_COVERED_ROWS = 10  # the names that cover most of "other", as many as top_ops lists

# Kernel kinds by name, first match wins. Triton kernels say what they are in their prefix; ATen's
# *elementwise_kernel and cuDNN's layout conversions and batch-norm kernels come before conv_matmul
# because their template arguments or "cudnn" prefix would otherwise match it.
KERNEL_KINDS = (
    # NCCL's kernels move gradients between GPUs: communication, whatever "reduce" their names hold.
    ("communication", re.compile(r"^nccl|ncclkernel|nccldevkernel")),
    ("elementwise", re.compile(r"triton_poi|nchwtonhwc|nhwctonchw|elementwise_kernel")),
    ("reduction", re.compile(r"triton_(red|per)|bn_fw|bn_bw|batch_?norm|layer_?norm|group_?norm|softmax")),
    ("conv_matmul", re.compile(
        r"triton_tem|conv|gemm|gemv|matmul|xmma|cutlass|cudnn|cublas|nvjet|wgrad|dgrad|fprop"
        r"|winograd|(?<![a-z])b?mm(?![a-z])")),
    ("reduction", re.compile(r"reduce|norm|softmax|sum|mean")),
    ("elementwise", re.compile(r"elementwise|pointwise|vectorized|unrolled|multi_tensor_apply")),
)
KIND_NAMES = ("conv_matmul", "elementwise", "reduction", "copy", "communication", "other")
# Heuristic for "this conv/matmul ran in fp32 (or TF32)": no half/8-bit marker in its name.
# cuBLAS/cuDNN/CUTLASS name their half kernels h884/h1688/h16816, hgemm, *_f16*, *bf16*; TF32
# kernels (tf32, s1688) count as fp32 on purpose, since bf16/fp16 autocast is still ~2x faster.
# cuBLAS's Hopper kernels (nvjet_*) spell their types in three letters after the prefix, input first:
# h (fp16) and b (bf16) inputs run on tensor cores in half precision (nvjet_hsh_..., nvjet_bsb_...).
HALF_PRECISION_MARK = re.compile(r"f16|half|bfloat|h884|h1688|h16816|hgemm|fp8|e4m3|e5m2|int8|i8i8"
                                 r"|nvjet_[hbe]")
# cuDNN layout conversions around tensor-core convolutions of NCHW tensors (channels_last removes them).
LAYOUT_TRANSPOSE_MARK = re.compile(r"nchwtonhwc|nhwctonchw")


class TraceFormatError(ValueError):
    """The trace lacks what the analysis needs (e.g. ProfilerStep markers)."""


def find_trace_file(trace_dir: Path | str) -> Path:
    """The newest torch.profiler trace in a folder (or the path itself when it is a file)."""
    trace_dir = Path(trace_dir)
    if trace_dir.is_file():
        return trace_dir
    found = trace_files(trace_dir)
    if not found:
        raise FileNotFoundError(f"no *.pt.trace.json[.gz] file in {trace_dir}")
    return max(found, key=lambda path: (path.stat().st_mtime, path.name))


def load_trace(path: Path | str) -> dict:
    """Load a Chrome trace; gzip is recognized by its magic bytes, not trusted from the name."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def _complete_events(trace: dict) -> list[dict]:
    return normalize(trace.get("traceEvents", []))


def _located(trace: dict) -> tuple[list[dict], list[dict], str, StepRegions]:
    """(events, steps, how the steps were found, the regions' finder)."""
    events = _complete_events(trace)
    steps, how, where = find_steps(events)
    if not steps:
        raise TraceFormatError("no host events (cpu_op/user_annotation/Operator): not a torch.profiler trace")
    steps, extended = extend_to_device(steps, events)
    how += "; each step lasts until the GPU work it launched ends" if extended else ""
    return events, steps, how, StepRegions(events, where)


def _step_number(step: dict) -> int:
    if "number" in step:
        return step["number"]
    digits = re.match(r"\d+", step["name"][len(STEP_PREFIX):])
    return int(digits.group()) if digits else -1


def _inside(busy: list[tuple[float, float]], low: float, high: float) -> bool:
    """Whether [low, high] lies inside one of the merged, sorted busy intervals."""
    i = bisect_right(busy, (low, float("inf"))) - 1
    return i >= 0 and busy[i][1] >= high


def _innermost_pieces(intervals: list[tuple[float, float, str]],
                      busy: list[tuple[float, float]] = ()) -> list[tuple[float, float, str]]:
    """(start, end, region) pieces, sorted and disjoint: each instant given once to the innermost region
    covering it, so nested duplicates and regions inside regions never add up to more than the step.

    A fetch while the GPU is busy (merged GPU intervals in `busy`) hides behind the GPU's work: it is
    not time the step waits for data, and torch-tb-profiler does not count it either; it goes to other.
    """
    pieces = []
    cuts = sorted({t for start, end, _ in intervals for t in (start, end)}
                  | {t for start, end in busy for t in (start, end)})
    for low, high in zip(cuts, cuts[1:]):
        covering = [iv for iv in intervals if iv[0] <= low and iv[1] >= high]
        if not covering:
            continue
        region = max(covering, key=lambda iv: (iv[0], -iv[1]))[2]
        if region != DATA_LOADING or not busy or not _inside(busy, low, high):
            pieces.append((low, high, region))
    return pieces


def _innermost_region_us(pieces: list[tuple[float, float, str]]) -> dict[str, float]:
    """Microseconds per region of the innermost pieces."""
    totals = dict.fromkeys(REGIONS, 0.0)
    for low, high, region in pieces:
        totals[region] += high - low
    return totals


def _gaps(start: float, stop: float, pieces: list[tuple[float, float, str]]) -> list[tuple[float, float]]:
    """The instants of [start, stop] that no region holds: the step's "other"."""
    gaps, reach = [], start
    for low, high, _ in pieces:
        if low > reach:
            gaps.append((reach, low))
        reach = max(reach, high)
    return gaps + [(reach, stop)] if stop > reach else gaps


def merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, non-overlapping intervals covering the same time."""
    out: list[tuple[float, float]] = []
    for start, stop in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], stop))
        else:
            out.append((start, stop))
    return out


def _step_row(step: dict, regions: StepRegions, busy: list[tuple[float, float]]) -> tuple[dict, list, list]:
    """(the step's row, its "other" intervals, its forward/backward/optimizer intervals)."""
    start, stop = step["ts"], _end(step)
    first = max(0, bisect_right(busy, (start,)) - 1)
    in_step = []
    for a, b in busy[first:]:
        if a >= stop:
            break
        if b > start:
            in_step.append((max(a, start), min(b, stop)))
    pieces = _innermost_pieces(regions.intervals(start, stop), in_step)
    region_us = _innermost_region_us(pieces)
    row = {"step": _step_number(step), "step_ms": step["dur"] / 1000}
    row.update({f"{region}_ms": region_us[region] / 1000 for region in REGIONS})
    row["other_ms"] = (step["dur"] - sum(region_us.values())) / 1000
    compute = [(low, high) for low, high, region in pieces if region in COMPUTE_PARTS]
    return row, _gaps(start, stop, pieces), compute


def _rows(trace: dict) -> tuple[list[dict], dict, tuple[list[dict], float], float]:
    """(per-step rows, the markers they rest on, (what ran during "other", ms per step of it in
    collectives), ms per step of forward/backward/optimizer spent waiting in collectives)."""
    events, steps, how, regions = _located(trace)
    busy = merged([(e["ts"], _end(e)) for e in events if e.get("cat") in GPU_CATEGORIES])
    read = [_step_row(step, regions, busy) for step in steps]
    rows = [row for row, _, _ in read]
    gaps = [gap for _, step_gaps, _ in read for gap in step_gaps]
    compute = merged([span for _, _, spans in read for span in spans])
    markers = regions.describe(how)  # after the rows: the sources are noted as the steps are read
    if busy and markers[DATA_LOADING] != "not found":
        markers[DATA_LOADING] += " (only while the GPU is idle: a fetch hidden behind GPU work is in other)"
    per_step = 1000 * max(len(rows), 1)
    return (rows, markers, _other_covered_by(events, regions.where, gaps, len(rows)),
            union_us(_collective_pieces(events, regions.where, compute)) / per_step)


def _collective_pieces(events: list[dict], where: tuple | None, spans: list[tuple[float, float]]) -> list:
    """The parts of `spans` (sorted, disjoint) a rank spends waiting in collectives: the loop thread's
    own collective ops, and other threads' and the GPU's collectives while the loop thread runs no
    operator of its own (a collective that overlaps the rank's work is not waiting)."""
    idle = _without(spans, merged([(e["ts"], _end(e)) for e in _loop_ops(events, where)]))
    within = {True: (spans, [low for low, _ in spans]), False: (idle, [low for low, _ in idle])}
    pid = (where or (None,))[0]
    return [piece for event in events
            if (device := _covering_device(event, pid)) is not None and is_collective(event["name"], device == "gpu")
            for piece in _pieces(event, *within[_thread(event) == where])]


def _loop_ops(events: list[dict], where: tuple | None) -> list[dict]:
    """The loop thread's operators: what it runs itself (its steps, regions and ranges aside)."""
    return [e for e in events if _thread(e) == where and e.get("cat") == "cpu_op" and not _is_annotation(e["name"])]


def _covering_device(event: dict, pid) -> str | None:
    """Where an event ran: "gpu" for GPU work, "cpu" for an operator (or a user's range) of the loop's
    process, else None: steps and regions are not what ran, and loader workers are not the loop."""
    if event.get("cat") in GPU_CATEGORIES:
        return "gpu"
    if event.get("cat") in HOST_CATEGORIES and event.get("pid") == pid and not _is_annotation(event["name"]):
        return "cpu"
    return None


def _without(spans: list[tuple[float, float]], holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, disjoint spans less the merged, sorted holes."""
    out = []
    for low, high in spans:
        for a, b in holes[max(bisect_right(holes, (low, float("inf"))) - 1, 0):]:
            if a >= high:
                break
            if b > low:
                out += [(low, a)] if a > low else []
                low = b
        out += [(low, high)] if high > low else []
    return out


def _pieces(event: dict, spans: list[tuple[float, float]], starts: list[float]) -> list[tuple[float, float]]:
    """The parts of an event inside sorted, disjoint spans (starts: their starts)."""
    found = []
    for low, high in spans[max(bisect_right(starts, event["ts"]) - 1, 0):]:
        if low >= _end(event):
            break
        if high > event["ts"]:
            found.append((max(low, event["ts"]), min(high, _end(event))))
    return found


def _other_covered_by(events: list[dict], where: tuple | None, gaps: list[tuple[float, float]],
                      steps: int) -> tuple[list[dict], float]:
    """What ran during "other" (gaps: sorted, as the steps are): per event name and device, the ms per
    step of it that the name's events cover, most first: the loop thread's own events, and other threads'
    and the GPU's while the loop thread runs no operator of its own (it waits, for a collective perhaps).
    Names may overlap one another (nested ops, a collective on two threads): rows can add up to more.
    Also the ms per step of "other" spent in collectives (trace/collectives.py), counted once."""
    idle = _without(gaps, merged([(e["ts"], _end(e)) for e in _loop_ops(events, where)]))
    within = {True: (gaps, [low for low, _ in gaps]), False: (idle, [low for low, _ in idle])}
    spans = defaultdict(list)
    for event in events:
        device = _covering_device(event, (where or (None,))[0])
        if device is not None:
            spans[event["name"], device] += _pieces(event, *within[_thread(event) == where])
    covered = sorted(((union_us(found), key) for key, found in spans.items()), key=lambda item: (-item[0], item[1]))
    rows = [{"name": name, "device": device, "ms_per_step": us / 1000 / max(steps, 1)}
            for us, (name, device) in covered[:OTHER_COVERED_ROWS] if us > 0]
    # The names overlap (c10d's op and gloo's own, nested): the time in collectives is their union,
    # over every collective name, not a sum of the rows.
    return rows, union_us(_collective_pieces(events, where, gaps)) / 1000 / max(steps, 1)


def step_breakdown(trace: dict) -> list[dict]:
    """One row per step: step time and the time in each region, clipped to the step.

    The batch fetch for step N usually runs inside ProfilerStep#N (prof.step() opens the next step
    before the loop asks for the next batch), so the regions and "other" add up to the step time.
    """
    return _rows(trace)[0]


def union_us(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of intervals: kernels on several streams overlap."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _kernel_kind(event: dict) -> str:
    if event.get("cat") in ("gpu_memcpy", "gpu_memset"):
        return "copy"
    name = event.get("name", "").lower()
    if name.startswith(("memcpy", "memset")):
        return "copy"
    return next((kind for kind, pattern in KERNEL_KINDS if pattern.search(name)), "other")


def _launch_count(events: list[dict], start: float, stop: float) -> int:
    """Kernel launches in the window; a driver call inside a runtime call is the same launch."""
    launches = sorted((e for e in events if e.get("cat") in LAUNCH_CATEGORIES and start <= e["ts"] < stop
                       and LAUNCH_NAME.match(e.get("name", ""))), key=lambda e: (e["ts"], -e.get("dur", 0)))
    count, outer_end = 0, defaultdict(lambda: float("-inf"))
    for launch in launches:
        if launch["ts"] >= outer_end[_thread(launch)]:
            count += 1
            outer_end[_thread(launch)] = _end(launch)
    return count


def _copy_stats(gpu: list[dict]) -> dict:
    h2d = [e for e in gpu if e.get("cat") == "gpu_memcpy" and "HtoD" in e.get("name", "")]
    pageable = [e for e in h2d if "Pageable" in e.get("name", "")]
    return {"h2d_copy_ms": sum(e["dur"] for e in h2d) / 1000,
            "h2d_pageable_ms": sum(e["dur"] for e in pageable) / 1000,
            "h2d_from_pageable": bool(pageable) if h2d else None}


def _is_fp32_conv_matmul(event: dict) -> bool:
    return _kernel_kind(event) == "conv_matmul" and not HALF_PRECISION_MARK.search(event["name"].lower())


def _kernel_stats(gpu: list[dict], steps: int) -> dict:
    by_kind = dict.fromkeys(KIND_NAMES, 0.0)
    for event in gpu:
        by_kind[_kernel_kind(event)] += event["dur"] / 1000
    kernels = [e for e in gpu if e.get("cat") == "kernel"]
    transposes = [e for e in kernels if LAYOUT_TRANSPOSE_MARK.search(e["name"].lower())]
    return {"kernel_ms_by_kind": by_kind, "kernel_count": len(kernels),
            "kernels_per_step": len(kernels) / steps,
            "median_kernel_us": statistics.median(e["dur"] for e in kernels) if kernels else None,
            "fp32_tensorcore_eligible_ms": sum(e["dur"] for e in kernels if _is_fp32_conv_matmul(e)) / 1000,
            "layout_transpose_ms": sum(e["dur"] for e in transposes) / 1000}


def device_activity(trace: dict) -> dict | None:
    """GPU busy/idle over the profiled steps, kernel time by kind, launches and copies.

    None for a CPU-only trace. The window runs from the first step's start to the later of the
    last step's end and the last GPU event's end, because the GPU lags the CPU that feeds it.
    Times are summed over all profiled steps unless the key says per_step.
    """
    events = _complete_events(trace)
    if not any(e.get("cat") in GPU_CATEGORIES for e in events):
        return None
    events, steps, _, _ = _located(trace)
    start, stop = steps[0]["ts"], _end(steps[-1])
    gpu = [e for e in events if e.get("cat") in GPU_CATEGORIES and _end(e) > start]
    window_end = max(stop, max(_end(e) for e in gpu))
    busy_us = union_us((max(e["ts"], start), _end(e)) for e in gpu)
    window_us = window_end - start
    activity = {"steps": len(steps), "window_ms": window_us / 1000, "busy_ms": busy_us / 1000,
                "busy_share": busy_us / window_us, "idle_share": 1 - busy_us / window_us,
                "launches_per_step": _launch_count(events, start, stop) / len(steps)}
    return activity | _kernel_stats(gpu, len(steps)) | _copy_stats(gpu)


def _self_times_us(thread_events: list[dict]) -> list[tuple[dict, float]]:
    """(event, self time) for one thread: duration minus the direct children's durations."""
    ordered = sorted(thread_events, key=lambda e: (e["ts"], -e.get("dur", 0)))
    selfs = [float(e.get("dur", 0)) for e in ordered]
    stack: list[int] = []
    for index, event in enumerate(ordered):
        while stack and _end(ordered[stack[-1]]) <= event["ts"]:
            stack.pop()
        if stack:
            selfs[stack[-1]] -= min(_end(event), _end(ordered[stack[-1]])) - event["ts"]
        stack.append(index)
    return list(zip(ordered, selfs))


def _is_annotation(name: str) -> bool:
    """Older torch wrote ProfilerStep (and record_function ranges) as cpu_op; they are not operators."""
    return name.startswith((STEP_PREFIX, "[pl]")) or named_region(name) is not None


def _totals(pairs: Iterable[tuple[str, float]]) -> dict[str, list[float]]:
    """name -> [calls, microseconds]."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for name, us in pairs:
        totals[name][0] += 1
        totals[name][1] += us
    return totals


def _cpu_op_self_us(events: list[dict]) -> Iterable[tuple[str, float]]:
    by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for event in events:
        if event.get("cat") in HOST_CATEGORIES:
            by_thread[_thread(event)].append(event)
    for thread_events in by_thread.values():
        for event, self_us in _self_times_us(thread_events):
            if event.get("cat") == "cpu_op" and not _is_annotation(event["name"]):
                yield event["name"], self_us


def _top_rows(totals: dict[str, list[float]], n: int, device: str) -> list[dict]:
    grand = sum(us for _, us in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: (-item[1][1], item[0]))[:n]
    return [{"name": name, "device": device, "calls": int(calls), "self_ms": us / 1000, "share": us / grand}
            for name, (calls, us) in ranked]


def top_ops(trace: dict, n: int = 10) -> list[dict]:
    """Top n CPU operators by self time, then top n GPU kernels by device time ("device" says which).

    A CPU op's self time is its duration minus its direct children on the same thread (annotations
    included as children); share is relative to all CPU op self time, or to all kernel time.
    """
    events = _complete_events(trace)
    kernels = ((e["name"], e.get("dur", 0)) for e in events if e.get("cat") == "kernel")
    return _top_rows(_totals(_cpu_op_self_us(events)), n, "cpu") + _top_rows(_totals(kernels), n, "gpu")


def peak_memory_mb(trace: dict, device: str | None = None) -> float | None:
    """Max "Total Allocated" over the [memory] events, in MiB; device "cpu"/"cuda" or None for any.

    On CPU the profiler counts only what was allocated since it started, so this is the peak of
    memory allocated during profiling, not the process's resident memory.
    """
    wanted = None if device is None else DEVICE_TYPE_IDS[device]
    totals = [e["args"]["Total Allocated"] for e in trace.get("traceEvents", [])
              if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})
              and (wanted is None or e["args"].get("Device Type") == wanted)]
    return max(totals) / BYTES_PER_MB if totals else None


def _mean_breakdown(rows: list[dict]) -> tuple[float, dict[str, float], dict[str, float]]:
    step_ms = statistics.fmean(row["step_ms"] for row in rows)
    parts = BREAKDOWN_PARTS
    mean_ms = {part: statistics.fmean(row[f"{part}_ms"] for row in rows) for part in parts}
    # Means are linear, so region means plus "other" add up to the mean step exactly.
    share = {part: (mean_ms[part] / step_ms if step_ms else 0.0) for part in parts}
    return step_ms, mean_ms, share


def _analyze(trace_dir: Path | str) -> tuple[dict, list[dict]]:
    path = find_trace_file(trace_dir)
    return analyze_loaded(load_trace(path), path)


def analyze_loaded(trace: dict, path: Path | str) -> tuple[dict, list[dict]]:
    """(summary, per-step rows) of a trace already loaded from path."""
    rows, markers, (other_covered_by, other_in_collectives), compute_in_collectives = _rows(trace)
    step_ms, mean_ms, share = _mean_breakdown(rows)
    summary = {"trace_file": str(path), "steps": len(rows), "markers": markers, "step_time_ms": step_ms,
               "breakdown_ms": mean_ms, "breakdown_share": share, "other_covered_by": other_covered_by,
               "other_in_collectives_ms": other_in_collectives, "compute_in_collectives_ms": compute_in_collectives,
               "device": device_activity(trace), "top_ops": top_ops(trace),
               "peak_memory_mb": {device: peak_memory_mb(trace, device) for device in DEVICE_TYPE_IDS},
               # A trace carries distributedInfo only when torch.distributed was initialized.
               "rank": trace.get("distributedInfo", {}).get("rank", 0)}
    return summary, rows


def summarize(trace_dir: Path | str) -> dict:
    """Everything above for the newest trace in trace_dir, as one JSON-ready dict."""
    return _analyze(trace_dir)[0]


def _write_breakdown(handle, rows: list[dict]) -> None:
    writer = csv.DictWriter(handle, fieldnames=BREAKDOWN_COLUMNS)
    writer.writeheader()
    writer.writerows({key: row[key] for key in BREAKDOWN_COLUMNS} for row in rows)


def write_analysis(trace_dir: Path | str, breakdown_csv_path: Path | str, summary_json_path: Path | str) -> dict:
    """Write the per-step breakdown CSV and the summary JSON; return the summary."""
    summary, rows = _analyze(trace_dir)
    write_atomic(Path(breakdown_csv_path), lambda handle: _write_breakdown(handle, rows))
    write_json_atomic(Path(summary_json_path), summary)
    return summary
