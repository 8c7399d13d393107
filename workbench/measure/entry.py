"""The child's one entry point: a request (launch/messages.RoundSpec) in, one report per side out.

Called by a launcher (workbench/launch/launchers.py): `main(path)` in a measuring process of its own
(forked from the warm server, or exec'd through launch/bootstrap.py, or one of torchrun's ranks),
`run_request(path, objects)` in the parent's own process, `preload(path)` in the fork server before
it forks. Two sides are a paired round (pair.py); one side is measured alone (single.py). Whatever
happens (out of memory, a compile error, a stage that does not apply) each side gets a report that
says why, so the parent records the reason and goes on.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from workbench.launch import channel
from workbench.launch.messages import RoundSpec, SideReport
from workbench.measure import distributed, failures
from workbench.measure.distributed import DistInfo
from workbench.measure.pair import run_pair
from workbench.measure.single import measure_alone
from workbench.training import host_memory
from workbench.training.data import preload_cifar


def read_request(path: str) -> RoundSpec:
    return RoundSpec.from_json(json.loads(Path(path).read_text()))


def main(path: str) -> int:
    """In a measuring process of its own: its exit status (0 when every side measured)."""
    try:
        return _measure(read_request(path), {}, in_own_process=True)
    except KeyboardInterrupt:  # stopped before the timed steps ended: nothing more to report, no traceback
        return 130


def run_request(path: str, objects: dict | None = None) -> int:
    """In the caller's process (objects from Python: a model factory, a dataset)."""
    return _measure(read_request(path), objects or {}, in_own_process=False)


def _measure(request: RoundSpec, objects: dict, in_own_process: bool) -> int:
    send = lambda report: channel.send(request.channel, report)
    try:
        use_host_allocator(request, in_own_process)
    except (RuntimeError, ValueError) as error:  # every side is told why; nothing was built
        for key in request.order:
            send(failures.failed(key, error))
        return 1
    if request.paired:
        return _pair(request, send, objects, in_own_process)
    with tempfile.TemporaryDirectory(prefix="workbench-traces-") as spare:
        return _alone(request, send, objects, in_own_process, Path(spare))


def use_host_allocator(request: RoundSpec, in_own_process: bool) -> None:
    """Put this process under its configurations' host allocator (training/host_memory.py) before
    anything is built. It is one setting for the whole process: the sides of a paired round must share
    it (rounds.py runs sides that differ each alone), and a round in the caller's own process leaves
    the caller's allocator alone."""
    wanted = {config.get("host_allocator", "system") for config in request.configs()}
    if len(wanted) > 1:
        raise ValueError(f"the sides of one process differ in host_allocator ({', '.join(sorted(wanted))}), "
                         "a setting of the whole process: each side must be measured in its own")
    allocator = wanted.pop()
    if allocator != "system" and not in_own_process:
        raise RuntimeError(f"host_allocator={allocator} is set per measuring process, and this round runs in "
                           "your own Python process (a model or dataset passed from Python)")
    host_memory.use(allocator)


def _alone(request: RoundSpec, send, objects: dict, in_own_process: bool, spare: Path) -> int:
    key = request.order[0]
    side, home = request.sides[key], request.sides[key].trace_dir
    if home and distributed.from_environment().node_rank > 0:
        # Node 0's trace folder is not this node's: trace into a folder of our own, then send the files.
        side = replace(side, trace_dir=str(spare))
    dist = DistInfo()

    def alone() -> SideReport:
        nonlocal dist
        report, dist = measure_alone(key, side, objects, in_own_process)
        return report
    report = failures.guarded(alone, key)
    if report.measured and home and dist.nnodes > 1:
        report = failures.guarded(lambda: _with_every_trace(report, dist, spare, Path(home)), key)
    if dist.is_main:
        send(report)
    if report.measured:
        distributed.teardown(dist)
        return 0
    # A failed rank must not wait at a barrier its peers never reach: exit non-zero, torchrun stops the rest.
    return 1 if dist.enabled else 0


def _with_every_trace(report: SideReport, dist: DistInfo, spare: Path, home: Path) -> SideReport:
    """Every node's traces in node 0's trace folder (the report, rank 0's, names its own trace)."""
    written = distributed.gather_files(spare, dist, home)
    if not dist.is_main:
        return report
    return replace(report, notes={**report.notes, "traces_from_other_nodes": len(written)})


def _pair(request: RoundSpec, send, objects: dict, in_own_process: bool) -> int:
    sent: dict[str, SideReport] = {}

    def keep(report: SideReport) -> None:
        sent[report.side] = report
        send(report)
    try:
        run_pair(request, keep, objects, in_own_process)
    except (Exception, torch.OutOfMemoryError) as error:  # reported for the sides not yet timed; timed ones stand
        for key in request.sides:
            if key not in sent:
                keep(failures.failed(key, error))
    return 0 if all(sent[key].measured for key in request.sides) else 1


def preload(path: str) -> None:
    """Run by the fork server itself before it forks the round for path: decode the CIFAR-format data
    the request reads, so the round inherits it (numpy only: no torch op, no thread). Best effort:
    anything wrong here is left for the round itself to find and report."""
    for config in read_request(path).configs():
        if config.get("data_dir") and not str(config.get("data", "")).startswith("imagefolder:"):
            preload_cifar(config["data_dir"])
