"""Progress lines on the terminal: stage, what it is doing, step, repeat and elapsed time."""
from __future__ import annotations

import sys
import time

MIN_INTERVAL_S = 2.0


def stderr_log(message: str) -> None:
    """One line of narration on stderr (stdout stays for results)."""
    print(message, file=sys.stderr, flush=True)


class Progress:
    """Prints a line when a phase starts and then at most one per MIN_INTERVAL_S, to stderr."""

    def __init__(self, stage: str, stream=None) -> None:
        self.stage, self.stream = stage, stream or sys.stderr
        self.start = self.last = time.perf_counter()
        self.printed_once, self.phase = False, None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def update(self, phase: str, step: int | None = None, total: int | None = None, force: bool = False) -> None:
        now = time.perf_counter()
        new_phase = phase != self.phase
        if not (force or new_phase) and now - self.last < MIN_INTERVAL_S:
            return
        counter = "" if step is None else f" step {step}/{total}" if total is not None else f" step {step}"
        print(f"[{self.stage}] {phase}{counter}  elapsed {self.elapsed():6.1f}s", file=self.stream, flush=True)
        self.last, self.printed_once, self.phase = now, True, phase

