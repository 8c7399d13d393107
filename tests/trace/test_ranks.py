"""The per-rank reading on hand-written rank traces: the table, the skew, the straggler named with its
cause, and exposed communication, with exact figures (no torch)."""
from __future__ import annotations

import gzip
import json

import pytest

from workbench.errors import UsageError
from workbench.trace import comm, explain, ranks
from workbench.trace.analyze import analyze_loaded

STEPS = 3
LOADER = "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"


def event(name: str, start_ms: float, dur_ms: float, tid: int = 1, cat: str = "cpu_op") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": start_ms * 1000, "dur": dur_ms * 1000}


def ddp_step(t0: float, length: float, fetch: float, backward: float, finish: float, region: bool) -> list[dict]:
    """One step of a DDP rank on a CPU: fetch, forward 2 ms, backward, then the loop thread idles until
    the all-reduce (gloo's thread, from mid-backward) ends at `finish`, then 1 ms of optimizer."""
    start_bwd = t0 + fetch + 2
    events = [event(f"ProfilerStep#{int(t0 // length) + 1}", t0, length, cat="user_annotation"),
              event(LOADER, t0, fetch, cat="user_annotation"), event("aten::linear", t0 + fetch, 2),
              event("autograd::engine::evaluate_function: AddmmBackward0", start_bwd, backward),
              event("gloo:all_reduce", start_bwd + backward / 2, finish - start_bwd - backward / 2, tid=2,
                    cat="user_annotation"),
              event("Optimizer.step#SGD.step", finish, 1, cat="user_annotation"), event("aten::add_", finish, 1)]
    if region:  # the user's own region around loss.backward(): it holds the wait too
        events.append(event("backward", start_bwd, finish - start_bwd, cat="user_annotation"))
    return events


def ddp_traces(fetch: list[float], backward: list[float], transfer: float = 1.0, region: bool = False) -> list[dict]:
    """One trace per rank of a DDP loop where every rank's all-reduce ends when the slowest rank's
    gradients are ready (plus `transfer`): step times are equal on every rank, as under DDP."""
    ready = max(f + 2 + b for f, b in zip(fetch, backward))
    length = ready + transfer + 1
    return [{"distributedInfo": {"rank": rank, "backend": "gloo"},
             "traceEvents": [e for k in range(STEPS)
                             for e in ddp_step(k * length, length, f, b, k * length + ready + transfer, region)]}
            for rank, (f, b) in enumerate(zip(fetch, backward))]


def reading_of(traces: list[dict]) -> dict:
    rows = [ranks.rank_row(analyze_loaded(trace, f"rank{i}")[0], comm.communication(trace))
            for i, trace in enumerate(traces)]
    return ranks.reading(rows)


def rules(found: dict) -> dict[str, dict]:
    return {finding["rule"]: finding for finding in found["findings"]}


def test_balanced_ranks_name_no_straggler_and_the_table_holds_every_column():
    found = reading_of(ddp_traces(fetch=[1, 1, 1, 1], backward=[10, 10, 10, 10]))
    assert [row["rank"] for row in found["ranks"]] == [0, 1, 2, 3]
    row = found["ranks"][0]
    assert row["step_ms"] == pytest.approx(15) and row["data_loading_ms"] == pytest.approx(1)
    assert row["collective_ms"] == pytest.approx(6)   # from mid-backward (5 ms) to the end of the transfer
    assert row["waiting_ms"] == pytest.approx(1)      # only the transfer has nothing else running
    assert row["overlap_share"] == pytest.approx(5 / 6)
    assert found["skew"]["step_ms"] == {"max_over_median": pytest.approx(1), "max_minus_min_ms": pytest.approx(0)}
    assert "straggler" not in rules(found)


