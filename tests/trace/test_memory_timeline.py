"""Memory over one step by category: weights, gradients and optimizer state told by the tensors, the
peak's moment named by its region; on a real step of a small model and on given events."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from workbench.trace import memory_timeline as timeline
from workbench.trace.capture import memory_timeline


@dataclass(frozen=True)
class Storage:
    ptr: int


@dataclass(frozen=True)
class Key:
    id: int
    storage: Storage
    device: str = "cpu"


def test_identity_beats_torchs_labels_and_the_peak_is_named():
    weight, state, act, grad = Key(1, Storage(10)), Key(2, Storage(20)), Key(3, Storage(30)), Key(4, Storage(30))
    events = [(-1, "PREEXISTING", weight, 0, 100), (-1, "PREEXISTING", state, 0, 200),
              (1_000, "CREATE", act, 0, 50),        # forward keeps an activation
              (5_000, "DESTROY", act, 0, 50),       # backward frees it, and its address is reused
              (6_000, "CREATE", grad, 0, 100),      # by the gradient, seen by its hook at 6.1 µs
              (9_000, "DESTROY", grad, 0, 100)]     # zero_grad
    torch_says = {weight: "input", state: "temporary", act: "activation", grad: "parameter"}
    times, sizes = timeline.coalesce(events, "cpu", {10: "weights", 20: "optimizer_state"}, [(30, 6_100)],
                                     lambda key, version: torch_says[key])
    at = dict(zip(times, sizes))
    named = lambda row: {c: v for c, v in zip(timeline.CATEGORIES, row) if v}
    assert named(at[1.0]) == {"weights": 100, "optimizer_state": 200, "activations": 50}
    assert named(at[6.0]) == {"weights": 100, "optimizer_state": 200, "gradients": 100}
    regions = [("forward", 0.5, 4.0), ("backward", 4.0, 7.0), ("optimizer_step", 7.0, 9.5)]
    summary = timeline.summarize(times, sizes, list(timeline.CATEGORIES), regions)
    assert summary["peak"]["mib"] * 2**20 == 400 and summary["peak"]["during"] == "backward"
    phases = {name: round(p["mib"] * 2**20) for name, p in summary["phases"].items()}
    assert phases == {"forward": 350, "backward": 400, "optimizer_step": 400}
    assert summary["phases"]["forward"]["by_category_mib"]["activations"] * 2**20 == 50
    assert timeline.region_at(9.8, regions) == "after optimizer_step"


def test_a_real_step_by_category():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))

    def step(_: int) -> None:
        with torch.profiler.record_function("forward"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("optimizer_step"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    step(0)  # the optimizer's state exists before the profiled step, as in a measured one
    summary = memory_timeline(step, "cpu", model, optimizer)
    weights = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    start = {c: sizes[0] for c, sizes in zip(summary["categories"], summary["sizes_mib"])}
    assert start["weights"] == pytest.approx(weights) and start["optimizer_state"] == pytest.approx(2 * weights, rel=0.01)
    assert max(summary["sizes_mib"][summary["categories"].index("gradients")]) == pytest.approx(weights)
    assert summary["peak"]["during"] in ("backward", "optimizer_step")
    assert {r["name"] for r in summary["regions"]} >= {"forward", "backward", "optimizer_step"}
