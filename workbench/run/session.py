"""A run's shared facts, settled once before any stage: device, capabilities, data, peaks, folders."""
from __future__ import annotations

import datetime as dt
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from workbench import device as devices
from workbench import environment
from workbench import memory_budget, peaks
from workbench.machine_lock import previous_run
from workbench.launch.nodes import Nodes
from workbench.run import folders
from workbench.training import host_memory, loader_sweep
from workbench.config import RunConfig
from workbench.training.data import load_configured
from workbench.config import check_device_support, is_token_workload
from workbench.training.model import check_model_spec, first_batch_facts
from workbench.training.step import UserTask
from workbench.errors import UsageError
from workbench.results import RUN_FILE, SCHEMA_VERSION, write_json_atomic
from workbench.progress import stderr_log
from workbench.run.stages import StageContext


# Above this 1-minute load per core before a run starts, we warn that timings will be off.
BUSY_LOAD_PER_CORE = 0.5
# Host memory one stage process needs at the least (torch, a small model, the loader): ~1 GiB measured.
MB_PER_PROCESS = 1024
# The default ladder's time budget: extra rounds only while the run stays under about 8 minutes on
# two cores (its planned rounds take 3-7 minutes there, by CPU kind).
DEFAULT_TIME_BUDGET_S = 480.0


@dataclass(frozen=True)
class Session:
    """A run's shared facts, read-only once built (a changed fact is a new Session: dataclasses.replace)."""

    base_cfg: RunConfig
    mode: str
    run_dir: Path
    profiles_dir: Path
    context: StageContext
    environment: dict
    data_description: str
    peaks: dict
    isolate: bool = True
    resume: bool = False
    model_factory: Callable | None = None
    dataset: object = None
    log: Callable[[str], None] = stderr_log
    decisions: dict = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)
    nproc: int = 1                       # processes per node
    single_process: dict | None = None   # the one-process baseline a multi-process run scales against
    nodes: Nodes = field(default_factory=Nodes)   # this node's place in a multi-node run (node 0 runs the ladder)
    link: object | None = None           # node 0 of several: the control store (run/nodes.Link)
    single_node: dict | None = None      # the one-node baseline (nproc processes) a multi-node run scales against
    # Extra rounds for open answers are spent only within this many seconds from the run's start.
    time_budget_s: float = DEFAULT_TIME_BUDGET_S
    # --memory-budget resolved on this device, in MiB (None: no budget); run/budget.py meets it.
    memory_budget_mib: float | None = None
    started: float = field(default_factory=time.monotonic)
    optimizer_factory: Callable | None = None   # the user's optimizer(model), from Python (api.optimize)

    @property
    def nnodes(self) -> int:
        return self.nodes.nnodes

    @property
    def world_size(self) -> int:
        return self.nproc * self.nodes.nnodes


def default_run_name() -> str:
    return dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")


def check_time_budget(seconds: float) -> None:
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"time_budget_s={seconds!r} is not allowed; allowed: a positive number of seconds "
                         f"(default {DEFAULT_TIME_BUDGET_S:.0f})")


def check_nproc(nproc: int, device_type: str, can_launch: bool) -> None:
    if nproc < 1:
        raise UsageError(f"nproc={nproc} is too small; it must be at least 1")
    if not can_launch:
        raise UsageError(f"nproc={nproc} needs each stage in fresh processes; a model factory or dataset "
                         "object from Python cannot be sent there (use nproc=1)")
    if device_type == "cuda" and nproc > torch.cuda.device_count():
        raise UsageError(f"nproc={nproc} is more than the {torch.cuda.device_count()} GPUs here; allowed: 1.."
                         f"{torch.cuda.device_count()}")
    if device_type != "cuda" and nproc > 1:
        check_host_room(nproc, devices.usable_cores(), available_memory_mb())


