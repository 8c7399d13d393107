"""A paired round in one fresh process: both configurations built, warmed up, then timed in the round's
order, their windows interleaved, each with its own peaks; then the untimed extras where asked.

Sharing the process means whatever offset this process has (where its memory landed, which cores it
got) falls on both configurations of the round alike, and the ratio of the two windows keeps only
their difference; a new process per round puts that offset's variation into the interval over rounds.
Each side is reported as soon as both windows are in (phase "timed"), and again after its extras
(phase "final"), so a round stopped during the extras (a trace pass) keeps its timings.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch

from workbench.config import RunConfig
from workbench.launch.messages import RoundSpec, SideReport, SideSpec
from workbench.measure import failures
from workbench.peaks import peak_for
from workbench.measure.executor import Built, build, finish, joined, prepare, timed_window, window_metrics
from workbench.measure.stopping import BothSides, StoppableProgress, install_stop_handler

Send = Callable[[SideReport], None]


def _build_side(side: SideSpec, objects: dict) -> Built:
    log = lambda message: print(f"[{side.stage}] {message}", file=sys.stderr, flush=True)
    return build(RunConfig(**side.config), objects.get("model_factory"), objects.get("dataset"), log=log,
                  optimizer_factory=objects.get("optimizer_factory"))


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


def build_sides(request: RoundSpec, objects: dict) -> tuple[dict, list[SideReport]]:
    """Built configurations by side; on a failure, the reports saying which side failed and why."""
    built = {}
    for key in request.order:
        try:
            built[key] = _build_side(request.sides[key], objects)
        except (Exception, torch.OutOfMemoryError) as error:  # this side cannot run: the round cannot either
            return built, [failures.failed(other, error) if other == key else failures.cancelled(other)
                           for other in request.sides]
    return built, []


def side_report(key: str, built: Built, side: SideSpec, raw: dict, phase: str) -> SideReport:
    return SideReport(key, "measured", phase, raw["metrics"], data=built.data_description,
                      notes=jsonable(built.notes), trace_file=raw.get("trace_file"),
                      trace_size_mb=raw.get("trace_size_mb"), extras=phase == "final" and side.extras != "none")


def jsonable(notes: dict) -> dict:
    return {key: value for key, value in notes.items() if isinstance(value, (int, float, str, list, bool))}


def run_pair(request: RoundSpec, send: Send, objects: dict, in_own_process: bool) -> None:
    """Both sides of a round, measured here; each side reported through send."""
    order = list(request.order)
    progress = {key: StoppableProgress(request.sides[key].stage) for key in order}
    if in_own_process:  # never touch a notebook's signal handling
        install_stop_handler(BothSides(list(progress.values())))
    built, failed = build_sides(request, objects)
    for report in failed:
        send(report)
    if failed:
        return
    warmup = {key: prepare(built[key], progress[key]) for key in order}
    windows = interleaved(built, order, progress)  # back to back, nothing between
    timed = {}
    for key in order:
        peak, source = peak_for(built[key].cfg.precision, built[key].cfg.tf32, dict(request.sides[key].peaks))
        timed[key] = window_metrics(built[key], windows[key], warmup[key], peak, source,
                                    built[key].notes["rss_before_model_mb"])
        send(side_report(key, built[key], request.sides[key], {"metrics": timed[key]}, "timed"))
    for key in order:  # the round is in: a stop during the extras keeps it
        side = request.sides[key]
        if side.extras != "none":
            trace_dir = Path(side.trace_dir) if side.trace_dir else None
            raw = finish(built[key], timed[key], trace_dir, progress[key], side.extras)
            send(side_report(key, built[key], side, raw, "final"))
