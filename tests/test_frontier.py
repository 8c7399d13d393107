"""The frontier choice, pure, on given points: the fastest that fits, out-of-memory points recorded,
a change of optimizer only when allowed, and the lines the report opens with."""
from __future__ import annotations

from workbench import frontier
from workbench.frontier import MEASURED, OUT_OF_MEMORY, Point


def point(name, peak, speedup, changes=False) -> Point:
    return Point(name, peak, speedup, 100.0 * speedup, MEASURED, changes)


POINTS = [point("baseline", 801, 1.0), point("amp", 594, 1.6), point("budget+accumulation_x2", 495, 1.45),
          point("budget+checkpointing", 450, 1.2), point("budget+adamw8bit", 440, 1.55, changes=True),
          Point("budget+compile", None, None, None, OUT_OF_MEMORY)]


def test_the_fastest_that_fits_not_the_smallest():
    assert frontier.choose(POINTS, 512).name == "budget+accumulation_x2"
    assert frontier.choose(POINTS, 1000).name == "amp"


def test_a_change_of_optimizer_is_chosen_only_when_allowed():
    assert frontier.choose(POINTS, 512, allow_optimizer_change=True).name == "budget+adamw8bit"
    assert frontier.choose(POINTS, 445, allow_optimizer_change=False) is None
    assert frontier.choose(POINTS, 445, allow_optimizer_change=True).name == "budget+adamw8bit"


def test_between_equals_the_lower_peak():
    assert frontier.choose([point("a", 500, 1.2), point("b", 400, 1.2)], 512).name == "b"


def test_out_of_memory_points_never_fit_and_nothing_fitting_is_none():
    assert frontier.choose(POINTS, 100) is None
    assert frontier.smallest(POINTS).name == "budget+adamw8bit"
    line = frontier.nothing_fits_line(POINTS, 100, "sharding over 4 processes")
    assert line == ("nothing measured fits the 100 MiB budget; the smallest was 440 MiB (budget+adamw8bit); "
                    "what would: sharding over 4 processes")


def test_the_frontier_keeps_what_nothing_beats_on_both():
    assert [p.name for p in frontier.pareto(POINTS)] == ["budget+adamw8bit", "amp"]
    assert [p.name for p in frontier.pareto(POINTS[:4])] == ["budget+checkpointing", "budget+accumulation_x2", "amp"]


def test_points_from_stage_files_with_out_of_memory_failures():
    docs = [{"stage": "baseline", "status": "baseline", "metrics": {"peak_memory_mb": 801, "throughput": {"median": 20.0}}},
            {"stage": "budget+checkpointing", "status": "tradeoff", "changes": "",
             "metrics": {"peak_memory_mb": 450, "speedup_vs_baseline": {"ratio": 0.8}}},
            {"stage": "budget+amp", "status": "failed", "reason": "out of memory: OutOfMemoryError: CUDA out of memory."},
            {"stage": "big", "status": "failed", "reason": "RuntimeError: DefaultCPUAllocator: can't allocate memory"},
            {"stage": "compile", "status": "failed", "reason": "RuntimeError: something else"},
            {"stage": "tf32", "status": "skipped", "reason": "no GPU"},
            {"stage": "host_allocator", "status": "kept", "adopted_config": {"precision": "bf16"},
             "config": {"precision": "fp32"}, "metrics": {"peak_memory_mb": 801, "speedup_vs_baseline": {"ratio": 2.0}}},
            {"stage": "amp", "status": "kept", "adopted_config": {"precision": "bf16", "rounds": 4},
             "config": {"precision": "bf16", "rounds": 1}, "metrics": {"peak_memory_mb": 594, "speedup_vs_baseline": {"ratio": 1.5}}},
            {"stage": "final", "status": "final", "metrics": {"peak_memory_mb": 450, "speedup_vs_baseline": {"ratio": 0.8}}}]
    found = {p.name: p for p in frontier.points_from(docs)}
    # host_allocator joined another configuration on its second look: no point; amp joined its own: a point
    assert set(found) == {"baseline", "budget+checkpointing", "budget+amp", "big", "amp"}
    assert found["budget+checkpointing"].throughput == 16.0 and found["baseline"].speedup == 1.0
    assert found["budget+amp"].status == OUT_OF_MEMORY and found["big"].status == OUT_OF_MEMORY


def test_the_fits_line():
    line = frontier.fits_line(POINTS[2], 512, POINTS[1])
    assert line == ("fits: 495 MiB of the 512 MiB budget at 145 samples/s, 0.91x of the unconstrained best (amp) "
                    "(budget+accumulation_x2)")
