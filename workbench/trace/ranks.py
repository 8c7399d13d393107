"""Several ranks' traces of one run, side by side: a per-rank table (the step, its parts, the time in
collectives and the part of it spent waiting), the skew across ranks, and two findings: the
straggler, named with its cause, and exposed communication. No torch.

Under DDP every rank's step lasts as long as the slowest rank's, because the others wait for it in the
all-reduce. So step times do not name the straggler, nor do region times alone (a slow backward hides:
the others' wait lands after their backward, or inside it when a region wraps loss.backward()). The
rank's own work does: its step minus the time it waits in collectives (trace/comm.py). The straggler
is the rank whose own work exceeds the other ranks' median by a margin; its cause is the part of that
work (input, host-to-device, compute) that exceeds theirs most.

A slow link slows every rank's collectives alike, so per-rank traces cannot pin it on one rank: it
shows as exposed communication on every rank (communication_exposed), not as a straggler.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from workbench.results import trace_files
from workbench.trace import analyze, comm
from workbench.trace.diagnose import SEVERITY_ORDER
from workbench.trace.regions import BREAKDOWN_PARTS, COMPUTE_PARTS, DATA_LOADING, HOST_TO_DEVICE, OTHER

# A rank's own work must exceed the other ranks' median by both margins to be named: 10% of the
# median step is an imbalance worth fixing (every rank pays it on every step), and 5 ms lies above the
# scheduling noise of a shared machine (balanced 2-rank gloo runs on 2 cores differ by 1-2 ms).
STRAGGLER_SHARE = 0.10
STRAGGLER_MIN_MS = 5.0
STRAGGLER_HIGH_SHARE = 0.30  # above this share of the step the straggler is the run's main cost
# Exposed communication (collective time with nothing else of the rank's running) on the rank that
# waits least: the others' extra is waiting for a straggler, not communication. Above 10% of the step
# the overlap is worth tuning; above 30% communication is a main cost.
EXPOSED_SHARE_MAX = 0.10
EXPOSED_SHARE_HIGH = 0.30

PART_COLUMNS = tuple(f"{part}_ms" for part in BREAKDOWN_PARTS)
TABLE_COLUMNS = ("step_ms", *PART_COLUMNS, "collective_ms", "waiting_ms", "work_ms")
CAUSES = ("input", "host_to_device", "compute")
# The parts of a step that make up "compute": the rest of the rank's own work once input is counted.
COMPUTE_DETAIL = (*COMPUTE_PARTS, OTHER)
CAUSE_ACTIONS = {
    "input": "Feed rank {rank} faster: more DataLoader workers (persistent, prefetching), a local copy of "
             "its data, cheaper per-sample transforms; every other rank waits for its batches in the all-reduce.",
    "host_to_device": "Speed up rank {rank}'s copies: pin_memory=True and .to(device, non_blocking=True); "
                      "check its PCIe link and NUMA placement against the other ranks'.",
    "compute": "Look at what rank {rank} computes differently: its device (clocks, throttling, another "
               "process on it), uneven inputs (sequence lengths, batch contents), or work only it does "
               "(logging, evaluation, checkpointing). Under DDP its slow backward shows only as the "
               "others' wait in the all-reduce.",
}


def rank_row(summary: dict, communication: dict) -> dict:
    """One rank's line: its breakdown (ms per step), collectives and waiting, and its own work by cause."""
    step, parts = summary["step_time_ms"], summary["breakdown_ms"]
    waiting = min(communication["waiting_ms_per_step"], step)
    work = step - waiting
    own = {"input": parts[DATA_LOADING], "host_to_device": parts[HOST_TO_DEVICE]}
    own["compute"] = max(work - own["input"] - own["host_to_device"], 0.0)
    return {"rank": summary["rank"], "trace_file": summary["trace_file"], "step_ms": step,
            **{f"{part}_ms": parts[part] for part in BREAKDOWN_PARTS},
            "collective_ms": communication["ms_per_step"], "waiting_ms": waiting, "work_ms": work,
            "collective_share": communication["share"], "overlap_share": communication["overlap_share"],
            "gpu_collective_share": communication["gpu_kernel_share"], "timeline": communication["timeline"],
            "own_work_ms": own}


def skew(rows: list[dict]) -> dict[str, dict]:
    """Per column: the largest rank against the median rank (ratio) and the spread (max - min, ms)."""
    out = {}
    for column in TABLE_COLUMNS:
        values = [row[column] for row in rows]
        median = statistics.median(values)
        out[column] = {"max_over_median": max(values) / median if median > 0 else None,
                       "max_minus_min_ms": max(values) - min(values)}
    return out


def _median(rows: list[dict], pick) -> float:
    return statistics.median(pick(row) for row in rows)


def _compute_detail(slow: dict, others: list[dict], excess: float) -> str:
    """The compute part that carries most of the excess; else, when the others' waiting is where the
    excess shows, say so (a backward that DDP makes look as long as everyone's)."""
    gains = {part: slow[f"{part}_ms"] - _median(others, lambda r, p=part: r[f"{p}_ms"]) for part in COMPUTE_DETAIL}
    part = max(gains, key=gains.get)
    if gains[part] > excess / 2:
        theirs = slow[f"{part}_ms"] - gains[part]
        return f"; most of it in {part.replace('_', ' ')}: {slow[f'{part}_ms']:.1f} ms against {theirs:.1f} ms"
    if _median(others, lambda r: r["waiting_ms"]) - slow["waiting_ms"] > excess / 2:
        return ("; no part of it stands out: under DDP a slow backward looks as long as the others', "
                "whose wait in the all-reduce is where it shows")
    return ""


