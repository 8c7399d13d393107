"""Function-level view of any Python code (cProfile): cumulative and self time, and who calls what.

Beside the line view (workbench/run/pyprofile.py): the line view says which line of the loop costs the
time, this one says which function, including library functions the line view does not instrument
(a dataset's __getitem__, a collate function, a transform). No torch import.
"""
from __future__ import annotations

import cProfile
import pstats
import time
from contextlib import contextmanager
from pathlib import Path

from workbench.results import write_text_atomic

TOP_FUNCTIONS = 20
TOP_CALLERS = 3


def _label(key: tuple) -> str:
    filename, line, function = key
    return function if filename == "~" else f"{Path(filename).name}:{line}({function})"


def function_rows(stats: pstats.Stats) -> list[dict]:
    """One row per function: calls, self seconds, cumulative seconds, its costliest callers."""
    rows = []
    for key, (_, calls, self_s, cumulative_s, callers) in stats.stats.items():
        ranked = sorted(callers.items(), key=lambda item: -item[1][3])[:TOP_CALLERS]
        rows.append({"function": _label(key), "calls": calls, "self_s": self_s, "cumulative_s": cumulative_s,
                     "callers": [_label(caller) for caller, _ in ranked]})
    return rows


def _table(rows: list[dict], key: str, wall_s: float, count: int) -> list[str]:
    lines = [f"{'share':>7} {'cum_s':>8} {'self_s':>8} {'calls':>8}  function  <- callers"]
    for row in sorted(rows, key=lambda r: -r[key])[:count]:
        share = row[key] / wall_s if wall_s else 0.0
        callers = ", ".join(row["callers"]) or "-"
        lines.append(f"{share:7.1%} {row['cumulative_s']:8.3f} {row['self_s']:8.3f} {row['calls']:8d}  "
                     f"{row['function']}  <- {callers}")
    return lines


def format_view(rows: list[dict], wall_s: float, what: str, count: int = TOP_FUNCTIONS) -> str:
    """Two tables, by cumulative time (where the time goes, callees included) and by self time
    (where it is spent); shares are of the profiled wall time."""
    head = [f"cProfile: {what}, {wall_s * 1000:.0f} ms wall", ""]
    return "\n".join(head + ["by cumulative time (callees included)"] + _table(rows, "cumulative_s", wall_s, count)
                     + ["", "by self time (the function's own code)"] + _table(rows, "self_s", wall_s, count)) + "\n"


@contextmanager
def function_profile(path: Path | str, what: str = "profiled code"):
    """Profile the block with cProfile and write the function view to path (also on an exception)."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    try:
        yield profiler
    finally:
        profiler.disable()
        wall_s = time.perf_counter() - start
        write_text_atomic(Path(path), format_view(function_rows(pstats.Stats(profiler)), wall_s, what))
