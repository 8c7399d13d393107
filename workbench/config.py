"""RunConfig: every knob of a measured training run, in one frozen, validated dataclass.

Each field carries its documentation in ``metadata["help"]``; the command line is generated from
these fields, so a new knob is one new field here. Validation runs on construction, so an invalid
configuration cannot exist; every error names the bad value and what is allowed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from workbench import memory_budget
from workbench.errors import UsageError

PRECISIONS = ("fp32", "bf16", "fp16")
MEMORY_FORMATS = ("contiguous", "channels_last")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
# The 8-bit states are bitsandbytes' (the memory extra); Adafactor is torch's own. All three change the
# optimization, not only its memory: the ladder carries them only with allow_optimizer_change.
OPTIMIZERS = ("adam", "adamw", "sgd", "adam8bit", "adamw8bit", "adafactor")
DEVICES = ("auto", "cpu", "cuda", "mps")
CHECKPOINT_MODES = ("none", "blocks")
INPUT_PIPELINES = ("per_sample", "batched", "decode_on_device")
ORDERS = ("trace", "fixed")
# Several processes (--nproc): DDP replicates everything; ZeRO-1 shards the optimizer state; FSDP2 shards
# weights, gradients and optimizer state (and gathers each block's weights when it runs).
SHARDINGS = ("none", "zero1", "fsdp")
HOST_ALLOCATORS = ("system", "retain")
TOKEN_DTYPES = ("uint16", "uint32")
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")  # training/attention.py pins one
# The built-in GPT-2-style decoders (workbench/training/gpt.py), named here so that validation needs no torch.
GPT_MODELS = ("gpt", "gpt-mini", "gpt2", "gpt2-medium")
# Settings of the whole measuring process, not of a model in it: two configurations that differ in one
# cannot share a process (workbench/run/rounds.py measures each side in its own).
PROCESS_SETTINGS = ("host_allocator",)
# How a configuration is measured, not what it is: a brief probe's settings must not carry forward.
MEASUREMENT_FIELDS = ("repeats", "rounds", "warmup_steps", "timed_steps")

# The lab's setting where a GPU can afford it; CIFAR's native size elsewhere, where 224 px runs at
# ~7 images/s on a CPU and a ladder would take hours. The CLI and the Python API both start here.
GPU_DEFAULTS = {"image_size": 224, "batch_size": 32}
CPU_DEFAULTS = {"image_size": 32, "batch_size": 32}
# A language model's window: GPT-2's context on a GPU; elsewhere a size whose default ladder (every stage,
# paired rounds in fresh processes) stays under 8 minutes on 2 cores (batch 32 took 7.2 and 9.7 minutes).
GPU_TOKEN_DEFAULTS = {"seq_len": 1024, "batch_size": 16}
CPU_TOKEN_DEFAULTS = {"seq_len": 128, "batch_size": 16}


def _doc(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class RunConfig:
    model: str = field(default="resnet18", metadata=_doc(
        "torchvision classification model name (resnet18, resnet50, mobilenet_v3_large, vit_b_16, ...), a built-in "
        "GPT-2-style language model (gpt, gpt-mini, gpt2, gpt2-medium: trained on tokens), or 'module:function' "
        "returning an nn.Module (a classifier, or a causal language model with --data tokens[:PATH]); the class "
        "count or the vocabulary comes from the data"))
    image_size: int = field(default=32, metadata=_doc(
        "side of the square training crop in pixels (the lab uses 224; 32 is CIFAR's native size)"))
    seq_len: int = field(default=128, metadata=_doc(
        "tokens per sample for language models (--data tokens or tokens:PATH): each sample is a window of seq_len "
        "input tokens and the same window shifted by one as targets"))
    loss_chunks: int = field(default=1, metadata=_doc(
        "the built-in GPT's loss computed over this many slices of the sequence, each checkpointed, so that the "
        "whole batch x seq_len x vocab logits never exist at once (1: all at once)"))
    token_dtype: str = field(default="uint16", metadata=_doc(
        "the id type of a token file (data=tokens:PATH): uint16 (nanoGPT's and llm.c's .bin) or uint32"))
    batch_size: int = field(default=32, metadata=_doc("samples per optimizer step (the effective batch)"))
    micro_batch_size: int = field(default=0, metadata=_doc(
        "samples per forward/backward pass; 0 means the whole batch. batch_size / micro_batch_size "
        "micro-batches are accumulated before each optimizer step"))
    optimizer: str = field(default="adam", metadata=_doc(
        "optimizer: adam, adamw, sgd, adam8bit / adamw8bit (bitsandbytes' 8-bit states) or adafactor "
        "(torch's, factored second moment; its own lr default 1e-2 where lr is left at 1e-4)"))
    lr: float = field(default=1e-4, metadata=_doc("learning rate"))
    clip_grad_norm: float = field(default=0.0, metadata=_doc(
        "clip the gradients' total L2 norm to this before each optimizer step (0: no clipping)"))
    num_workers: int = field(default=0, metadata=_doc("DataLoader worker processes (0 loads in the main process)"))
    pin_memory: bool = field(default=False, metadata=_doc(
        "page-locked host batches and non_blocking host-to-device copies (CUDA only)"))
    persistent_workers: bool = field(default=False, metadata=_doc(
        "keep DataLoader workers alive between epochs (needs num_workers > 0)"))
    prefetch_factor: int = field(default=2, metadata=_doc("batches each worker loads ahead (num_workers > 0)"))
    input_pipeline: str = field(default="per_sample", metadata=_doc(
        "per_sample: the lab's PIL crop/flip/normalize per image in the DataLoader; batched: uint8 batches "
        "copied once, then crop/flip/normalize as batched tensor ops on the device; decode_on_device (ImageFolder "
        "of JPEGs): the loader reads the files' bytes only, torchvision.io.decode_jpeg decodes them on the device, "
        "then the batched crop/flip/normalize"))
    precision: str = field(default="fp32", metadata=_doc(
        "fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA only)"))
    tf32: bool = field(default=False, metadata=_doc("allow TF32 matmuls and convolutions (CUDA, Ampere and newer)"))
    fused_optimizer: bool = field(default=False, metadata=_doc(
        "fused optimizer step: one multi-tensor kernel for all parameters instead of a loop (CPU and CUDA)"))
    attention: str = field(default="auto", metadata=_doc(
        "the backend F.scaled_dot_product_attention runs: auto (SDPA's own pick per call), flash, efficient, cudnn "
        "or math (the reference that materializes the scores); only for models that call SDPA"))
    memory_format: str = field(default="contiguous", metadata=_doc("contiguous (NCHW) or channels_last (NHWC)"))
    host_allocator: str = field(default="system", metadata=_doc(
        "system (glibc's default: large freed host blocks go back to the kernel, and the next step faults "
        "them in again) or retain (freed host memory kept in the process and reused; Linux with glibc, "
        "set once per measuring process)"))
    sharding: str = field(default="none", metadata=_doc(
        "with several processes (--nproc): none (DDP: each process holds every weight, gradient and optimizer "
        "state), zero1 (ZeroRedundancyOptimizer: the optimizer state sharded) or fsdp (FSDP2 fully_shard: "
        "weights, gradients and optimizer state sharded per block)"))
    offload_optimizer: bool = field(default=False, metadata=_doc(
        "keep the optimizer state (and fp32 copies of the weights it updates) in host memory and step on the "
        "CPU: the device holds no optimizer state, at two copies of the weights across the bus a step (CUDA, "
        "one process, not with fp16)"))
    checkpointing: str = field(default="none", metadata=_doc(
        "activation checkpointing: none, blocks (recompute each natural block of the model in backward), "
        "blocks:K (selective: only the first K blocks, which hold the largest activations in a CNN) or every:K "
        "(selective: every K-th block, for the equal blocks of a transformer)"))
    compile: str = field(default="none", metadata=_doc(
        "torch.compile mode: none, default, reduce-overhead or max-autotune"))
    # Two: the first step pays for allocation, autotuning and compile and creates the optimizer's
    # state; the second runs with everything in place (on the CPU it is already within noise of the
    # timed steps, compiled or not). A GPU adds one untimed step after its cache release.
    warmup_steps: int = field(default=2, metadata=_doc("optimizer steps run before timing in each process (absorbs compile)"))
    # 4 rounds of 2 x 4 steps cost what 3 rounds of 2 x 6 did, and give intervals about a third
    # narrower: the round is the replicate, and with 3 rounds the t quantile alone is 4.3 (3.2 at 4).
    timed_steps: int = field(default=4, metadata=_doc(
        "optimizer steps timed in each window (spend steps on rounds, not on long windows)"))
    repeats: int = field(default=2, metadata=_doc(
        "timed windows per configuration inside one process; in a paired round the two sides' windows "
        "interleave A B B A, so drift within the round falls on both (not replicates: the rounds are)"))
    rounds: int = field(default=4, metadata=_doc(
        "paired rounds per comparison: each round is a fresh process per configuration, timed one after "
        "the other in alternating order; intervals are taken over the rounds"))
    # 5%: run to run on a shared 2-core machine a small stage's own effect moves by a few percent
    # (batched input measured 2-8% on one CPU), so a 3% bar keeps it in one run and not the next.
    min_effect: float = field(default=0.05, metadata=_doc(
        "smallest speedup worth keeping: a speed stage is kept only when its whole 95%% interval lies "
        "above 1 + min_effect (and above the machine's A/A noise floor)"))
    # The batch size changes what is learned (the learning rate it needs, the accuracy after N steps),
    # not only how fast: the ladder measures a larger one only when asked, and says what it assumes.
    allow_batch_change: bool = field(default=False, metadata=_doc(
        "let the batch_size stage search the largest batch that fits (doubling, measured), scale the "
        "learning rate linearly with it, and carry it forward when faster; off: the batch is held fixed"))
    # A budget makes the ladder's goal the fastest configuration whose measured peak stays under it.
    memory_budget: str = field(default="", metadata=_doc(
        "peak memory to stay under, e.g. 12GiB, 512MiB or 80%% (of the GPU's memory, or of the host's on a "
        "CPU): the ladder keeps the fastest measured configuration that fits, trying memory stages chosen "
        "from the breakdown; on CUDA enforced like a smaller card; empty: no budget"))
    allow_optimizer_change: bool = field(default=False, metadata=_doc(
        "let the memory budget carry an optimizer with smaller state (8-bit Adam, Adafactor): they change "
        "the optimization, so without this flag the budget does not try them (named in --stages, "
        "optimizer_8bit and adafactor are measured as trade-offs, never carried)"))
    order: str = field(default="trace", metadata=_doc(
        "trace: the next stage is the one the current trace points at, then the default order, then a "
        "second look and a leave-one-out check; fixed: the lab's order, one pass"))
    seed: int = field(default=0, metadata=_doc("seed for data, weights and order"))
    device: str = field(default="auto", metadata=_doc("auto, cpu, cuda or mps (auto picks cuda, then mps, then cpu)"))
    threads: int = field(default=0, metadata=_doc("intra-op CPU threads; 0 uses every usable core (split between processes under --nproc)"))
    data: str = field(default="auto", metadata=_doc(
        "auto (CIFAR-10 if present or downloadable, else synthetic; synthetic tokens for a built-in gpt), cifar10, "
        "synthetic, imagefolder:PATH, tokens (synthetic tokens for a language model) or tokens:PATH (a flat token "
        "file, nanoGPT's train.bin)"))
    data_dir: str = field(default="data", metadata=_doc("where CIFAR-10 (or the synthetic CIFAR-format data) lives"))
    synthetic_per_batch: int = field(default=10000, metadata=_doc(
        "images per data_batch file when writing synthetic CIFAR-format data (the real files hold 10000)"))
    run_name: str = field(default="", metadata=_doc("name of the run folder under reports/ and profiles/; empty picks a timestamp"))
    reports_dir: str = field(default="reports", metadata=_doc("where results and reports go"))
    profiles_dir: str = field(default="profiles", metadata=_doc("where traces go"))
    trace: bool = field(default=True, metadata=_doc("capture a torch.profiler trace of every stage (a separate, untimed pass)"))
    memory_timeline: bool = field(default=True, metadata=_doc(
        "profile one more step per stage with torch.profiler's memory profiler (shapes, memory, stacks): the "
        "memory by category over the step and the moment of its peak; on CUDA also an allocator snapshot"))
    trace_with_stack: bool = field(default=False, metadata=_doc("record Python stacks in traces (bigger files)"))

    def __post_init__(self) -> None:
        validate(self)

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // self.effective_micro_batch

    @property
    def effective_micro_batch(self) -> int:
        return self.micro_batch_size or self.batch_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_overrides(self, **changes: Any) -> "RunConfig":
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise UsageError(f"unknown setting {unknown[0]!r}; allowed: {', '.join(field_names())}")
        return replace(self, **changes)


def machine_defaults(device_type: str, tokens: bool = False) -> dict:
    """The fields whose default depends on the machine, for a resolved device type and workload."""
    if tokens:
        return dict(GPU_TOKEN_DEFAULTS if device_type == "cuda" else CPU_TOKEN_DEFAULTS)
    return dict(GPU_DEFAULTS if device_type == "cuda" else CPU_DEFAULTS)


def for_machine(**fields: Any) -> tuple[RunConfig, str]:
    """A RunConfig with this machine's defaults under the given fields, and the line that says which
    defaults were taken (the CLI prints it; the Python API logs it)."""
    from workbench.device import resolve_device_type  # torch, imported only when asked

    device_type = resolve_device_type(fields.get("device", "auto"))
    tokens = is_token_data(fields.get("data", "auto")) or (fields.get("data", "auto") == "auto"
                                                            and is_gpt(fields.get("model", "")))
    defaults = machine_defaults(device_type, tokens)
    taken = {key: value for key, value in defaults.items() if key not in fields}
    label = ", ".join(f"{key}={value}" for key, value in taken.items())
    flags = "/".join(f"--{key.replace('_', '-')}" for key in taken)
    # Only the defaults this run took: a field given on the command line is not a default.
    line = f"defaults for {device_type}: {label} (override with {flags})" if taken else ""
    return RunConfig(**{**defaults, **fields}), line


def field_names() -> list[str]:
    return [f.name for f in fields(RunConfig)]


def field_kinds() -> dict[str, type]:
    """Each field's Python type (annotations are strings under `from __future__ import annotations`)."""
    kinds = {"int": int, "float": float, "bool": bool, "str": str}
    return {f.name: kinds.get(str(f.type), str) for f in fields(RunConfig)}


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _check_positive(name: str, value: int | float, minimum: int = 1) -> None:
    if value < minimum:
        raise UsageError(f"{name}={value} is too small; it must be at least {minimum}")


