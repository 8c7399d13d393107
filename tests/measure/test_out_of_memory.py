"""Running out of memory is a point on the frontier, never a crash: CUDA's error and the CPU allocator's
alike are recorded as 'out of memory', and the frontier reads them as such."""
from __future__ import annotations

import torch

from workbench import frontier
from workbench.measure import failures
from workbench.launch.messages import SideReport


def too_big() -> SideReport:
    torch.empty(1 << 60, dtype=torch.uint8)  # an exabyte: the real CPU allocator refuses it
    raise AssertionError("unreachable")


def test_the_cpu_allocators_refusal_is_out_of_memory_without_a_traceback(capsys):
    report = failures.guarded(too_big, "b")
    assert report.status == "failed" and report.error.startswith("out of memory: RuntimeError")
    assert "can't allocate memory" in report.error and "Traceback" not in capsys.readouterr().err
    doc = {"stage": "budget+big", "status": "failed", "reason": report.error}
    assert frontier.points_from([doc]) == [frontier.Point("budget+big", None, None, None, frontier.OUT_OF_MEMORY)]


def test_cudas_error_is_out_of_memory_too():
    report = failures.failed("a", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert report.error.startswith("out of memory: OutOfMemoryError") and frontier.is_out_of_memory(report.error)


def test_other_failures_are_not(capsys):
    report = failures.guarded(lambda: 1 / 0, "a")
    assert not frontier.is_out_of_memory(report.error) and "Traceback" in capsys.readouterr().err
