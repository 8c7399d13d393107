"""One configuration alone in its process: a ladder stage under torchrun (each side of a round runs
alone, in its own processes), or an experiment's configuration with its own measuring function."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from workbench.config import RunConfig
from workbench.device import resolve_device_type
from workbench.launch.forkserver import resolve
from workbench.launch.messages import SideReport, SideSpec
from workbench.measure import distributed
from workbench.peaks import peak_for
from workbench.measure.distributed import DistInfo
from workbench.measure.executor import build, measure_config
from workbench.measure.pair import jsonable
from workbench.measure.stopping import StoppableProgress, install_stop_handler


def measure_stage(side: SideSpec, objects: dict | None = None, dist: DistInfo = DistInfo(),
                  in_own_process: bool = False) -> dict:
    """A ladder stage's configuration: warm-up, timed repeats, then the extras the side asks for."""
    objects = objects or {}
    cfg = RunConfig(**side.config)
    # Only the first process talks: N copies of every progress line would say nothing more.
    stream = sys.stderr if dist.is_main else open(os.devnull, "w")
    progress = StoppableProgress(side.stage + (f" x{dist.world_size} processes" if dist.enabled else ""), stream)
    if in_own_process:  # never touch the signal handling of a caller running stages in-process
        install_stop_handler(progress)
    log = lambda message: print(f"[{side.stage}] {message}", file=stream, flush=True)
    built = build(cfg, objects.get("model_factory"), objects.get("dataset"), log=log,
                  optimizer_factory=objects.get("optimizer_factory"), dist=dist)
    peak, source = peak_for(cfg.precision, cfg.tf32, dict(side.peaks))
    trace_dir = Path(side.trace_dir) if side.trace_dir else None
    raw = measure_config(built, trace_dir, peak, source, built.notes["rss_before_model_mb"], progress, side.extras)
    return {**raw, "status": "measured", "data": built.data_description, "notes": jsonable(built.notes)}


def measure_alone(key: str, side: SideSpec, objects: dict, in_own_process: bool) -> tuple[SideReport, DistInfo]:
    """The side measured by its experiment's function or as a stage (joining torchrun's group if
    launched there); its report, and the process group it ran in."""
    if side.measure:
        return as_report(key, side, resolve(side.measure)(side)), DistInfo()
    dist = distributed.setup(resolve_device_type(side.config["device"]))
    return as_report(key, side, measure_stage(side, objects, dist, in_own_process)), dist


def as_report(key: str, side: SideSpec, raw: dict) -> SideReport:
    """A measuring function's raw result ({"metrics", "trace_file", ...}) as the side's final report."""
    return SideReport(key, raw.get("status", "measured"), "final", raw.get("metrics"), raw.get("error"),
                      raw.get("data"), raw.get("notes") or {}, raw.get("trace_file"), raw.get("trace_size_mb"),
                      extras=side.extras != "none")
