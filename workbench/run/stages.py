"""The optimization stages: each a small pure function RunConfig -> RunConfig.

A stage sees the configuration it builds on and the machine's capability decisions (`StageContext`),
and returns the configuration to measure, or raises StageSkipped with the reason it does not apply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from workbench.config import RunConfig, is_gpt, is_token_workload
from workbench.device import Capabilities
from workbench.errors import StageSkipped, UsageError
from workbench.trace import diagnose
from workbench.training import attention, host_memory
from workbench.training.model import eight_bit_unavailable

SPEED, MEMORY, REFERENCE = "speed", "memory", "reference"
# The batch size: a speed change that also changes the optimization; searched and carried forward
# only with allow_batch_change (workbench/run/batch_search.py).
BATCH = "batch"
# Emulated bf16 on a CPU runs an order of magnitude slower: measure it briefly (one round, a few
# steps), enough to show it; the second look does not try it again.
PROBE_TIMED_STEPS, PROBE_WARMUP_STEPS = 2, 1
ACCUMULATION_MICRO_BATCHES = 2
# Memory stages are trade-offs, not carried forward: their peak memory needs one process, their speed
# cost is reported with the interval two rounds give.
MEMORY_ROUNDS = 2


@dataclass(frozen=True)
class StageContext:
    """What stages may consult besides the configuration: the device and measured choices."""

    device_type: str
    capabilities: Capabilities
    best_workers: int = 0
    notes: dict = field(default_factory=dict)
    own_processes: bool = True   # rounds run in measuring processes of their own (not the caller's)
    # The timed window's host CPU figures of the configuration the stage builds on (executor.host_cpu),
    # where the ladder measured it: a stage that removes a measured cost applies where that cost shows.
    host_cpu: Mapping | None = None
    capability: tuple[int, int] | None = None   # a CUDA device's compute capability (which SDPA backends it has)
    world_size: int = 1           # processes per stage (--nproc times the nodes): sharding needs two or more
    # What the model's first batch showed (training/model.first_batch_facts): convolutions, natural blocks,
    # attention; empty for a model from Python, which no stage then skips on.
    model_facts: Mapping = field(default_factory=dict)
    # What the loader costs the training process per sample with no workers (the start-up sweep), and
    # the step time of the configuration a stage builds on: how much an input stage could take off.
    loader_s_per_sample: float | None = None
    step_time_s: float | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str          # speed stages are kept or rejected; memory stages are trade-offs
    summary: str
    apply: Callable[[RunConfig, StageContext], RunConfig]
    # Skipped on a figure measured on the configuration it builds on (host_cpu, step_time_s): worth
    # another look where the final configuration's own figures pass (a larger batch faults more).
    gated: bool = False
    # Run only when named in --stages (a trade-off most runs need not pay for), and what it changes
    # besides speed and memory ("optimizer": the optimization itself; the memory budget asks first).
    opt_in: bool = False
    changes: str = ""


def baseline(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    return cfg


def _loader_can_pay(cfg: RunConfig, ctx: StageContext, what: str) -> None:
    """An input stage can at most take the loader's own time off the step (Amdahl's bound). On a CPU,
    where it has nothing else to change (no pinned copies), a bound under the keep bar means measuring
    it could only end in 'no significant change': skipped on the figure, and looked at again on the
    final configuration, whose shorter step leaves the loader a larger share."""
    if ctx.device_type != "cpu" or not ctx.loader_s_per_sample or not ctx.step_time_s:
        return
    load = ctx.loader_s_per_sample * cfg.batch_size
    ceiling = ctx.step_time_s / (ctx.step_time_s - load) if ctx.step_time_s > load else float("inf")
    if ceiling < 1 + cfg.min_effect:
        raise StageSkipped(f"{what} can at most take the loader's own time off the step: "
                           f"{load * 1000:.0f} ms per batch with no workers (the start-up sweep) against a "
                           f"{ctx.step_time_s * 1000:.0f} ms step is at most {ceiling:.3f}x, under the "
                           f"{1 + cfg.min_effect:.2f}x bar")


def dataloader(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    _loader_can_pay(cfg, ctx, "more DataLoader workers")
    workers = ctx.best_workers
    return cfg.with_overrides(num_workers=workers, persistent_workers=workers > 0,
                              pin_memory=ctx.capabilities.pin_memory)


def _images_only(cfg: RunConfig, what: str) -> None:
    if is_token_workload(cfg):
        raise StageSkipped(f"{what} is for images; this run's samples are token windows")


def batched_input(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    _images_only(cfg, "the batched pipeline (crop, flip and normalize on the device)")
    _loader_can_pay(cfg, ctx, "the batched pipeline")
    return cfg.with_overrides(input_pipeline="batched")


def tf32(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    if not ctx.capabilities.tf32:
        raise StageSkipped(f"TF32 needs an Ampere or newer GPU; this device is {ctx.device_type}")
    return cfg.with_overrides(tf32=True)


def amp(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    caps = ctx.capabilities
    if caps.amp_dtype is not None:
        return cfg.with_overrides(precision=caps.amp_dtype)
    if ctx.device_type != "cpu":
        raise StageSkipped(caps.amp_reason)
    # Measured once, briefly, so the report can show the cost; the verdict then rejects it.
    return cfg.with_overrides(precision="bf16", repeats=1, rounds=1, warmup_steps=PROBE_WARMUP_STEPS,
                              timed_steps=min(cfg.timed_steps, PROBE_TIMED_STEPS))


def decode_on_device(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    _images_only(cfg, "decoding JPEG files on the device")
    if not cfg.data.startswith("imagefolder:"):
        what = f"CIFAR-format arrays (data={cfg.data}, already decoded)" if ctx.own_processes else "a dataset passed from Python"
        raise StageSkipped(f"decoding JPEG files on the device needs data=imagefolder:PATH; this run's data is {what}")
    return cfg.with_overrides(input_pipeline="decode_on_device")


def channels_last(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    if ctx.model_facts.get("convolutions") is False:
        raise StageSkipped("channels_last reorders the tensors of convolutions, and this model has none")
    return cfg.with_overrides(memory_format="channels_last")


def _attention(cfg: RunConfig, ctx: StageContext, backend: str) -> RunConfig:
    kind = ctx.model_facts.get("attention")
    if kind == "by_hand":
        raise StageSkipped("the model computes softmax(QK^T)V by hand, so there is no SDPA backend to choose "
                           "(the attention_by_hand finding says what to change)")
    if kind == "none":
        raise StageSkipped("the model calls no F.scaled_dot_product_attention")
    if kind is None:
        raise StageSkipped("a model passed from Python is not inspected for attention; run it with --model "
                           "module:function to have its SDPA backends measured")
    offered = attention.offered(ctx.device_type, ctx.capability)
    if backend not in offered:
        raise StageSkipped(f"SDPA's {backend} backend is not offered on this {ctx.device_type}; offered: "
                           f"{', '.join(offered)}")
    if cfg.attention == backend:
        raise StageSkipped(f"attention={backend} already")
    if ctx.device_type == "cpu" and backend == "flash":
        # SDPA's CPU dispatch takes the flash kernel wherever its inputs allow; where they do not, pinning it
        # fails. Either way the stage cannot win (two ladders measured 1.00x [0.98, 1.01] and [0.93, 1.07]).
        raise StageSkipped("on a CPU, SDPA already runs its flash kernel wherever the inputs allow it (and pinning "
                           "it elsewhere fails): nothing to gain; --stages attention_math measures what it saves "
                           "against the math reference")
    return cfg.with_overrides(attention=backend)


def attention_flash(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    return _attention(cfg, ctx, "flash")


def attention_efficient(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    return _attention(cfg, ctx, "efficient")


def attention_cudnn(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    return _attention(cfg, ctx, "cudnn")


def attention_math(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    return _attention(cfg, ctx, "math")


def fused_optimizer(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    return cfg.with_overrides(fused_optimizer=True)


def host_allocator(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    if cfg.host_allocator == "retain":
        return cfg  # already set: nothing to change (the ladder says so)
    if ctx.device_type != "cpu":
        raise StageSkipped(f"the host allocator matters where the tensors live in host memory (a CPU run); on "
                           f"{ctx.device_type} the caching allocator already keeps freed device memory")
    why = host_memory.unavailable_reason()
    if why:
        raise StageSkipped(why)
    if not ctx.own_processes:
        raise StageSkipped("the allocator is set per measuring process, and this run's rounds share your Python "
                           "process (a model or dataset passed from Python): measure it with --model module:function "
                           f"on the command line, or start your script with {diagnose.GLIBC_TUNABLES_LINE}")
    if ctx.host_cpu is not None and not diagnose.faulting(ctx.host_cpu):
        share, faults = ctx.host_cpu.get("system_time_share", 0.0), ctx.host_cpu.get("minor_faults_per_step", 0.0)
        raise StageSkipped(f"the configuration it builds on spends {share:.1%} of its CPU time in the kernel, "
                           f"with {faults:,.0f} page faults per step: keeping freed memory can pay from "
                           f"{diagnose.SYSTEM_TIME_SHARE_MAX:.0%} and {diagnose.PAGE_FAULTS_PER_STEP_MIN:,} faults "
                           "per step (the page_faults finding)")
    return cfg.with_overrides(host_allocator="retain")


def accumulation(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    micro = cfg.batch_size // ACCUMULATION_MICRO_BATCHES
    if micro < 1 or cfg.batch_size % ACCUMULATION_MICRO_BATCHES:
        raise StageSkipped(f"batch_size={cfg.batch_size} cannot be split into {ACCUMULATION_MICRO_BATCHES} micro-batches")
    return cfg.with_overrides(micro_batch_size=micro)


EIGHT_BIT = {"adam": "adam8bit", "adamw": "adamw8bit"}


def optimizer_8bit(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    kind = EIGHT_BIT.get(cfg.optimizer)
    if kind is None:
        raise StageSkipped(f"8-bit states are offered for Adam and AdamW; this run's optimizer is {cfg.optimizer}")
    why = eight_bit_unavailable()
    if why:
        raise StageSkipped(why)
    return cfg.with_overrides(optimizer=kind)


def adafactor(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    if cfg.optimizer == "adafactor":
        raise StageSkipped("the optimizer is already Adafactor")
    return cfg.with_overrides(optimizer="adafactor")


def _sharded(cfg: RunConfig, ctx: StageContext, sharding: str) -> RunConfig:
    if ctx.world_size < 2:
        raise StageSkipped(f"sharding={sharding} splits state across processes; this run has one (--nproc 2 or more)")
    if cfg.sharding == sharding:
        raise StageSkipped(f"already sharding={sharding}")
    return cfg.with_overrides(sharding=sharding)


def zero1(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    return _sharded(cfg, ctx, "zero1")


def fsdp(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    return _sharded(cfg, ctx, "fsdp")


def optimizer_offload(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    if ctx.device_type != "cuda":
        raise StageSkipped(f"on a {ctx.device_type} the optimizer state lives in host memory already: offloading it "
                           "moves nothing (a CUDA device's memory is what it frees)")
    if cfg.sharding != "none":
        raise StageSkipped(f"sharding={cfg.sharding} splits the state over the processes already; offloading is for "
                           "one process's whole state")
    if cfg.precision == "fp16":
        raise StageSkipped("fp16's gradient scaler steps a real optimizer on the device; offloading steps on the host")
    return cfg.with_overrides(offload_optimizer=True)


LOSS_CHUNKS = 4


def chunked_loss(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    if not is_token_workload(cfg):
        raise StageSkipped("a chunked loss is for language models' logits (batch x seq_len x vocab)")
    if not is_gpt(cfg.model):
        raise StageSkipped("chunking the loss needs the model's last hidden states and output head, which the built-in "
                           "gpt exposes and a model of yours computes inside its forward; for yours: the logits "
                           "finding's action (a fused linear cross-entropy, or the head and loss over slices)")
    if cfg.seq_len < LOSS_CHUNKS:
        raise StageSkipped(f"seq_len={cfg.seq_len} is too short to cut into {LOSS_CHUNKS} slices")
    return cfg.with_overrides(loss_chunks=LOSS_CHUNKS)


def checkpointing(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    if ctx.model_facts.get("natural_blocks") == 0:
        raise StageSkipped("no natural blocks found in the model; supported: ResNets, ViTs, a Sequential 'features', "
                           "nn.Sequential, and a ModuleList or Sequential of repeated blocks (transformer layers)")
    return cfg.with_overrides(checkpointing="blocks")


def cuda_graphs(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    if ctx.device_type != "cuda":
        raise StageSkipped(f"CUDA graphs replay kernel launches on a CUDA device; this device is {ctx.device_type}")
    if cfg.micro_batch_size and cfg.micro_batch_size != cfg.batch_size:
        raise StageSkipped("CUDA graphs capture one static step; accumulated micro-batches would need one graph each")
    return cfg.with_overrides(compile="reduce-overhead")


def compile_stage(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    if cfg.compile == "reduce-overhead":  # cuda_graphs kept: it already compiles (and fuses) the model
        raise StageSkipped("the model is already compiled with mode=reduce-overhead (cuda_graphs, kept)")
    return cfg.with_overrides(compile="default")


def batch_size(cfg: RunConfig, ctx: StageContext) -> RunConfig:
    if not cfg.allow_batch_change:
        raise StageSkipped(f"the batch size changes the optimization, not only its speed: held at batch_size="
                           f"{cfg.batch_size}; --allow-batch-change searches the largest batch that fits, scales "
                           "the learning rate with it, and carries it forward when faster")
    return cfg  # the size itself is measured: workbench/run/batch_search.py


STAGES: tuple[Stage, ...] = (
    Stage("baseline", REFERENCE, "num_workers=0, no pinning, fp32, eager, NCHW: the reference", baseline),
    Stage("dataloader", SPEED, "DataLoader workers chosen by a measured sweep, persistent workers, "
          "pin_memory + non_blocking copies on CUDA", dataloader, gated=True),
    Stage("batched_input", SPEED, "uint8 batches copied once, crop/flip/normalize as batched tensor ops "
          "on the device instead of per-sample PIL in the DataLoader", batched_input, gated=True),
    Stage("tf32", SPEED, "TF32 matmuls and convolutions (Ampere+ GPUs only)", tf32),
    Stage("amp", SPEED, "autocast to bf16 (or fp16 + GradScaler on pre-Ampere GPUs); on a CPU only "
          "with native bf16", amp),
    Stage("decode_on_device", SPEED, "JPEG files read as bytes in the loader, decoded by torchvision.io.decode_jpeg "
          "on the device (nvJPEG on CUDA), then the batched crop/flip/normalize (ImageFolder data only)",
          decode_on_device),
    Stage("attention_flash", SPEED, "F.scaled_dot_product_attention pinned to its flash backend (FlashAttention-2 "
          "on Ampere+ GPUs, the fused CPU kernel on a CPU) instead of SDPA's own pick; models that call SDPA only",
          attention_flash),
    Stage("attention_efficient", SPEED, "SDPA pinned to its memory-efficient backend (CUDA only; models that call "
          "SDPA)", attention_efficient),
    Stage("attention_cudnn", SPEED, "SDPA pinned to cuDNN's fused attention (Hopper GPUs; models that call SDPA)",
          attention_cudnn),
    Stage("attention_math", SPEED, "SDPA pinned to its math reference (the full seq_len x seq_len scores kept): "
          "what the fused backends save; only when named in --stages", attention_math, opt_in=True),
    Stage("channels_last", SPEED, "NHWC model weights and inputs (faster convolutions, mostly with AMP)",
          channels_last),
    Stage("fused_optimizer", SPEED, "fused optimizer step: one multi-tensor kernel for every parameter "
          "instead of a Python loop over them (CPU and CUDA)", fused_optimizer),
    Stage("host_allocator", SPEED, "freed host memory kept in the process and reused (glibc mallopt: mmap and "
          "trim thresholds raised) instead of returned to the kernel and faulted in again every step "
          "(CPU, Linux)", host_allocator, gated=True),
    Stage("accumulation", MEMORY, f"same effective batch as {ACCUMULATION_MICRO_BATCHES} accumulated "
          "micro-batches: lower peak memory, not speed", accumulation),
    Stage("checkpointing", MEMORY, "recompute each block's activations in backward (non-reentrant): "
          "lower peak memory at a cost in time (BatchNorm statistics update twice: pytorch#96136)", checkpointing),
    Stage("chunked_loss", MEMORY, f"the built-in gpt's output head and cross-entropy over {LOSS_CHUNKS} slices of the "
          "sequence, each checkpointed: the batch x seq_len x vocab logits never exist at once (language models)",
          chunked_loss),
    Stage("optimizer_8bit", MEMORY, "Adam's two states in 8 bits (bitsandbytes' blockwise-quantized Adam8bit/"
          "AdamW8bit): about 4x less optimizer state; changes the optimization (loss and held-out accuracy "
          "shown beside it); only when named in --stages or tried by --memory-budget", optimizer_8bit,
          opt_in=True, changes="optimizer"),
    Stage("adafactor", MEMORY, "torch.optim.Adafactor: a factored second moment (a row and a column per "
          "matrix) and no first moment; changes the optimization; only when named in --stages or tried by "
          "--memory-budget", adafactor, opt_in=True, changes="optimizer"),
    Stage("zero1", MEMORY, "ZeRO-1 (ZeroRedundancyOptimizer): each process keeps 1/N of the optimizer state "
          "(--nproc N; only when named in --stages or tried by --memory-budget)", zero1, opt_in=True),
    Stage("fsdp", MEMORY, "FSDP2 (fully_shard per block, then the root): weights, gradients and optimizer state "
          "sharded over the processes, each block's weights gathered as it runs (--nproc N; only when named "
          "in --stages or tried by --memory-budget)", fsdp, opt_in=True),
    Stage("optimizer_offload", MEMORY, "the optimizer state in host memory, stepped on the CPU (ZeRO-Offload's idea "
          "for one process): the device holds no state, at two copies of the weights across the bus a step "
          "(CUDA; only when named in --stages or tried by --memory-budget)", optimizer_offload, opt_in=True),
    Stage("cuda_graphs", SPEED, "torch.compile mode=reduce-overhead: the step's kernels captured once in CUDA "
          "graphs and replayed, removing per-kernel launch overhead (CUDA only; first where the trace is "
          "launch-bound)", cuda_graphs),
    Stage("compile", SPEED, "torch.compile (default mode): kernel fusion, fewer launches; compile time "
          "reported apart", compile_stage),
    Stage("batch_size", BATCH, "the largest batch that fits, found by doubling (each size measured in its own "
          "process), learning rate scaled linearly; a trade-off carried forward only with --allow-batch-change",
          batch_size),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def select(names: str | None) -> list[Stage]:
    """Stages by comma-separated name, in ladder order; the baseline is always first."""
    if names is None:
        return [s for s in STAGES if not s.opt_in]
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise UsageError(f"stages={names!r} names no stage; allowed: a comma-separated list of {', '.join(STAGE_NAMES)}")
    unknown = [n for n in wanted if n not in STAGE_NAMES]
    if unknown:
        raise UsageError(f"unknown stage {unknown[0]!r}; allowed: {', '.join(STAGE_NAMES)}")
    return [s for s in STAGES if s.name == "baseline" or s.name in wanted]
