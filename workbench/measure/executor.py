"""Measure one configuration: build, warm up, time the repeats, then trace in a separate pass.

The core of a measuring process: a paired round (pair.py) or a single measurement (single.py) builds
its configurations here, and the ladder never runs it in its own process.
"""
from __future__ import annotations

import functools
import inspect
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from workbench import host_usage, memory_budget, memory_model, stats
from workbench.measure import clocks, distributed
from workbench.config import RunConfig, check_device_support, data_source
from workbench.training.data import DataSpec, build_loader, load_data
from workbench.measure.distributed import DistInfo
from workbench.device import probe, resolve_device_type, threads_for
from workbench.training import host_memory
from workbench.training.batched_input import DeviceAugment
from workbench.training.jpeg_input import DecodeAugment, check_jpeg_folder, collate_encoded, read_encoded
from workbench.errors import StageSkipped, UsageError
from workbench.training.model import (apply_all, block_activation_shares, block_parameter_shares, build_model,
                                      build_optimizer, natural_block_count, natural_blocks)
from workbench.training.language import language_model_loss, next_token_correct
from workbench.training.offload import HostOffloaded
from workbench.progress import Progress, stderr_log
from workbench.results import (CUDA_SNAPSHOT_FILE, MEASURED_CONTEXT_FILE, MEMORY_TIMELINE_FILE, per_rank,
                               write_text_atomic)
from workbench.trace.capture import capture, cuda_snapshot, memory_timeline, trace_steps
from workbench.training.step import BatchStream, StepSettings, TrainStep, UserTask, classification_loss, map_tensors


@dataclass
class Built:
    """Everything a measured loop needs, built from one RunConfig."""

    cfg: RunConfig
    device: torch.device
    model: torch.nn.Module
    eager_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: TrainStep
    stream: BatchStream
    data_description: str
    dataset_size: int
    notes: dict
    dist: DistInfo = DistInfo()
    eval_data: object = None

    @property
    def samples_per_step(self) -> int:
        """Samples one optimizer step consumes across all processes."""
        return self.cfg.batch_size * self.dist.world_size


EVAL_IMAGES, EVAL_BATCH = 500, 250


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.lru_cache(maxsize=4)
def shared_data(data: str, data_dir: str, image_size: int, per_batch: int, seed: int, train: bool,
                pipeline: str, seq_len: int = 128, token_dtype: str = "uint16") -> DataSpec | None:
    """Datasets are read-only: the two configurations of a paired round share one copy (and its
    loading time) when they read the same data the same way (`pipeline`: the input_pipeline)."""
    file_loader = read_encoded if pipeline == "decode_on_device" else None
    return load_data(data, data_dir, image_size, per_batch, seed, train=train, log=stderr_log,
                     batched=pipeline == "batched", file_loader=file_loader, seq_len=seq_len, token_dtype=token_dtype)


def configured_data(cfg: RunConfig, train: bool, pipeline: str) -> DataSpec | None:
    return shared_data(data_source(cfg), cfg.data_dir, cfg.image_size, cfg.synthetic_per_batch, cfg.seed, train,
                       pipeline, cfg.seq_len, cfg.token_dtype)


def device_transform(cfg: RunConfig, device: torch.device) -> Callable | None:
    """What turns the loader's images into the model's input on `device`; None where the loader's
    own transforms already did (per_sample)."""
    if cfg.input_pipeline == "batched":
        return DeviceAugment(cfg.image_size, device, cfg.seed)
    if cfg.input_pipeline == "decode_on_device":
        return DecodeAugment(cfg.image_size, device, cfg.seed)
    return None


def _check_files(cfg: RunConfig, data) -> dict:
    """decode_on_device on a folder with non-JPEG files: refused, or a note that they are re-encoded."""
    if cfg.input_pipeline != "decode_on_device":
        return {}
    note = check_jpeg_folder([path for path, _ in data.samples], cfg.data.split(":", 1)[1])
    return {"non_jpeg_files": note} if note else {}


