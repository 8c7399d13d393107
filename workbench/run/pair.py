"""A paired round in one fresh process: both configurations built, warmed up, then timed one after the
other in the round's order, each with its own peaks; then the untimed extras where asked.

Sharing the process means whatever offset this process has (where its memory landed, which cores it
got) falls on both configurations of the round alike, and the ratio of the two windows keeps only
their difference; a new process per round puts that offset's variation into the interval over rounds.
The timing-only results are written as soon as both windows are in, so a run stopped during the
extras (a trace pass) keeps the round.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from workbench.config import RunConfig
from workbench.run.executor import build, finish, joined, prepare, timed_window, window_metrics
from workbench.results import write_json_atomic
from workbench.run.worker import StoppableProgress, _install_stop_handler, _jsonable, failed_raw, peak_for

CANCELLED = {"status": "cancelled", "error": "not measured: the other configuration of the round failed"}


class BothSides:
    """The stop handler's view of a round: timing is done only when both windows are."""

    def __init__(self, progress: list[StoppableProgress]) -> None:
        self.progress, self.stop_requested = progress, False

    def timing_done(self) -> bool:
        return all(p.timing_done() for p in self.progress)


def _build_side(side: dict, model_factory, dataset):
    log = lambda message: print(f"[{side['stage']}] {message}", file=sys.stderr, flush=True)
    return build(RunConfig(**side["config"]), model_factory, dataset, log=log)


def interleaved(built: dict, order: list[str], progress: dict) -> dict:
    """Both sides' timed repeats, interleaved A B B A ...: drift within the round (a neighbour's
    burst, a clock change) falls on both sides alike instead of on one window. With one repeat
    each this is the plain A B of a round."""
    parts = {key: [] for key in order}
    for repeat in range(max(built[key].cfg.repeats for key in order)):
        for key in order if repeat % 2 == 0 else order[::-1]:
            if repeat < built[key].cfg.repeats:
                parts[key].append(timed_window(built[key], progress[key], only=repeat))
    return {key: joined(parts[key]) for key in order}


def build_sides(sides: dict, order: list[str], model_factory=None, dataset=None) -> tuple[dict, dict | None]:
    """Built configurations by side; on a failure, (partial, raws saying which side failed and why)."""
    built = {}
    for key in order:
        try:
            built[key] = _build_side(sides[key], model_factory, dataset)
        except (Exception, torch.OutOfMemoryError) as error:  # this side cannot run: the round cannot either
            return built, {other: (failed_raw(error) if other == key else dict(CANCELLED)) for other in sides}
    return built, None


def _timing_only(built, side: dict, window, warmup_s: float) -> dict:
    peak, source = peak_for(built.cfg, built.device.type, side.get("peaks", {}))
    metrics = window_metrics(built, window, warmup_s, peak, source, built.notes["rss_before_model_mb"])
    return {"metrics": metrics, "trace_file": None, "trace_size_mb": None, "status": "measured",
            "data": built.data_description, "notes": _jsonable(built.notes)}


def run_pair(spec: dict, model_factory=None, dataset=None, install_handler: bool = False) -> dict[str, dict]:
    """Both sides of a round, measured in this process; one raw result per side."""
    sides, order = spec["pair"], spec["order"]
    progress = {key: StoppableProgress(sides[key]["stage"], sys.stderr) for key in sides}
    if install_handler:  # only in a worker process: never touch a notebook's signal handling
        _install_stop_handler(BothSides(list(progress.values())))
    built, failed = build_sides(sides, order, model_factory, dataset)
    if failed:
        return failed
    warmup = {key: prepare(built[key], progress[key]) for key in order}
    windows = interleaved(built, order, progress)  # back to back, nothing between
    raws = {key: _timing_only(built[key], sides[key], windows[key], warmup[key]) for key in order}
    _write(sides, raws)  # the round is in: a stop during the extras keeps it
    for key in order:
        if sides[key].get("extras"):
            trace_dir = Path(sides[key]["trace_dir"]) if sides[key].get("trace_dir") else None
            raws[key].update(finish(built[key], raws[key]["metrics"], trace_dir, progress[key], sides[key]["extras"]),
                             extras=True)
    return raws


def _write(sides: dict, raws: dict) -> None:
    for key, raw in raws.items():
        write_json_atomic(Path(sides[key]["out"]), raw)


def main(spec: dict) -> int:
    """`python -m workbench.run.worker PAIR_SPEC.json`: write both sides' results; exit 0 when both measured."""
    try:
        raws = run_pair(spec, install_handler=True)
    except KeyboardInterrupt:  # stopped before both windows were timed: nothing worth writing
        return 130
    except (Exception, torch.OutOfMemoryError) as error:  # anything else: recorded for both sides
        raws = {key: failed_raw(error) for key in spec["pair"]}
    _write(spec["pair"], raws)
    return 0 if all(raw.get("status") == "measured" for raw in raws.values()) else 1
