"""The unannotated_time finding against a rank's waiting: time outside every region spent in a collective
(a fast rank waiting for a straggler in the all-reduce) is explained by the communication reading, not
code to annotate; unannotated work still is. Hand-written traces with exact figures (no torch)."""
from __future__ import annotations

import pytest

from workbench.trace import diagnose
from workbench.trace.analyze import analyze_loaded

from tests.trace.test_ranks import ddp_traces, event


def summary_of(trace: dict) -> dict:
    return analyze_loaded(trace, "rank")[0]


def unannotated(summary: dict) -> dict | None:
    return next((f for f in diagnose.diagnose(summary) if f["rule"] == "unannotated_time"), None)


def with_events(trace: dict, extra: list[dict]) -> dict:
    return {**trace, "traceEvents": trace["traceEvents"] + extra}


def test_a_rank_waiting_for_a_straggler_in_the_all_reduce_is_not_unannotated():
    """Rank 0 of two: its backward ends at 13 ms, rank 1's fetch holds the all-reduce (gloo's thread)
    until 74 ms of a 75 ms step, and its loop thread runs nothing meanwhile."""
    waiting = summary_of(ddp_traces(fetch=[1, 61], backward=[10, 10])[0])
    assert unannotated(waiting) is None
    assert waiting["breakdown_ms"]["other"] == pytest.approx(61)  # the breakdown itself is unchanged
    assert waiting["other_covered_by"] == [{"name": "gloo:all_reduce", "device": "cpu",
                                            "ms_per_step": pytest.approx(61)}]


def test_unannotated_work_beside_the_wait_still_fires_without_the_wait():
    """The same waiting rank with 20 ms of its own unannotated work on the loop thread during the wait
    (a .item() or logging): those 20 ms count, the 41 ms it only waits do not."""
    trace = ddp_traces(fetch=[1, 61], backward=[10, 10])[0]
    summary = summary_of(with_events(trace, [event("aten::item", 75 * k + 20, 20) for k in range(3)]))
    finding = unannotated(summary)
    assert finding["value"] == pytest.approx(20 / 75)
    assert "besides 54.7% in collectives" in finding["evidence"]  # 41 of 75 ms


def test_genuinely_unannotated_time_without_collectives_still_fires():
    """One process, no collective: 4 ms of a 10 ms step in ops after the optimizer step."""
    events = []
    for k in range(3):
        t0 = 10 * k
        events += [event(f"ProfilerStep#{k + 1}", t0, 10, cat="user_annotation"), event("aten::linear", t0, 2),
                   event("autograd::engine::evaluate_function: AddmmBackward0", t0 + 2, 3),
                   event("Optimizer.step#SGD.step", t0 + 5, 1, cat="user_annotation"),
                   event("aten::_local_scalar_dense", t0 + 6, 4)]
    summary = summary_of({"traceEvents": events})
    assert summary["other_covered_by"][0] == {"name": "aten::_local_scalar_dense", "device": "cpu",
                                              "ms_per_step": pytest.approx(4)}
    finding = unannotated(summary)
    assert finding["value"] == pytest.approx(0.4) and "collectives" not in finding["evidence"]


def test_nccl_kernels_while_the_host_waits_are_not_unannotated():
    """A GPU rank's 20 ms step: forward 0-10 ms on the host, then the host idles while an NCCL all-reduce
    runs 10-19 ms (a compute kernel beside it 12-14 ms): 1 ms of the 10 outside the regions is unexplained."""
    nccl = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*, unsigned long, ncclWork*)"
    events = []
    for k in range(3):
        t0 = 20 * k
        events += [event(f"ProfilerStep#{k + 1}", t0, 20, cat="user_annotation"),
                   event("forward", t0, 10, cat="user_annotation"), event("aten::conv2d", t0, 10),
                   event("volta_sgemm_128x64_nn", t0, 10, tid=7, cat="kernel"),
                   event("volta_sgemm_128x64_nn", t0 + 12, 2, tid=7, cat="kernel"),
                   event(nccl, t0 + 10, 9, tid=20, cat="kernel")]
    summary = summary_of({"traceEvents": events})
    assert summary["breakdown_share"]["other"] == pytest.approx(0.5)
    assert summary["other_covered_by"] == [
        {"name": nccl, "device": "gpu", "ms_per_step": pytest.approx(9)},
        {"name": "volta_sgemm_128x64_nn", "device": "gpu", "ms_per_step": pytest.approx(2)}]
    assert unannotated(summary) is None


def test_a_summary_without_the_covering_rows_reads_as_before():
    """A trace summary written before other_covered_by existed: other counts whole, as it did."""
    finding = unannotated({"step_time_ms": 10.0, "breakdown_share": {"forward": 0.8, "other": 0.2}})
    assert finding["value"] == pytest.approx(0.2)


def test_two_collective_names_over_the_same_wait_count_it_once():
    """c10d's op and gloo's own cover the same wait (nested, or on two threads): the time in collectives
    is their union, so the unannotated work beside them is not hidden by counting the wait twice."""
    trace = ddp_traces(fetch=[1, 61], backward=[10, 10])[0]
    gloo = [e for e in trace["traceEvents"] if e.get("name") == "gloo:all_reduce"]
    twins = [{**e, "name": "c10d::allreduce_"} for e in gloo]
    summary = summary_of(with_events(trace, twins + [event("aten::item", 75 * k + 20, 20) for k in range(3)]))
    assert summary["other_in_collectives_ms"] == pytest.approx(41)  # 61 ms of wait, 20 of them with own work
    assert unannotated(summary)["value"] == pytest.approx(20 / 75)


def _backward_wait_trace(with_all_reduce: bool) -> dict:
    """Three 100 ms steps of a rank whose backward region (10-95 ms) holds 10 ms of autograd work, then
    waits: in gloo's all-reduce on another thread (a slower rank), or, without it, just sits there."""
    events = []
    for k in range(3):
        t0 = 100 * k
        events += [event(f"ProfilerStep#{k + 1}", t0, 100, cat="user_annotation"),
                   event("forward", t0 + 2, 8, cat="user_annotation"), event("aten::conv2d", t0 + 2, 8),
                   event("backward", t0 + 10, 85, cat="user_annotation"),
                   event("autograd::engine::evaluate_function: ConvolutionBackward0", t0 + 10, 10),
                   event("optimizer_step", t0 + 95, 4, cat="user_annotation"), event("aten::add_", t0 + 95, 4)]
        if with_all_reduce:
            events.append(event("gloo:all_reduce", t0 + 15, 80, tid=2))
    return {"traceEvents": events, "distributedInfo": {"rank": 0, "world_size": 2}}


def compute_bound(summary: dict) -> dict | None:
    return next((f for f in diagnose.diagnose(summary) if f["rule"] == "compute_bound"), None)


def test_a_rank_waiting_inside_its_backward_is_not_called_compute_bound():
    waiting = summary_of(_backward_wait_trace(with_all_reduce=True))
    assert waiting["compute_in_collectives_ms"] == pytest.approx(75)  # 20-95 ms: its own work ends at 20
    assert compute_bound(waiting) is None
    busy = summary_of(_backward_wait_trace(with_all_reduce=False))
    assert busy["compute_in_collectives_ms"] == 0 and compute_bound(busy)["value"] == pytest.approx(0.97)
