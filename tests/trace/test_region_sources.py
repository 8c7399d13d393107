"""Which source each region comes from, per region: the trace's own annotation (a range named after one
of regions.REGIONS) where it has one, PyTorch's and Lightning's markers for every region it does not
name. Hand-written CPU traces with exact figures (no torch)."""
from __future__ import annotations

import pytest

from workbench.trace.analyze import analyze_loaded, step_breakdown

from tests.trace.test_ranks import ddp_traces

LOADER = "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"
AUTOGRAD = "autograd::engine::evaluate_function: AddmmBackward0"
OWN = "workbench regions"


def event(name: str, start_ms: float, dur_ms: float, cat: str = "cpu_op") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": 1, "ts": start_ms * 1000, "dur": dur_ms * 1000}


def annotation(name: str, start_ms: float, dur_ms: float) -> dict:
    return event(name, start_ms, dur_ms, cat="user_annotation")


def user_step(t0: float) -> list[dict]:
    """A user's 20 ms step that names only its forward: fetch 0-4, forward 4-9, an unnamed .item() 9-10,
    backward (autograd ops) 10-16, optimizer step 16-19, 1 ms of nothing at the end."""
    return [annotation(f"ProfilerStep#{int(t0 // 20) + 1}", t0, 20), annotation(LOADER, t0, 4),
            annotation("forward", t0 + 4, 5), event("aten::linear", t0 + 4, 5), event("aten::item", t0 + 9, 1),
            event(AUTOGRAD, t0 + 10, 6), annotation("Optimizer.step#SGD.step", t0 + 16, 3),
            event("aten::add_", t0 + 16, 3)]


def own_step(t0: float) -> list[dict]:
    """The same step with all five regions named, as the workbench's own loop names them; PyTorch's
    markers still inside them, and one zero_grad marker outside every region."""
    return user_step(t0) + [annotation("data_loading", t0, 4), annotation("host_to_device", t0 + 4, 0.5),
                            annotation("backward", t0 + 9.5, 6.5), annotation("optimizer_step", t0 + 16, 2.5),
                            annotation("Optimizer.zero_grad#SGD.zero_grad", t0 + 18.5, 1)]


def trace(step, steps: int = 2) -> dict:
    return {"traceEvents": [e for k in range(steps) for e in step(20 * k)]}


def test_a_user_range_named_forward_keeps_the_pytorch_markers_of_the_other_regions():
    summary = analyze_loaded(trace(user_step), "user")[0]
    assert summary["breakdown_ms"] == pytest.approx(
        {"data_loading": 4, "host_to_device": 0, "forward": 5, "backward": 6, "optimizer_step": 3, "other": 2})
    markers = summary["markers"]
    assert markers["forward"] == OWN  # the user's own range, not inferred from ops
    assert markers["data_loading"] == "enumerate(DataLoader)#..."
    assert markers["optimizer_step"] == "Optimizer.step#..."
    assert markers["backward"].startswith("autograd engine ops")
    assert markers["host_to_device"] == "not found"


def test_a_fully_annotated_trace_reads_only_its_own_regions():
    """The workbench's own loop: every region from its annotation, no marker or inference added."""
    rows = step_breakdown(trace(own_step))
    assert rows[0] == pytest.approx({"step": 1, "step_ms": 20, "data_loading_ms": 4, "host_to_device_ms": 0.5,
                                     "forward_ms": 4.5, "backward_ms": 6.5, "optimizer_step_ms": 2.5,
                                     "other_ms": 2})
    markers = analyze_loaded(trace(own_step), "own")[0]["markers"]
    assert {region: markers[region] for region in markers if region != "steps"} == dict.fromkeys(
        ("data_loading", "host_to_device", "forward", "backward", "optimizer_step"), OWN)


def test_a_user_range_named_backward_keeps_the_fetch_and_the_optimizer_step():
    """A DDP user loop with loss.backward() in its own "backward" range (tests/trace/ddp_traces.py's
    backward_region case): its fetch, forward and optimizer step still read, from PyTorch's markers."""
    summary = analyze_loaded(ddp_traces(fetch=[3, 3], backward=[10, 10], region=True)[0], "rank0")[0]
    parts = summary["breakdown_ms"]
    assert (parts["data_loading"], parts["forward"], parts["optimizer_step"]) == pytest.approx((3, 2, 1))
    assert summary["markers"]["backward"] == OWN
    assert summary["markers"]["optimizer_step"] == "Optimizer.step#..."
