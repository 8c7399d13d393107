"""Instrument your own training loop: a scheduled trace in the workbench's layout, then its breakdown
and findings, without changing how the loop trains.

    from workbench.trace.instrument import Instrument

    inst = Instrument("profiles/my-loop")
    with inst:
        for x, y in inst.batches(loader):              # data_loading, and one profiler step per batch
            with inst.region("forward"):
                loss = loss_fn(model(x), y)
            with inst.region("backward"):
                loss.backward()
            with inst.region("optimizer_step"):
                opt.step()
                opt.zero_grad()
    inst.report()                                      # prints; returns summary + findings

A loop that does not iterate a loader calls ``inst.step()`` once per step instead, with its fetch in
``inst.region("data_loading")``. Regions left out are found from PyTorch's own markers (see
workbench.trace.markers). The profiler records 3 steps after 1 skipped and 1 warm-up step; after that,
regions are no-ops and the loop runs unprofiled. ``functions=True`` adds a cProfile view of the
whole block (function_profile.txt beside the trace). The steps after the trace (torch.profiler off)
are counted too (page faults, the kernel's share of the CPU time: workbench/host_usage.py): from 3
of them on, the report's `page_faults` finding can say the loop faults freed memory back in every step.
"""
from __future__ import annotations

from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.profiler import ProfilerAction, record_function

from workbench import host_usage
from workbench.trace import callprofile, capture, explain, regions

RECORDING = (ProfilerAction.WARMUP, ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)
MIN_HOST_STEPS = 3  # unprofiled steps after the trace before their page faults are reported


def _rank() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Instrument:
    """Context manager around a training loop; see the module docstring."""

    def __init__(self, trace_dir: Path | str, device_type: str | None = None, with_stack: bool = False,
                 functions: bool = False) -> None:
        self.trace_dir = Path(trace_dir)
        self.device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
        self.with_stack, self.functions = with_stack, functions
        self.written: list[Path] = []
        self.steps = 0
        self._prof = None
        self._stack = ExitStack()
        self._recorded = False
        self._host_start: tuple[host_usage.Counters, int] | None = None  # counters and step count after the trace
        self._host_window: tuple[host_usage.Counters, int] | None = None

    def __enter__(self) -> "Instrument":
        rank, world_size = _rank()
        if self.functions:
            self._stack.enter_context(callprofile.function_profile(
                self.trace_dir / "function_profile.txt", "the instrumented loop"))
        self._prof = self._stack.enter_context(capture.scheduled_profiler(
            self.trace_dir, self.device_type, self.with_stack, rank, world_size, self.written))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()  # stops the profiler (writing a trace cut short), then cProfile
        self._prof = None

    @property
    def recording(self) -> bool:
        return self._prof is not None and self._prof.current_action in RECORDING

    def region(self, name: str):
        """A named range while the profiler records; nothing afterwards."""
        if name not in regions.REGIONS:
            raise ValueError(f"region {name!r} is not one of {', '.join(regions.REGIONS)}")
        return record_function(name) if self.recording else nullcontext()

    def step(self) -> None:
        """End of one training step (the profiler's schedule advances)."""
        self.steps += 1
        if self._prof is None:
            return
        self._recorded = self._recorded or self.recording
        self._prof.step()  # the step that ends the recording also writes the trace: counted from after it
        if self._recorded and not self.recording:
            self._count_host()

    def _count_host(self) -> None:
        if self._host_start is None:
            self._host_start = (host_usage.process_counters(), self.steps)
            return
        counters, first = self._host_start
        self._host_window = (host_usage.since(counters), self.steps - first)

    def host_cpu(self) -> dict | None:
        """Page faults and the kernel's share over the unprofiled steps after the trace (None under
        MIN_HOST_STEPS of them)."""
        if self._host_window is None or self._host_window[1] < MIN_HOST_STEPS:
            return None
        counters, steps = self._host_window
        return host_usage.per_step(counters, steps, f"getrusage over {steps} unprofiled steps after the trace "
                                                    "(every thread of this process)")

    def batches(self, loader: Iterable) -> Iterator:
        """The loader's batches, each fetch in data_loading; a step ends when the next batch is asked for."""
        iterator = iter(loader)
        first = True
        while True:
            if not first:
                self.step()
            first = False
            with self.region(regions.DATA_LOADING):
                batch = next(iterator, StopIteration)
            if batch is StopIteration:
                return
            yield batch

    @property
    def trace_file(self) -> Path | None:
        return self.written[-1] if self.written else None

    def report(self, show: bool = True) -> dict:
        """Breakdown and findings of the trace (after the with block); printed unless show=False."""
        if self.trace_file is None:
            raise RuntimeError("no trace was written: run the loop inside `with Instrument(...)` first")
        host = self.host_cpu()
        doc = explain.analyze_file(self.trace_file, {"host_cpu": host} if host else None)
        if show:
            print(explain.format_text(doc))
        return doc