def _cause_text(cause: str, slow: dict, others: list[dict], excess: float) -> str:
    mine, theirs = slow["own_work_ms"][cause], _median(others, lambda r: r["own_work_ms"][cause])
    what = {"input": "input: waiting for the next batch", "host_to_device": "host-to-device copies",
            "compute": "compute: forward, backward, optimizer and the rest of the step outside the waiting"}[cause]
    detail = _compute_detail(slow, others, excess) if cause == "compute" else ""
    return f"{what} takes {mine:.1f} ms against {theirs:.1f} ms{detail}"


def rule_straggler(rows: list[dict]) -> dict | None:
    """The rank whose own work exceeds the other ranks' median by STRAGGLER_SHARE of the median step
    and STRAGGLER_MIN_MS, with the part of its work that makes the difference."""
    if len(rows) < 2:
        return None
    slow = max(rows, key=lambda row: row["work_ms"])
    others = [row for row in rows if row is not slow]
    median_step = _median(rows, lambda r: r["step_ms"])
    excess = slow["work_ms"] - _median(others, lambda r: r["work_ms"])
    threshold = max(STRAGGLER_SHARE * median_step, STRAGGLER_MIN_MS)
    if excess <= threshold:
        return None
    cause = max(CAUSES, key=lambda c: slow["own_work_ms"][c] - _median(others, lambda r: r["own_work_ms"][c]))
    rank, theirs = slow["rank"], slow["work_ms"] - excess
    evidence = (f"Rank {rank} holds the others back ({cause}): its own work (the step minus the time it "
                f"waits in collectives) takes {slow['work_ms']:.1f} ms per step against {theirs:.1f} ms, "
                f"the median of the other ranks, who wait {_median(others, lambda r: r['waiting_ms']):.1f} ms "
                f"per step in collectives against its {slow['waiting_ms']:.1f} ms. The difference is "
                f"{_cause_text(cause, slow, others, excess)}.")
    return {"rule": "straggler", "severity": "high" if excess > STRAGGLER_HIGH_SHARE * median_step else "medium",
            "evidence": evidence, "value": excess, "threshold": threshold, "rank": rank, "cause": cause,
            "action": CAUSE_ACTIONS[cause].format(rank=rank)}


def _exposed_share(row: dict) -> float:
    return row["waiting_ms"] / row["step_ms"] if row["step_ms"] else 0.0


def rule_communication_exposed(rows: list[dict]) -> dict | None:
    """Communication that even the least-waiting rank cannot hide behind its own work."""
    least = min(rows, key=_exposed_share)
    share = _exposed_share(least)
    if share <= EXPOSED_SHARE_MAX:
        return None
    overlap = least["overlap_share"] or 0.0
    gpu = least["gpu_collective_share"]
    on_gpu = f"; NCCL kernels are {gpu:.1%} of its GPU kernel time" if gpu is not None else ""
    evidence = (f"Every rank spends at least {share:.1%} of the step in collectives with nothing else "
                f"running (rank {least['rank']}: {least['waiting_ms']:.1f} of {least['step_ms']:.1f} ms; "
                f"{least['collective_ms']:.1f} ms per step in collectives, {overlap:.0%} of it overlapped "
                f"by its own work{on_gpu}).")
    return {"rule": "communication_exposed", "severity": "high" if share > EXPOSED_SHARE_HIGH else "medium",
            "evidence": evidence, "value": share, "threshold": EXPOSED_SHARE_MAX,
            "action": "Overlap gradient communication with backward: tune DDP's bucket_cap_mb (smaller buckets "
                      "start reducing earlier, larger ones cost fewer calls), gradient_as_bucket_view=True "
                      "(no copies into buckets), static_graph=True when the graph never changes, and no "
                      ".item()/.cpu() or other syncs inside backward; then give each rank more compute per "
                      "byte sent: a bigger batch per rank, or fewer ranks per node."}


def reading(rows: list[dict]) -> dict:
    """The per-rank table (rank order), its skew and the cross-rank findings, most severe first."""
    rows = sorted(rows, key=lambda row: (row["rank"], row["trace_file"]))
    found = [f for f in (rule_straggler(rows), rule_communication_exposed(rows)) if f is not None]
    return {"ranks": rows, "skew": skew(rows),
            "findings": sorted(found, key=lambda f: SEVERITY_ORDER.index(f["severity"]))}


def one_per_rank(summaries: list[dict]) -> bool:
    """Whether the traces are one run's ranks (distinct ranks), not several traces of one process."""
    return len(summaries) > 1 and len({s["rank"] for s in summaries}) == len(summaries)


def read_trace(path: Path) -> dict:
    """One trace file's line of the per-rank table."""
    trace = analyze.load_trace(path)
    return rank_row(analyze.analyze_loaded(trace, path)[0], comm.communication(trace))


def read_folder(folder: Path) -> dict | None:
    """The per-rank reading of a stage's trace folder; None unless it holds one trace per rank."""
    paths = trace_files(folder)
    rows = [read_trace(path) for path in paths] if len(paths) > 1 else []
    return reading(rows) if one_per_rank(rows) else None