def validate(cfg: RunConfig) -> None:
    for name in ("image_size", "seq_len", "loss_chunks", "batch_size", "timed_steps", "repeats", "rounds", "prefetch_factor", "synthetic_per_batch"):
        _check_positive(name, getattr(cfg, name))
    # At least one warm-up step: the first step pays for allocation, cuDNN autotuning and compile.
    _check_positive("warmup_steps", cfg.warmup_steps)
    for name in ("micro_batch_size", "num_workers", "threads", "seed"):
        _check_positive(name, getattr(cfg, name), minimum=0)
    if not cfg.clip_grad_norm >= 0:
        raise UsageError(f"clip_grad_norm={cfg.clip_grad_norm} must be 0 (off) or a positive number")
    if not cfg.lr > 0:
        raise UsageError(f"lr={cfg.lr} must be a positive number")
    _check_choice("precision", cfg.precision, PRECISIONS)
    _check_choice("memory_format", cfg.memory_format, MEMORY_FORMATS)
    _check_choice("host_allocator", cfg.host_allocator, HOST_ALLOCATORS)
    _check_choice("compile", cfg.compile, COMPILE_MODES)
    _check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _check_choice("device", cfg.device, DEVICES)
    checkpointed_blocks(cfg.checkpointing)
    _check_choice("input_pipeline", cfg.input_pipeline, INPUT_PIPELINES)
    _check_choice("order", cfg.order, ORDERS)
    _check_choice("sharding", cfg.sharding, SHARDINGS)
    if cfg.offload_optimizer and (cfg.sharding != "none" or cfg.precision == "fp16"):
        raise UsageError(f"offload_optimizer=True with sharding={cfg.sharding!r} and precision={cfg.precision!r} is not "
                         "allowed; allowed: sharding='none' (one process's whole state) and fp32 or bf16 (fp16's "
                         "gradient scaler steps a real optimizer)")
    _check_choice("token_dtype", cfg.token_dtype, TOKEN_DTYPES)
    _check_choice("attention", cfg.attention, ATTENTION_BACKENDS)
    if not 0 <= cfg.min_effect < 1:
        raise UsageError(f"min_effect={cfg.min_effect} is out of range; allowed: 0 <= min_effect < 1 (0.03 is 3%)")
    _validate_batches(cfg)
    _validate_data(cfg.data)
    _validate_workload(cfg)
    memory_budget.parse(cfg.memory_budget)
    if cfg.persistent_workers and cfg.num_workers == 0:
        raise UsageError("persistent_workers=True needs num_workers > 0 (got num_workers=0)")
    if cfg.input_pipeline == "decode_on_device" and not cfg.data.startswith("imagefolder:"):
        raise UsageError(f"input_pipeline=decode_on_device needs data=imagefolder:PATH (JPEG files); got "
                         f"data={cfg.data!r}; allowed with other data: per_sample, batched")