def test_a_loader_stall_on_one_rank_is_named_input():
    found = reading_of(ddp_traces(fetch=[1, 1, 61, 1], backward=[10, 10, 10, 10]))
    straggler = rules(found)["straggler"]
    assert (straggler["rank"], straggler["cause"], straggler["severity"]) == (2, "input", "high")
    assert straggler["value"] == pytest.approx(60)  # its own work over the others' median
    assert "waiting for the next batch takes 61.0 ms against 1.0 ms" in straggler["evidence"]
    # Every rank's step is as long: the others wait in the all-reduce, which is where the stall shows.
    assert found["skew"]["step_ms"]["max_minus_min_ms"] == pytest.approx(0)
    assert found["ranks"][0]["waiting_ms"] == pytest.approx(61)


def test_a_slow_backward_hidden_by_the_all_reduce_is_named_compute():
    """With a region around loss.backward() every rank's backward looks as long: the waiting does."""
    found = reading_of(ddp_traces(fetch=[1, 1], backward=[10, 50], region=True))
    assert found["skew"]["backward_ms"]["max_over_median"] == pytest.approx(1)
    straggler = rules(found)["straggler"]
    assert (straggler["rank"], straggler["cause"]) == (1, "compute")
    assert straggler["value"] == pytest.approx(40)
    assert "no part of it stands out" in straggler["evidence"]


def test_a_slow_backward_without_a_region_shows_in_backward():
    straggler = rules(reading_of(ddp_traces(fetch=[1, 1, 1], backward=[10, 10, 50])))["straggler"]
    assert (straggler["rank"], straggler["cause"]) == (2, "compute")
    assert "most of it in backward: 50.0 ms against 10.0 ms" in straggler["evidence"]


def test_a_small_imbalance_is_noise_not_a_straggler():
    # 3 ms more work on a ~33 ms step: below both STRAGGLER_MIN_MS and STRAGGLER_SHARE of the step.
    assert "straggler" not in rules(reading_of(ddp_traces(fetch=[1, 1], backward=[27, 30])))


def nccl_trace(rank: int) -> dict:
    """A GPU rank: compute kernels 0-10 ms, an NCCL all-reduce 8-20 ms on its own stream, 3 steps."""
    events = []
    for k in range(STEPS):
        t0 = k * 21
        events += [event(f"ProfilerStep#{k + 1}", t0, 21, cat="user_annotation"),
                   event("aten::conv2d", t0, 1), event("aten::item", t0 + 1, 19),
                   event("volta_sgemm_128x64_nn", t0, 10, tid=7, cat="kernel"),
                   event("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*, unsigned long, ncclWork*)",
                         t0 + 8, 12, tid=20, cat="kernel")]
    return {"distributedInfo": {"rank": rank, "backend": "nccl"}, "traceEvents": events}


def test_exposed_nccl_communication_is_a_finding_with_its_overlap():
    found = reading_of([nccl_trace(0), nccl_trace(1)])
    row = found["ranks"][1]
    assert row["timeline"] == comm.GPU_TIMELINE
    assert row["collective_ms"] == pytest.approx(12) and row["waiting_ms"] == pytest.approx(10)
    assert row["overlap_share"] == pytest.approx(2 / 12)
    assert row["gpu_collective_share"] == pytest.approx(12 / 22)
    exposed = rules(found)["communication_exposed"]
    assert exposed["value"] == pytest.approx(10 / 21) and exposed["severity"] == "high"
    assert "bucket_cap_mb" in exposed["action"] and "gradient_as_bucket_view=True" in exposed["action"]
    assert "NCCL kernels are 54.5% of its GPU kernel time" in exposed["evidence"]
    assert "straggler" not in rules(found)


def test_hidden_communication_is_no_finding():
    # The balanced CPU ranks: 1 ms of 15 exposed (the transfer); the rest overlaps backward.
    assert "communication_exposed" not in rules(reading_of(ddp_traces(fetch=[1, 1], backward=[10, 10])))


def write(folder, traces: list[dict]) -> None:
    folder.mkdir(exist_ok=True)
    for rank, trace in enumerate(traces):
        (folder / f"rank{rank}_host.1.pt.trace.json.gz").write_bytes(gzip.compress(json.dumps(trace).encode()))


