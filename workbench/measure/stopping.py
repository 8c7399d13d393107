"""How a measuring process is stopped: before its timed windows are in, at once; after them, the
untimed extras are cut short and the timed figures are still reported."""
from __future__ import annotations

import signal
import threading

from workbench.progress import Progress


class TraceInterrupted(Exception):
    """Raised in the passes after the timed steps: an Exception, so the timed figures are kept."""


class StoppableProgress(Progress):
    """Progress that knows whether the timed steps are done, so a stop can keep their figures."""

    stop_requested = False
    step = total = None

    def timing_done(self) -> bool:
        repeats = self.phase or ""
        last = repeats.startswith("repeat ") and repeats.split()[-1].split("/")[0] == repeats.split("/")[-1]
        return self.phase == "trace" or (last and self.step == self.total)

    def update(self, phase: str, step: int | None = None, total: int | None = None, force: bool = False) -> None:
        self.step, self.total = step, total
        super().update(phase, step, total, force)
        if self.stop_requested and self.phase == "trace":
            raise TraceInterrupted("stopped by the user during the trace pass")


class BothSides:
    """The stop handler's view of a paired round: timing is done only when both sides' windows are."""

    def __init__(self, progress: list[StoppableProgress]) -> None:
        self.progress, self.stop_requested = progress, False

    def timing_done(self) -> bool:
        return all(p.timing_done() for p in self.progress)


def install_stop_handler(progress: StoppableProgress | BothSides) -> None:
    """SIGINT/SIGTERM (the parent stopping our group): before the timed steps end, stop at once;
    after them, skip the evaluation and trace passes and report the timed figures. Only in a
    measuring process of its own: a caller measuring in-process keeps its own signal handling."""
    def handler(signum, frame):
        if progress.stop_requested or not progress.timing_done():
            raise KeyboardInterrupt
        progress.stop_requested = True
        raise TraceInterrupted("stopped by the user after the timed steps")

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)