def _validate_batches(cfg: RunConfig) -> None:
    micro = cfg.micro_batch_size
    if micro and micro > cfg.batch_size:
        raise UsageError(f"micro_batch_size={micro} is larger than batch_size={cfg.batch_size}")
    if micro and cfg.batch_size % micro:
        raise UsageError(
            f"batch_size={cfg.batch_size} is not divisible by micro_batch_size={micro}; "
            f"allowed micro-batch sizes: {', '.join(str(d) for d in divisors(cfg.batch_size))}")


def _validate_data(data: str) -> None:
    for prefix, example in (("imagefolder:", "imagefolder:/data/my_images"), ("tokens:", "tokens:data/train.bin")):
        if data.startswith(prefix):
            if not data.split(":", 1)[1]:
                raise UsageError(f"data={data!r} needs a path, e.g. {example}")
            return
    _check_choice("data", data, ("auto", "cifar10", "synthetic", "imagefolder:PATH", "tokens", "tokens:PATH"))


def _validate_workload(cfg: RunConfig) -> None:
    """A built-in GPT reads tokens, a torchvision classifier images: the other pairings cannot train."""
    if is_gpt(cfg.model) and cfg.data not in ("auto",) and not is_token_data(cfg.data):
        raise UsageError(f"model={cfg.model} is a language model and data={cfg.data!r} holds images; allowed: "
                         "tokens (synthetic) or tokens:PATH")
    if is_token_data(cfg.data) and ":" not in cfg.model and not is_gpt(cfg.model):
        raise UsageError(f"data={cfg.data!r} holds tokens and model={cfg.model} is an image classifier; allowed: "
                         f"{', '.join(GPT_MODELS)} or module:function returning a causal language model")
    if cfg.loss_chunks > 1 and not is_gpt(cfg.model):
        raise UsageError(f"loss_chunks={cfg.loss_chunks} needs a built-in GPT ({', '.join(GPT_MODELS)}), whose head and "
                         "loss the workbench computes; allowed with other models: 1")
    if is_token_data(data_source(cfg)) and cfg.input_pipeline != "per_sample":
        raise UsageError(f"input_pipeline={cfg.input_pipeline} augments images; with token data allowed: per_sample")