def test_analyze_of_a_rank_folder_leads_with_the_straggler(tmp_path):
    write(tmp_path, ddp_traces(fetch=[1, 61], backward=[10, 10]))
    doc = explain.document([str(tmp_path)])
    assert doc["rank"] == 0 and [r["rank"] for r in doc["ranks"]] == [0, 1]
    assert doc["findings"][0]["rule"] == "straggler" and doc["per_rank"]["findings"][0]["rank"] == 1
    assert len(doc["per_rank"]["ranks"]) == 2 and "skew" in doc["per_rank"]
    json.dumps(doc)  # the --json document
    text = explain.format_text(doc)
    assert text.index("per rank (2 traces") < text.index("[high] straggler: Rank 1") < text.index("trace: ")
    assert "max/med" in text and "max-min" in text


def test_one_trace_reads_as_before(tmp_path):
    write(tmp_path, ddp_traces(fetch=[1], backward=[10]))
    doc = explain.document([str(tmp_path)])
    assert doc == explain.analyze_file(next(tmp_path.iterdir()))
    assert "per_rank" not in doc and "ranks" not in doc


def test_several_traces_of_one_process_get_no_per_rank_reading(tmp_path):
    traces = ddp_traces(fetch=[1, 61], backward=[10, 10])
    for trace in traces:
        trace.pop("distributedInfo")  # no process group: every trace reads as rank 0
    write(tmp_path, traces)
    doc = explain.document([str(tmp_path)])
    assert "per_rank" not in doc and len(doc["ranks"]) == 2


def test_a_bad_rank_trace_is_one_usage_error(tmp_path):
    write(tmp_path, ddp_traces(fetch=[1, 1], backward=[10, 10]))
    (tmp_path / "rank2_host.1.pt.trace.json.gz").write_bytes(b"not gzip, not json")
    with pytest.raises(UsageError, match="rank2_host.1.pt.trace.json.gz"):
        explain.document([str(tmp_path)])


def test_read_folder_needs_one_trace_per_rank(tmp_path):
    write(tmp_path, ddp_traces(fetch=[1, 61], backward=[10, 10]))
    assert ranks.read_folder(tmp_path)["findings"][0]["rank"] == 1
    assert ranks.read_folder(tmp_path / "missing") is None


def test_overlap_counts_each_instant_once():
    # Buckets overlapping each other count once; the intersection with the work is exact.
    assert comm.overlap_us([(0, 10), (5, 15), (20, 30)], [(8, 22), (25, 26)]) == 7 + 2 + 1
    assert comm.overlap_us([], [(0, 5)]) == 0


def test_the_reports_bottleneck_section_names_the_straggler_from_rank_traces(tmp_path):
    from workbench.report.bottlenecks import ranks_block  # the report's use of the reading

    write(tmp_path, ddp_traces(fetch=[1, 61], backward=[10, 10]))
    trace_file = str(next(tmp_path.glob("rank0_*")))
    lines = ranks_block({"trace_file": trace_file}, tmp_path / "reports" / "run")
    assert lines[0] == "### Ranks" and any(line.startswith("| 1 |") for line in lines)
    assert any(line.startswith("- **straggler** (high): Rank 1 holds the others back (input)") for line in lines)
    # One trace (a one-process run), or traces no longer on disk: no block.
    assert ranks_block({"trace_file": str(tmp_path / "gone" / "rank0.json")}, tmp_path) == []
    assert ranks_block({"trace_file": None}, tmp_path) == []


def test_one_ranks_gpu_trace_alone_shows_its_exposed_communication(tmp_path):
    write(tmp_path, [nccl_trace(0)])
    doc = explain.analyze_file(next(tmp_path.iterdir()))
    exposed = next(f for f in doc["findings"] if f["rule"] == "communication_exposed")
    assert exposed["value"] == pytest.approx(10 / 21)
    assert exposed["evidence"].startswith("This rank spends 47.6% of the step in collectives")
    assert "GPU timeline alone" in exposed["evidence"]
