"""`workbench compare A B --remeasure`: the two runs' final configurations measured again, here and
now, in paired rounds: absolute figures in one time window, where the recorded ones were taken
minutes or days apart.

It needs this checkout's code, so it answers "is B's configuration slower than A's on this machine",
not "did the code between two revisions get slower" (for that, each run's own paired speedups:
report/compare.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workbench import stats
from workbench.config import RunConfig
from workbench.errors import UsageError
from workbench.progress import stderr_log
from workbench.results import load_stage_results
from workbench.run import rounds as paired_rounds
from workbench.run.console import fmt


@dataclass(frozen=True)
class Bench:
    """What paired rounds need from a run, for a comparison outside any run (no folders, no trace)."""

    log: Callable[[str], None] = stderr_log
    peaks: dict | None = None
    nproc: int = 1
    isolate: bool = True
    model_factory: Callable | None = None
    dataset: object = None


def final_config(run_dir: Path) -> tuple[RunConfig, str]:
    """The configuration a run ended with (its headline's; else its baseline), measured as now."""
    by_stage = {r["stage"]: r for r in load_stage_results(run_dir)}
    chosen = by_stage.get("final") or by_stage.get("baseline")
    if chosen is None or not chosen.get("config"):
        raise UsageError(f"{run_dir} has neither a final nor a baseline result to measure again; allowed: a run "
                         "that measured its baseline")
    return RunConfig(**chosen["config"]).with_overrides(trace=False), chosen["stage"]


def remeasure(run_a: Path, run_b: Path, rounds: int, threshold: float, log=stderr_log) -> dict:
    """A's and B's final configurations in `rounds` paired rounds: B/A with its interval and verdict."""
    (a, a_stage), (b, b_stage) = final_config(run_a), final_config(run_b)
    bench = Bench(log=log, peaks={})
    log(f"== remeasure: {run_a.name} ({a_stage}) vs {run_b.name} ({b_stage}), {rounds} paired rounds")
    comparison = paired_rounds.compare(bench, paired_rounds.Side(a, f"A {a_stage}"),
                                       paired_rounds.Side(b, f"B {b_stage}"), rounds, "remeasure")
    if comparison.interrupted is not None:
        raise comparison.interrupted
    if comparison.failure is not None:
        return {"status": "failed", "error": comparison.failure.error, "regressed": True}
    ratio = comparison.ratio()
    verdict = stats.judged_verdict(ratio, threshold)
    return {"status": "measured", "a": comparison.rates("a"), "b": comparison.rates("b"), "ratio": ratio,
            "verdict": verdict, "regressed": ratio["ci95_high"] < 1 - threshold,
            "text": f"B/A {fmt(ratio)} ({verdict}), paired in one time window"}
