"""The one reading of a measurement's failure: skipped (the stage does not apply), out of memory, or
failed with the error's first line, as the side's report."""
from __future__ import annotations

import sys
import traceback
from typing import Callable

import torch

from workbench.errors import StageSkipped
from workbench.launch.messages import SideReport

CANCELLED = "not measured: the other configuration of the round failed"
OUT_OF_MEMORY = "out of memory: "


def failed(side: str, error: BaseException) -> SideReport:
    if isinstance(error, StageSkipped):
        return SideReport.failed(side, str(error), status="skipped")
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    # CUDA's error has a type of its own; the CPU allocator's is a RuntimeError that says so.
    out_of_memory = isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in message.lower()
    prefix = OUT_OF_MEMORY if out_of_memory else ""
    return SideReport.failed(side, f"{prefix}{type(error).__name__}: {message}"[:500])


def cancelled(side: str) -> SideReport:
    return SideReport.failed(side, CANCELLED, status="cancelled")


def guarded(measure: Callable[[], SideReport], side: str) -> SideReport:
    """measure(), with every failure a report that says why (Ctrl-C still stops)."""
    try:
        return measure()
    except (StageSkipped, torch.OutOfMemoryError) as error:
        return failed(side, error)
    except Exception as error:  # any configuration's failure is recorded; the ladder or experiment goes on
        report = failed(side, error)
        if not report.error.startswith(OUT_OF_MEMORY):  # running out of memory is a point, not a bug to trace
            traceback.print_exc(limit=3, file=sys.stderr)
        return report
