"""gpu-check's rows for the issue-17 targets, on made-up results (its ladder needs a GPU)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parents[1] / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_check)


def stage(name: str, status: str, ratio: float = 1.0, low: float = 0.9, high: float = 1.1, rate: float = 1000.0) -> dict:
    speed = {"ratio": ratio, "ci95_low": low, "ci95_high": high}
    return {"stage": name, "status": status, "applied": ["amp"], "reason": "",
            "metrics": {"speedup_vs_previous": speed, "speedup_vs_baseline": speed, "throughput": {"median": rate}}}


def test_the_final_target_needs_3x_and_a_low_end_above_2_5x():
    assert gpu_check._final_target([stage("final", "final", 3.4, 2.9, 3.9)])[0]
    assert not gpu_check._final_target([stage("final", "final", 3.4, 2.2, 5.0)])[0]   # the low end misses
    assert not gpu_check._final_target([stage("amp", "kept")])[0]                     # no final at all


def test_an_undecided_stage_with_a_large_effect_is_a_miss_and_a_small_one_is_not():
    ok, text = gpu_check._no_large_effect_left_open([stage("tf32", "undecided", 1.12, 0.95, 1.30),
                                                     stage("amp", "undecided", 1.04, 0.90, 1.20)])
    assert not ok and "tf32 1.12x" in text and "amp" not in text
    assert gpu_check._no_large_effect_left_open([stage("amp", "undecided", 1.04, 0.90, 1.20)])[0]


@pytest.mark.parametrize("elapsed, passed", [(470.0, True), (490.0, False)])
def test_the_time_target_is_eight_minutes(elapsed, passed):
    assert gpu_check._in_time(elapsed)[0] is passed


def test_the_batch_target_is_asked_only_when_the_batch_may_change():
    results = [stage("final", "final", rate=11_500.0)]
    assert gpu_check._batch_change_target(results, allowed=False)[0] is None
    assert gpu_check._batch_change_target(results, allowed=True)[0] is True
    assert gpu_check._batch_change_target([stage("final", "final", rate=9_000.0)], allowed=True)[0] is False