def user_data_spec(dataset, model_factory: Callable | None = None) -> DataSpec:
    """A dataset handed in from Python (bare, or a UserTask with its loss). The class count comes
    from a `classes` attribute where there is one; without it (tokens, regression) num_classes is
    None and the model must come from model_factory, which is then given None."""
    classes = getattr(dataset, "classes", None)
    if not classes and model_factory is None:
        raise UsageError("the dataset has no 'classes' attribute, so the built-in models cannot size their "
                         "output; give the dataset `classes` (a list of class names) or pass model_factory")
    inner = dataset.dataset if isinstance(dataset, UserTask) else dataset
    return DataSpec(dataset, len(classes) if classes else None,
                    f"user dataset {type(inner).__name__} ({len(dataset)} samples)")


def _loss_fn(dataset):
    """The loss a UserTask carries; the built-in cross-entropy on (images, labels) otherwise."""
    return getattr(dataset, "loss_fn", None) or classification_loss


def build(cfg: RunConfig, model_factory: Callable | None = None, dataset=None, log=print,
          dist: DistInfo = DistInfo(), optimizer_factory: Callable | None = None) -> Built:
    device_type = resolve_device_type(cfg.device)
    check_device_support(cfg, device_type)
    device = distributed.device_for(device_type, dist)
    # Processes on one machine share its cores: each gets its part.
    torch.set_num_threads(threads_for(cfg.threads, max(1, probe("cpu").cpu_cores // dist.world_size)))
    use_backend_settings(cfg, device_type)
    seed_everything(cfg.seed)
    if cfg.input_pipeline != "per_sample" and dataset is not None:
        raise StageSkipped(f"input_pipeline={cfg.input_pipeline} needs the workbench's own data (CIFAR format or "
                           "an ImageFolder); a dataset from Python brings its own transforms")
    spec = user_data_spec(dataset, model_factory) if dataset is not None else configured_data(
        cfg, True, cfg.input_pipeline)
    data = spec.dataset
    file_notes = _check_files(cfg, data)
    # decode_on_device: files' bytes of many lengths, packed into one tensor a batch.
    collate = collate_encoded if cfg.input_pipeline == "decode_on_device" else None
    loader = build_loader(data, cfg.batch_size, cfg.num_workers, cfg.pin_memory and device_type == "cuda",
                          cfg.persistent_workers, cfg.prefetch_factor, cfg.seed, distributed.sampler(data, dist, cfg.seed),
                          collate)
    eval_data = _eval_data(cfg, dataset, log)  # before the memory baseline: data is not the model's memory
    loss_fn = language_model_loss if spec.tokens_per_sample else _loss_fn(dataset)
    make_model = (lambda: model_factory(spec.num_classes)) if model_factory else (
        lambda: build_model(cfg.model, spec.num_classes, cfg.seq_len if spec.tokens_per_sample else 0, cfg.loss_chunks))
    # The batched pipelines load uint8 images at their source size, or files' bytes: count on what
    # the model sees, the same transform run on the CPU.
    on_cpu = device_transform(cfg, torch.device("cpu"))
    augment_on_cpu = (lambda b: (on_cpu(b[0]), b[1])) if on_cpu else None
    flops, shares = count_flops(make_model, cfg, data, loss_fn, augment_on_cpu, collate)
    if cfg.compile != "none":
        # A fresh start for dynamo's caches: in-process rounds (a model from Python) would otherwise reuse
        # an earlier round's compiled code, and the warm-up would report a compile of 0 s.
        torch._dynamo.reset()
    rss_before_model = clocks.current_rss_mb()
    eager = make_model()
    parameter_shares = block_parameter_shares(eager)  # before apply_all wraps the blocks
    model, notes = apply_all(eager, cfg.memory_format, cfg.checkpointing, cfg.compile, device,
                             distribute=lambda m: distributed.wrap(m, device, dist, cfg.sharding, natural_blocks(m)))
    notes.update(flops_per_step=flops, rss_before_model_mb=rss_before_model, **file_notes,
                 **({"block_activation_shares": [round(s, 4) for s in shares]} if shares else {}),
                 **({"block_parameter_shares": [round(s, 4) for s in parameter_shares]} if parameter_shares else {}),
                 **token_notes(eager, cfg, spec.tokens_per_sample))
    allocator = host_memory.in_effect()
    if allocator:
        notes["host_allocator_settings"] = allocator
    if optimizer_factory is not None and cfg.offload_optimizer:
        raise StageSkipped("offloading rebuilds the run's own optimizer over host copies of the weights; an optimizer "
                           "passed from Python stays as it is, on the device")
    if optimizer_factory is not None:  # the user's own (weight-decay groups and all); the fused stage applies to it
        optimizer = fused_copy(optimizer_factory(eager)) if cfg.fused_optimizer else optimizer_factory(eager)
    elif cfg.offload_optimizer:
        optimizer = HostOffloaded(eager.parameters(), lambda params: build_optimizer(cfg.optimizer, params, cfg.lr,
                                                                                     cfg.fused_optimizer))
    else:
        optimizer = distributed.optimizer_for(lambda params: build_optimizer(cfg.optimizer, params, cfg.lr, cfg.fused_optimizer),
                                              eager.parameters(), dist, cfg.sharding)
    settings = StepSettings(device, cfg.precision, cfg.accumulation_steps,
                            cfg.memory_format == "channels_last", cfg.pin_memory and device_type == "cuda",
                            clip_grad_norm=cfg.clip_grad_norm or None,
                            device_transform=device_transform(cfg, device),
                            # decode_jpeg(device=...) takes the files' bytes from host memory itself.
                            transform_moves_images=cfg.input_pipeline == "decode_on_device",
                            attention=cfg.attention)
    # A user's batch travels whole (any structure) to the loss that knows it.
    return Built(cfg, device, model, eager, optimizer, TrainStep(model, optimizer, settings, loss_fn),
                 BatchStream(loader, whole=dataset is not None), spec.description, len(data), notes, dist, eval_data)


def fused_copy(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer (class, groups, settings) with its fused step: for a user's own optimizer."""
    if "fused" not in optimizer.defaults:
        raise StageSkipped(f"{type(optimizer).__name__} has no fused implementation (torch's Adam, AdamW, SGD and "
                           "Adagrad have one)")
    groups = [{key: value for key, value in group.items()} for group in optimizer.param_groups]
    settings = {**optimizer.defaults, "fused": True, "foreach": None}
    # Only what the constructor takes: defaults also hold settings it derives (AdamW's decoupled_weight_decay).
    accepted = inspect.signature(type(optimizer).__init__).parameters
    return type(optimizer)(groups, **{key: value for key, value in settings.items()
                                      if key in accepted and key != "differentiable"})


def _eval_data(cfg: RunConfig, dataset, log):
    """The held-out split (CIFAR's test_batch, a token file's last windows) for a quick accuracy check;
    None where there is none."""
    if dataset is not None or cfg.data.startswith("imagefolder:"):
        return None
    spec = configured_data(cfg, False, "per_sample")
    return spec.dataset if spec is not None else None


def token_notes(model: torch.nn.Module, cfg: RunConfig, tokens_per_sample: int) -> dict:
    """A language model's facts: tokens per sample, and the 6N-plus-attention FLOPs estimate (PaLM's
    appendix B, nanoGPT's estimate_mfu) to set beside the counted FLOPs."""
    if not tokens_per_sample:
        return {}
    parameters = sum(p.numel() for p in model.parameters())
    layers = natural_block_count(model)
    embedding = next((m for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
    width = embedding.embedding_dim if embedding is not None else 0
    per_token = 6 * parameters + 12 * layers * width * tokens_per_sample
    return {"tokens_per_sample": tokens_per_sample, "parameters": parameters,
            "flops_estimate_per_step": float(per_token * tokens_per_sample * cfg.batch_size),
            "flops_estimate_method": f"6N + 12 L d T per token (N={parameters:,} parameters, L={layers} blocks, "
                                     f"d={width}, T={tokens_per_sample})"}


@torch.no_grad()
def evaluate(built: Built, max_images: int = EVAL_IMAGES) -> float | None:
    """Top-1 accuracy on held-out images after the steps run so far: a check that the stage still
    learns, not a converged accuracy. Runs the eager module (a compiled one would recompile for eval)."""
    if built.eval_data is None:
        return None
    subset = torch.utils.data.Subset(built.eval_data, range(min(max_images, len(built.eval_data))))
    if built.notes.get("tokens_per_sample"):
        return _next_token_accuracy(built, subset)
    loader = torch.utils.data.DataLoader(subset, batch_size=EVAL_BATCH)
    fmt = torch.channels_last if built.cfg.memory_format == "channels_last" else torch.contiguous_format
    built.eager_model.eval()
    correct = 0
    try:
        for images, labels in loader:
            with built.step.autocast():
                logits = built.eager_model(images.to(built.device, memory_format=fmt))
            correct += (logits.argmax(1).cpu() == labels).sum().item()
    finally:
        built.eager_model.train()
    return correct / len(subset)


def _next_token_accuracy(built: Built, subset) -> float:
    """A language model's held-out check: the share of next tokens it predicts (top-1)."""
    loader = torch.utils.data.DataLoader(subset, batch_size=built.cfg.batch_size)
    built.eager_model.eval()
    correct = counted = 0
    try:
        for ids, targets in loader:
            with built.step.autocast():
                hits, total = next_token_correct(built.eager_model, ids.to(built.device), targets.to(built.device))
            correct, counted = correct + hits, counted + total
    finally:
        built.eager_model.train()
    return correct / counted


def run_steps(built: Built, count: int, progress: Progress, phase: str, clock=None) -> list[torch.Tensor]:
    losses = []
    for i in range(count):
        images, labels = built.stream.next()
        losses.append(built.step(images, labels))
        if clock is not None:
            clock.mark()
        progress.update(phase, i + 1, count)
    return losses


def warm_up(built: Built, progress: Progress) -> float:
    """Run the warm-up steps (compile happens here) and return their wall time."""
    start = time.perf_counter()
    run_steps(built, built.cfg.warmup_steps, progress, "warm-up" + (" + compile" if built.cfg.compile != "none" else ""))
    clocks.synchronize(built.device)
    return time.perf_counter() - start


def timed_repeats(built: Built, progress: Progress, only: int | None = None) -> tuple[list[list[float]], list[float], float]:
    """Step times of each repeat (seconds), the losses of the last repeat, and the first timed loss;
    with `only`, that one repeat (paired rounds interleave the two sides' repeats)."""
    all_times, losses, first = [], [], None
    for repeat in range(built.cfg.repeats) if only is None else [only]:
        clock = clocks.StepClock(built.device)
        clock.mark()
        losses = run_steps(built, built.cfg.timed_steps, progress, f"repeat {repeat + 1}/{built.cfg.repeats}", clock)
        all_times.append(clock.step_times())
        first = float(losses[0]) if first is None else first
    return all_times, [float(loss) for loss in losses], first


# The compute-only ceiling: a few short repeats on one batch that stays on the device.
COMPUTE_ONLY_REPEATS, COMPUTE_ONLY_STEPS = 2, 6


def compute_only(built: Built, progress: Progress) -> dict:
    """What the model could do if input cost nothing: steps on one device-resident batch (already
    copied and augmented), timed like the real ones. Beside the delivered throughput it says whether
    the configuration is input-bound or compute-bound."""
    batch = built.step.prepare(*built.stream.next())
    steps = min(built.cfg.timed_steps, COMPUTE_ONLY_STEPS)
    times = []
    # A brief probe stays brief. On a CPU a compute-only step costs as much as a real one, and one
    # repeat places the ceiling well within the round-to-round noise: the second is a round's 1.3 s.
    repeats = 1 if built.device.type == "cpu" else min(built.cfg.repeats, COMPUTE_ONLY_REPEATS)
    for repeat in range(repeats):
        clock = clocks.StepClock(built.device)
        clock.mark()
        for i in range(steps):
            built.step.train_on(batch)
            clock.mark()
            progress.update(f"compute-only {repeat + 1}/{repeats}", i + 1, steps)
        times.append(clock.step_times())
    return {"throughput": stats.throughput(times, built.samples_per_step, built.cfg.seed),
            "step_time_s": stats.spread(times)["median"], "steps": steps * repeats,
            "method": "the same step on one batch kept on the device (no loading, no copy, no augmentation)"}


def real_batch(data, size: int, collate: Callable | None = None):
    """The first `size` items of the dataset, collated as the DataLoader would: FLOPs are counted on
    the shapes the model really sees (sequence length, image size, whatever the batch holds)."""
    return (collate or torch.utils.data.default_collate)([data[i] for i in range(min(size, len(data)))])


def count_flops(make_model: Callable[[], torch.nn.Module], cfg: RunConfig, data, loss_fn, prepare=None,
                collate: Callable | None = None) -> tuple[float, list[float] | None]:
    """FLOPs of one optimizer step of the plain eager model (before checkpointing adds recompute),
    from a real batch of the data through the run's own loss; and, from the same pass, each natural
    block's share of the activations (model.block_activation_shares: what a selective checkpointing's
    saving is predicted from; None without blocks).

    Counted on the meta device: no memory, no compute, and no fp32 pass that could run out of memory
    where the optimized stage would fit. A model that cannot live on meta is counted at batch 1 on
    the CPU and scaled (FLOPs grow linearly with the batch), without block shares.
    """
    try:
        batch = real_batch(data, cfg.effective_micro_batch, collate)
        batch = map_tensors(prepare(batch) if prepare else batch, lambda t: t.to("meta"))
        with torch.device("meta"):
            model, counted = make_model(), []
            shares = block_activation_shares(model, lambda: counted.append(_step_flops(model, batch, loss_fn)))
            if not counted:  # no blocks: the shares' pass did not run
                counted.append(_step_flops(model, batch, loss_fn))
            return counted[0] * cfg.accumulation_steps, shares
    except Exception:  # a factory doing real work at construction (loading weights, say)
        one = real_batch(data, 1, collate)
        flops = _step_flops(make_model(), prepare(one) if prepare else one, loss_fn)
        return flops * cfg.effective_micro_batch * cfg.accumulation_steps, None


def _step_flops(model: torch.nn.Module, batch, loss_fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def use_backend_settings(cfg: RunConfig, device_type: str) -> None:
    """Process-wide switches a configuration sets; set again before each of its windows when two
    configurations share a process (a paired round)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    torch.backends.cudnn.benchmark = device_type == "cuda"  # fixed shapes: let cuDNN pick kernels once
    enforce_memory_budget(cfg, device_type)


def enforce_memory_budget(cfg: RunConfig, device_type: str) -> None:
    """On CUDA a budget is a smaller card: the caching allocator refuses past it, so going over is a
    real out-of-memory (recorded as such). A CPU has no such switch: there the measured peak is judged."""
    budget = memory_budget.parse(cfg.memory_budget)
    if budget is None or device_type != "cuda":
        return
    total_mib = torch.cuda.get_device_properties(0).total_memory / 2**20
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget.resolve(total_mib) / total_mib))


def _memory(built: Built, window: "Window", rss_before_mb: float) -> dict:
    parts = clocks.memory_parts_mb(built.eager_model, built.optimizer)
    host_peak_mb = window.host_peak_mb
    if built.device.type == "cuda":
        peaks = window.cuda_peaks
        headline, kind = peaks["allocated_mb"], "cuda max_memory_allocated"
    else:
        peaks = {"rss_peak_mb": host_peak_mb, "rss_before_model_mb": rss_before_mb}
        headline = host_peak_mb - rss_before_mb
        kind = "host peak RSS of the measuring process during the timed steps, minus its RSS before the model was built"
    activations = max(0.0, headline - sum(parts.values()))
    shapes = [tuple(p.shape) for p in built.eager_model.parameters() if p.requires_grad]
    return {"peak_memory_mb": headline, "peak_memory_kind": kind, "peak_memory": peaks,
            "memory_breakdown_mb": {**parts, "activations_and_other": activations},
            # What each optimizer's state would take here: the memory budget predicts a change of optimizer from it.
            "optimizer_state_mib_by_kind": memory_model.optimizer_state_mib(shapes),
            "optimizer_step_temporaries_mib_by_kind": memory_model.step_temporaries_mib(shapes, built.device.type),
            "largest_parameter_mib": memory_model.largest_parameter_mib(shapes)}


def _compile_seconds(warmup_s: float, cfg: RunConfig, median_step_s: float) -> float | None:
    """Compile time: the warm-up's wall time less what its steps would take when compiled."""
    if cfg.compile == "none":
        return None
    return max(0.0, warmup_s - cfg.warmup_steps * median_step_s)


def _guarded(action):
    """(value, None), or (None, 'Type: message') when the action fails."""
    try:
        return action(), None
    except Exception as error:  # recorded beside the measurement, which stands
        return None, f"{type(error).__name__}: {str(error).strip()[:300]}"


def _flops_metrics(flops: float, mean_step_s: float, peak: float | None, peak_source: str) -> dict:
    """Achieved FLOP/s and MFU. Over 100% the denominator is wrong, not the step (a CPU's measured
    matmul slowed by another process): no MFU then, and the source says why."""
    achieved = flops / mean_step_s
    if peak and achieved > peak:
        return {"flops_per_step": flops, "achieved_flops_per_s": achieved, "mfu": None, "peak_flops_per_s": peak,
                "peak_flops_source": f"{peak_source}, under the {achieved / 1e9:.0f} GFLOP/s this step achieved "
                                     "(the probe was slowed): MFU not reported"}
    return {"flops_per_step": flops, "achieved_flops_per_s": achieved,
            "mfu": achieved / peak if peak else None, "peak_flops_per_s": peak, "peak_flops_source": peak_source}


def _trace_pass(built: Built, trace_dir: Path, progress: Progress, brief: bool = False) -> dict:
    """Profile a few more steps with named regions; the timed numbers never include this."""
    built.step.annotate = True

    def one_step(i: int) -> None:
        images, labels = built.stream.next(annotate=True)
        built.step(images, labels)
        progress.update("trace", i + 1, trace_steps(brief))

    try:
        return capture(one_step, trace_dir, built.device.type, built.cfg.trace_with_stack,
                       built.dist.rank, built.dist.world_size, brief)
    finally:
        built.step.annotate = False


def write_measured_context(built: Built, metrics: dict, trace_dir: Path) -> None:
    """Beside the trace, what the run measured that the trace cannot hold: `workbench analyze` reads it."""
    context = {"host_cpu": metrics.get("host_cpu"), "host_allocator": built.cfg.host_allocator,
               "precision": built.cfg.precision, "num_workers": built.cfg.num_workers,
               "fused_optimizer": built.cfg.fused_optimizer, "compile": built.cfg.compile}
    name = per_rank(MEASURED_CONTEXT_FILE, built.dist.rank, built.dist.world_size)
    write_text_atomic(trace_dir / name, json.dumps(context))


def _memory_views(built: Built, trace_dir: Path, progress: Progress) -> dict:
    """The step's memory by category and its peak's moment, written beside the trace; on CUDA also the
    allocator snapshot (its path is printed at the end of the run). Untimed, like the trace."""
    def one_step(i: int) -> None:
        images, labels = built.stream.next()
        built.step(images, labels)
        progress.update("memory timeline", 1, 1)

    rank, world = built.dist.rank, built.dist.world_size
    built.step.annotate = True  # the regions name the moment of the peak
    try:
        summary = memory_timeline(one_step, str(built.device), built.eager_model, built.optimizer)
    finally:
        built.step.annotate = False
    path = write_text_atomic(trace_dir / per_rank(MEMORY_TIMELINE_FILE, rank, world), json.dumps(summary))
    views = {"file": str(path), "peak": summary["peak"], "phases": summary["phases"]}
    if built.device.type == "cuda":
        views["cuda_snapshot"] = str(cuda_snapshot(one_step, trace_dir / per_rank(CUDA_SNAPSHOT_FILE, rank, world)))
    return views


@dataclass
class Window:
    """One timed window of a configuration: step times, losses and the peaks read right after it."""

    step_times: list[list[float]]
    losses: list[float]
    first_loss: float
    host_peak_mb: float
    cuda_peaks: dict | None
    # This process's minor page faults, user and system CPU seconds over the window (host_usage.py).
    host_counters: host_usage.Counters = (0, 0.0, 0.0)


def prepare(built: Built, progress: Progress) -> float:
    """Warm-up (compile happens here), then one untimed step after the cache release; its wall time."""
    use_backend_settings(built.cfg, built.device.type)
    warmup_s = warm_up(built, progress)
    if built.device.type == "cuda":  # a CPU has no cache to release, so no pool to re-grow
        clocks.release_cuda_cache(built.device)
        run_steps(built, 1, progress, "re-grow the memory pool")  # untimed: the first step after a release re-grows it
    return warmup_s


def timed_window(built: Built, progress: Progress, only: int | None = None) -> Window:
    """The timed repeats of a prepared configuration (or repeat `only`), with the peaks of exactly
    these steps."""
    use_backend_settings(built.cfg, built.device.type)
    clocks.reset_cuda_peaks(built.device)
    before = host_usage.process_counters()
    with clocks.HostPeak() as host_peak:
        step_times, losses, first_loss = timed_repeats(built, progress, only)
    counters = host_usage.since(before)
    cuda = clocks.cuda_peaks(built.device) if built.device.type == "cuda" else None
    return Window(step_times, losses, first_loss, host_peak.peak_mb, cuda, counters)


def joined(parts: list[Window]) -> Window:
    """One side's repeats, timed apart (interleaved with the other side's), as one window."""
    cuda = None
    if parts[0].cuda_peaks is not None:
        cuda = {key: max(p.cuda_peaks[key] for p in parts) if isinstance(parts[0].cuda_peaks[key], (int, float))
                else parts[-1].cuda_peaks[key] for key in parts[0].cuda_peaks}
    return Window([times for p in parts for times in p.step_times], parts[-1].losses, parts[0].first_loss,
                  max(p.host_peak_mb for p in parts), cuda,
                  tuple(sum(values) for values in zip(*(p.host_counters for p in parts))))


def window_metrics(built: Built, window: Window, warmup_s: float, peak_flops: float | None, peak_source: str,
                   rss_before_mb: float) -> dict:
    """Throughput, step time, loss, memory and FLOPs of a timed window."""
    cfg, step_times, losses = built.cfg, window.step_times, window.losses
    spread = stats.spread(step_times)
    samples = built.samples_per_step
    throughput = stats.throughput(step_times, samples, cfg.seed)
    return {"samples_per_step": samples, "world_size": built.dist.world_size, "step_times_s": step_times,
            "step_time_s": spread, "throughput": throughput,
            "repeat_throughputs": stats.repeat_throughputs(step_times, samples),
            "warmup_s": warmup_s, "compile_s": _compile_seconds(warmup_s, cfg, spread["median"]),
            "epoch_time_s": built.dataset_size / throughput["median"],
            "first_loss": window.first_loss, "final_loss": float(np.mean(losses[-3:])),
            "loss_finite": bool(np.all(np.isfinite(losses))), "losses": losses,
            **_memory(built, window, rss_before_mb), "host_cpu": host_cpu(window),
            **_flops_metrics(built.notes["flops_per_step"], spread["mean"], peak_flops, peak_source),
            "trained_steps": cfg.warmup_steps + 1 + cfg.repeats * cfg.timed_steps,
            **_token_rates(built.notes, throughput, spread["mean"], peak_flops)}


def _token_rates(notes: dict, throughput: dict, mean_step_s: float, peak_flops: float | None) -> dict:
    """A language model's throughput in tokens/s (samples/s x seq_len), and its MFU by the 6N-plus-attention
    estimate, beside the one from the counted FLOPs."""
    per_sample = notes.get("tokens_per_sample")
    if not per_sample:
        return {}
    estimate = notes["flops_estimate_per_step"]
    return {"tokens_per_sample": per_sample,
            "tokens_per_s": stats.scaled_rate(throughput, per_sample),
            "flops_estimate_per_step": estimate, "flops_estimate_method": notes["flops_estimate_method"],
            "mfu_estimate": estimate / mean_step_s / peak_flops if peak_flops else None}


def host_cpu(window: Window) -> dict:
    """Where the window's host CPU time went, per timed step: page faults, and the share the kernel
    took (faulting freed memory back in, mostly: training/host_memory.py)."""
    return host_usage.per_step(window.host_counters, sum(len(times) for times in window.step_times),
                               "getrusage of the measuring process over the timed steps (every thread; "
                               "DataLoader worker processes not included)")


def finish(built: Built, metrics: dict, trace_dir: Path | None, progress: Progress, extras: str = "full") -> dict:
    """The raw result: the window's metrics, plus the untimed extras when asked. extras "brief": a
    brief probe (emulated bf16 on a CPU, 30x slower) gets its trace only; its accuracy check and
    compute-only ceiling would cost minutes and cannot change a verdict its window settled."""
    if extras == "none":  # a timing-only side: the extras come from the configuration's last round
        return {"metrics": metrics, "trace_file": None, "trace_size_mb": None}
    return _with_extras(built, metrics, trace_dir, progress, brief=extras == "brief")


def measure_config(built: Built, trace_dir: Path | None, peak_flops: float | None, peak_source: str,
                   rss_before_mb: float, progress: Progress, extras: str = "full") -> dict:
    """One configuration alone: warm-up, timed repeats, memory, FLOPs and (optionally) the extras."""
    warmup_s = prepare(built, progress)
    window = timed_window(built, progress)
    metrics = window_metrics(built, window, warmup_s, peak_flops, peak_source, rss_before_mb)
    return finish(built, metrics, trace_dir, progress, extras)


def _with_extras(built: Built, metrics: dict, trace_dir: Path | None, progress: Progress, brief: bool = False) -> dict:
    """The untimed checks after the window: accuracy, compute-only ceiling, trace."""
    if brief:
        skipped = "not run for a brief probe (its window already shows the cost)"
        metrics.update(eval_accuracy=None, eval_error=skipped, compute_only=None, compute_only_error=skipped)
    else:
        # The timed figures exist now: a failing accuracy check or trace must not throw them away.
        metrics["eval_accuracy"], metrics["eval_error"] = _guarded(lambda: evaluate(built))
        # After the accuracy check: its steps revisit one batch, which says nothing about learning.
        metrics["compute_only"], metrics["compute_only_error"] = _guarded(lambda: compute_only(built, progress))
    trace, metrics["trace_error"] = _guarded(lambda: _trace_pass(built, trace_dir, progress, brief) if trace_dir else None)
    if trace:
        write_measured_context(built, metrics, Path(trace["file"]).parent)
    metrics["trace_overhead_s"] = trace["wall_s"] if trace else 0.0
    if trace_dir and not brief and built.cfg.memory_timeline:
        metrics["memory_timeline"], metrics["memory_timeline_error"] = _guarded(
            lambda: _memory_views(built, trace_dir, progress))
    return {"metrics": metrics, "trace_file": trace["file"] if trace else None,
            "trace_size_mb": trace["size_mb"] if trace else None}
