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
whole block (function_profile.txt beside the trace).
"""
from __future__ import annotations

from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.profiler import ProfilerAction, record_function

from workbench.trace import callprofile, capture, explain, regions

RECORDING = (ProfilerAction.WARMUP, ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)


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
        if self._prof is not None:
            self._prof.step()

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
        doc = explain.analyze_file(self.trace_file)
        if show:
            print(explain.format_text(doc))
        return doc