def check_host_room(nproc: int, cores: int, memory_mb: float | None) -> None:
    """On a CPU every process needs a core and about 1 GiB (torch, the model, the loader)."""
    if nproc > cores:
        raise UsageError(f"nproc={nproc} is more than the {cores} usable CPU cores here; allowed: 1..{cores}")
    if memory_mb is not None and nproc * MB_PER_PROCESS > memory_mb:
        most = max(1, int(memory_mb // MB_PER_PROCESS))
        raise UsageError(f"nproc={nproc} needs about {nproc * MB_PER_PROCESS / 1024:.0f} GiB of memory, "
                         f"{memory_mb / 1024:.1f} GiB is available; allowed: 1..{most}")


def available_memory_mb() -> float | None:
    """MemAvailable from /proc/meminfo (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _choose_workers(cfg: RunConfig, dataset, cores: int, wanted: bool, log) -> tuple[int, dict]:
    if not wanted:
        return 0, {}
    batch_bytes = cfg.batch_size * 3 * cfg.image_size ** 2 * 4  # float32 images after the per-sample transforms
    shm_note = loader_sweep.check_shared_memory(batch_bytes, cores, log)
    timings, errors = loader_sweep.sweep(dataset, cfg.batch_size, cores, cfg.seed, log)
    chosen = loader_sweep.best(timings)
    clamp = f"candidates {loader_sweep.candidates(cores)}, up to the {cores} usable cores"
    notes = {"workers_sweep_ms_per_batch": {str(k): round(v * 1000, 2) for k, v in timings.items()},
             "workers_choice": f"num_workers={chosen} (fewest within 5% of the fastest loader; {clamp})"}
    if errors:
        notes["workers_sweep_errors"] = {str(k): v for k, v in errors.items()}
    if shm_note:
        notes["shared_memory"] = shm_note
    return chosen, notes


def start(cfg: RunConfig, mode: str = "ladder", *, resume: bool = False, isolate: bool = True,
          model_factory: Callable | None = None, dataset=None, sweep_workers: bool = True,
          stages: list[str] | None = None, nproc: int = 1, log=stderr_log, overwrite: bool = False,
          time_budget_s: float = DEFAULT_TIME_BUDGET_S, nodes: Nodes = Nodes(), link: object | None = None) -> Session:
    """Settle everything a run shares, print the decisions, and write run.json.

    Everything is checked before the run's folders are made; if setup still fails (or is
    interrupted) the folders it made are removed again. On several nodes this is node 0's session
    (nodes, link: run/nodes.py); the other nodes have none (run/follow.py).
    """
    check_time_budget(time_budget_s)
    load_warning = busy_warning(devices.usable_cores(), previous_run())  # before our own sweep adds load
    device_type = devices.resolve_device_type(cfg.device)
    check_device_support(cfg, device_type)
    check_nproc(nproc, device_type, isolate or nproc == 1)
    check_host_allocator(cfg, isolate)
    cfg = cfg.with_overrides(run_name=cfg.run_name or default_run_name())
    run_dir, profiles_dir = folders.check(cfg.reports_dir, cfg.profiles_dir, cfg.run_name, resume, overwrite)
    facts = devices.probe(device_type)
    caps = devices.decide(facts)
    budget_mib, budget_note = resolve_memory_budget(cfg, facts)
    # The run's folders are made (and proved writable) before the data: a refused reports folder must
    # not leave 50,000 synthetic images behind. Whatever fails below removes what was made here.
    with folders.Created() as created:
        created.folder(run_dir, "reports_dir"), created.folder(profiles_dir, "profiles_dir")
        spec = None if dataset is not None else load_configured(cfg, log=log)
        data = dataset if dataset is not None else spec.dataset
        model_facts = {}
        if model_factory is None and spec is not None:
            model_facts = first_batch_facts(cfg.model, spec)
        elif model_factory is None:
            check_model_spec(cfg.model)
        world = nproc * nodes.nnodes
        if len(data) // world < cfg.batch_size:
            raise UsageError(f"batch_size={cfg.batch_size} is larger than a process's share of the data "
                             f"({len(data)} samples / {world} processes); allowed: at most {len(data) // world}")
        inner = getattr(dataset, "dataset", dataset) if isinstance(dataset, UserTask) else dataset
        description = spec.description if spec else f"user dataset {type(inner).__name__} ({len(data)} samples)"
        session = replace(_settle(cfg, mode, run_dir, profiles_dir, facts, caps, data, description, load_warning,
                                  sweep_workers, log, model_factory, dataset, isolate, resume, stages, nproc),
                          time_budget_s=time_budget_s, nodes=nodes, link=link, memory_budget_mib=budget_mib)
        session = replace(session, context=replace(session.context, world_size=session.world_size,
                                                   model_facts=model_facts))
        if model_facts:
            session.decisions["model"] = describe_model(model_facts)
            session.log(f"decision model: {session.decisions['model']}")
        if budget_note:
            session.decisions["memory_budget"] = budget_note
            session.log(f"decision memory_budget: {budget_note}")
        if overwrite and not resume:
            folders.clear(run_dir, profiles_dir)
        write_run_file(session)
    return session


def loader_cost(worker_notes: dict, batch_size: int) -> float | None:
    """Seconds per sample the loader costs the training process with no workers (the sweep's figure at
    num_workers=0, taken at the run's batch size); None where no sweep ran."""
    ms_per_batch = (worker_notes.get("workers_sweep_ms_per_batch") or {}).get("0")
    return ms_per_batch / 1000 / batch_size if ms_per_batch and batch_size else None


def _settle(cfg, mode, run_dir, profiles_dir, facts, caps, data, description, load_warning, sweep_workers,
            log, model_factory, dataset, isolate, resume, stages, nproc) -> Session:
    """The measured decisions (worker sweep, peak FLOP/s), announced; the Session that holds them."""
    best_workers, worker_notes = _choose_workers(cfg, data, facts.cpu_cores, sweep_workers, log)
    threads = devices.threads_for(cfg.threads, facts.cpu_cores)
    decisions = {"device": f"{facts.type} ({facts.name})", "amp": f"{caps.amp_dtype or 'none'}: {caps.amp_reason}",
                 "tensor_cores": str(caps.tensor_cores), "tf32": str(caps.tf32), "pin_memory": str(caps.pin_memory),
                 "threads": f"{threads} intra-op threads of {facts.cpu_cores} usable cores", **worker_notes,
                 **({"machine_load": load_warning} if load_warning else {})}
    context = StageContext(facts.type, caps, best_workers, own_processes=isolate, capability=facts.capability,
                           loader_s_per_sample=loader_cost(worker_notes, cfg.batch_size))
    session = Session(cfg, mode, run_dir, profiles_dir, context, environment.describe(facts, threads), description,
                      peaks.measure(facts, caps, max(1, threads // nproc)), isolate, resume, model_factory, dataset, log, decisions,
                      stages or [], nproc)
    _announce(session)
    return session


def describe_model(facts: dict) -> str:
    """What the stages were told about the model, in one line (checkpointing, channels_last, attention)."""
    attention = {"sdpa": f"attention through F.scaled_dot_product_attention ({facts['sdpa_calls']} calls a forward)",
                 "by_hand": "attention written by hand (softmax of a matmul): no SDPA backend to choose",
                 "none": "no attention"}[facts["attention"]]
    blocks = facts.get("blocks_found") or f"{facts['natural_blocks']} natural blocks"
    return (f"{blocks if facts['natural_blocks'] else 'no natural blocks to checkpoint'}; "
            f"{'convolutions' if facts['convolutions'] else 'no convolutions'}; {attention}")


def resolve_memory_budget(cfg: RunConfig, facts) -> tuple[float | None, str]:
    """The budget in MiB on this device, and how it is judged there (checked before any folder is made)."""
    budget = memory_budget.parse(cfg.memory_budget)
    if budget is None:
        return None, ""
    total = facts.memory_mb if facts.type == "cuda" else _host_total_mb()
    mib = budget.resolve(total)
    if total and mib > total:
        raise UsageError(f"memory_budget={cfg.memory_budget!r} is {mib:,.0f} MiB, more than the {total:,.0f} MiB this "
                         f"{facts.type} has; allowed: up to {total:,.0f} MiB or a share such as 80%")
    how = ("enforced like a smaller card (torch.cuda.set_per_process_memory_fraction): going over is a real "
           "out-of-memory, recorded as a point" if facts.type == "cuda" else
           "judged on each configuration's measured peak (with traces on: weights and optimizer state from the "
           "tensors plus the peak allocated within a profiled step; without: the process's peak resident memory), "
           "since a CPU has no allocator limit to enforce it")
    return mib, f"{mib:,.0f} MiB ({budget.text}), {how}"


def _host_total_mb() -> float | None:
    try:
        import psutil
        return psutil.virtual_memory().total / 2**20
    except Exception:  # no psutil: an absolute budget still works
        return None


def check_host_allocator(cfg: RunConfig, isolate: bool) -> None:
    """A base configuration that keeps freed host memory needs glibc and processes of its own."""
    if cfg.host_allocator == "system":
        return
    why = host_memory.unavailable_reason()
    if why is None and not isolate:
        why = "this run's rounds share your Python process (a model or dataset passed from Python)"
    if why:
        raise UsageError(f"host_allocator={cfg.host_allocator} cannot be set here: {why}; allowed: system")


# The 1-minute load average decays with a one-minute time constant: a run of ours that ended this
# recently still shows in it.
OWN_LOAD_WINDOW_S = 120.0


def busy_warning(cores: int, previous: tuple[str, float] | None = None) -> str | None:
    """Other work on the machine skews every figure (by 2-4x when CPU threads contend): say so; where
    the load is the decaying trace of our own run that just ended, say that instead of 'busy'."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load <= BUSY_LOAD_PER_CORE * cores:
        return None
    if previous is not None and previous[1] < OWN_LOAD_WINDOW_S:
        return (f"note: 1-minute load {load:.1f} on {cores} cores, most likely the trace of `{previous[0]}`, which "
                f"ended {previous[1]:.0f} s ago (the average decays over about a minute); nothing else is measuring")
    return (f"warning: the machine is busy (1-minute load {load:.1f} on {cores} cores) before we start; "
            "timings will be slower and noisier than on a quiet machine")


def _announce(session: Session) -> None:
    if "machine_load" in session.decisions:
        session.log(session.decisions["machine_load"])
    session.log(f"run {session.run_dir.name}: results in {session.run_dir}, traces in {session.profiles_dir}")
    session.log(f"data: {session.data_description}")
    for key, value in session.decisions.items():
        session.log(f"decision {key}: {value}")
    cfg = session.base_cfg
    model = cfg.model if not session.model_factory or ":" in cfg.model else \
        f"{getattr(session.model_factory, '__name__', 'factory')} (from Python)"
    shape = f"seq_len={cfg.seq_len}" if is_token_workload(cfg) else f"image_size={cfg.image_size}"
    session.log(f"config: model={model} {shape} batch_size={cfg.batch_size} "
                f"warmup={cfg.warmup_steps} timed_steps={cfg.timed_steps} repeats={cfg.repeats}")


def write_run_file(session: Session) -> None:
    write_json_atomic(session.run_dir / RUN_FILE, {
        "schema": SCHEMA_VERSION, "run": session.run_dir.name, "mode": session.mode,
        "created": dt.datetime.now().isoformat(timespec="seconds"), "environment": session.environment,
        "data": session.data_description, "config": session.base_cfg.to_dict(), "decisions": session.decisions,
        "model_facts": dict(session.context.model_facts),
        "peaks": session.peaks, "stages": session.stages,
        "nproc": session.nproc, "time_budget_s": session.time_budget_s, "single_process_baseline": session.single_process,
        **_nodes_record(session), "profiles_dir": str(session.profiles_dir), "pid": os.getpid()})


def _nodes_record(session: Session) -> dict:
    """A multi-node run: how many nodes, where they met, and the one-node baseline it scales against."""
    if not session.nodes.multi:
        return {}
    return {"nnodes": session.nnodes, "world_size": session.world_size, "rdzv_endpoint": session.nodes.endpoint,
            "single_node_baseline": session.single_node}