def is_token_data(data: str) -> bool:
    return data == "tokens" or data.startswith("tokens:")


def is_gpt(model: str) -> bool:
    return model in GPT_MODELS


def data_source(cfg: RunConfig) -> str:
    """The data the run reads: data=auto means synthetic tokens for a built-in GPT, images otherwise."""
    return "tokens" if cfg.data == "auto" and is_gpt(cfg.model) else cfg.data


def is_token_workload(cfg: RunConfig) -> bool:
    """A language model on token windows: throughput also in tokens/s, image-only stages skipped."""
    return is_token_data(data_source(cfg))


# Adafactor scales each update by the parameter's own RMS, so its lr is relative: torch's default 1e-2
# moves a weight about as far per step as Adam's 1e-4 does. The run's lr is used as set when the user
# changed it from the lab's Adam default.
ADAM_DEFAULT_LR, ADAFACTOR_DEFAULT_LR = 1e-4, 1e-2


def optimizer_lr(optimizer: str, lr: float) -> float:
    """The learning rate an optimizer is built with (the workbench's and the generated script's alike)."""
    return ADAFACTOR_DEFAULT_LR if optimizer == "adafactor" and lr == ADAM_DEFAULT_LR else lr


def checkpointed_blocks(mode: str) -> int | None:
    """How many of the model's blocks a checkpointing mode wraps: 0 for none, None for all of them;
    every:K wraps about one block in K, which a count cannot say without the model: None."""
    if mode in CHECKPOINT_MODES:
        return 0 if mode == "none" else None
    head, _, count = mode.partition(":")
    if head in ("blocks", "every") and count.isdigit() and int(count) >= 1:
        return int(count) if head == "blocks" else None
    raise UsageError(f"checkpointing={mode!r} is not allowed; choose one of: none, blocks, blocks:K (K >= 1: the "
                     "first K blocks), every:K (every K-th block: blocks 0, K, 2K, ...)")


def checkpoint_picks(mode: str, count: int) -> list[int]:
    """The indices of the blocks a checkpointing mode wraps, out of `count` natural blocks."""
    checkpointed_blocks(mode)  # the one place a bad mode is refused
    head, _, k = mode.partition(":")
    if mode == "none":
        return []
    if head == "every":
        return list(range(0, count, int(k)))
    return list(range(count if not k else min(count, int(k))))


def checkpoint_share(mode: str, count: int) -> float:
    """The share of the natural blocks a mode wraps (1.0 for all; a memory prediction scales by it)."""
    return len(checkpoint_picks(mode, count)) / count if count else 1.0


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_device_support(cfg: RunConfig, device_type: str) -> None:
    if cfg.precision == "fp16" and device_type == "cpu":
        raise UsageError("precision='fp16' is not supported on a CPU; allowed there: fp32, bf16")
    if cfg.offload_optimizer and device_type != "cuda":
        raise UsageError(f"offload_optimizer=True moves the optimizer state to host memory, where a {device_type} "
                         "run keeps it already; allowed: on a CUDA device")
