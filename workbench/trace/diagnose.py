"""Bottleneck rules over a trace summary (analyze.summarize) and a context of the run.

Each rule is a small function that returns one finding or None; each compares one measured number
with one named threshold below, so a finding can always say what was measured and against what::

    {"rule", "severity" ("high"/"medium"/"low"/"info"), "evidence", "value", "threshold", "action"}

Context keys, all optional: device_type ("cpu"/"cuda"/"mps"), pin_memory, num_workers, precision
("fp32"/"bf16"/"fp16"), cpu_native_bf16, tensor_cores, device_capacity_mb, peak_memory_mb,
compile ("none" when off), step_time_s, host_allocator ("system"/"retain"), host_cpu (the timed
window's minor_faults_per_step and system_time_share), attention ("sdpa"/"by_hand"/"none", from the model's
first batch), logits ({batch, seq_len, vocab} of a language model's micro-batch). "value" and "threshold" are None for a rule that is a
condition rather than a measured number against a limit. No torch import: the report runs this too.
"""
from __future__ import annotations

from typing import Callable

from workbench.trace import regions

# Input pipeline: any visible share of the step spent waiting for a batch is worth a look.
DATA_LOADING_SHARE_MAX = 0.05
DATA_LOADING_SHARE_HIGH = 0.20  # above this the loop is mostly waiting for data
# Host-to-device copies: below this share of the step, pinning is not worth mentioning.
H2D_SHARE_MAX = 0.03
# GPU idle between kernels over the profiled window (launch-bound or starved).
DEVICE_IDLE_SHARE_MAX = 0.25
# Launch overhead: a few hundred launches per step of very short kernels is CPU-bound launching.
LAUNCHES_PER_STEP_MAX = 300
MEDIAN_KERNEL_US_MIN = 10.0
# Share of kernel time in fp32/TF32 conv and matmul kernels that autocast could run in half.
FP32_ELIGIBLE_SHARE_MAX = 0.20
# Share of kernel time in cuDNN NCHW<->NHWC conversions, removed by channels_last.
LAYOUT_TRANSPOSE_SHARE_MAX = 0.03
# Peak memory against device capacity: above this, a bigger batch or model will not fit.
MEMORY_PRESSURE_SHARE = 0.85
# forward + backward + optimizer above this share: the input pipeline is not the problem.
COMPUTE_BOUND_SHARE = 0.90
# The optimizer step above this share: a fused/foreach implementation pays off.
OPTIMIZER_SHARE_MAX = 0.15
OPTIMIZER_SHARE_HIGH = 0.25  # above this the optimizer is a main cost, not a detail
# Time outside every annotated region (Python overhead, logging, .item() syncs), less the part of it in
# collectives: a rank waiting for the others there has nothing to annotate (trace/comm.py explains it).
OTHER_SHARE_MAX = 0.15

# The kernel's share of the host CPU time during the timed steps: above this, page faults from freed
# memory handed back and faulted in again each step are worth removing (10-15% was measured for
# ResNet-18 at 32 px on a 2-core CPU; under 1% once the memory was kept).
SYSTEM_TIME_SHARE_MAX = 0.05
# ... and only with enough faults to be the cause (4 MiB faulted in a step): kernel time spent on
# sockets (gloo), futexes or I/O is not page faults, and keeping freed memory cannot remove it.
PAGE_FAULTS_PER_STEP_MIN = 1000

# The same setting for any script, no code change: glibc reads it at start (32 MiB is the most every
# glibc takes for the mmap threshold; a larger value some ignore, and the trim threshold alone makes it worse).
GLIBC_TUNABLES_LINE = "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483647"

SEVERITY_ORDER = ("high", "medium", "low", "info")

# Which ladder stages a finding predicts will help, and which it predicts will not.
PREDICTS = {
    "data_loading": {"dataloader", "batched_input"},
    "pageable_h2d": {"dataloader"},
    "device_idle": {"compile"},
    "launch_bound": {"cuda_graphs", "compile"},
    "fp32_tensor_core_eligible": {"amp"},
    "layout_conversions": {"channels_last"},
    "memory_pressure": {"accumulation", "checkpointing"},
    "optimizer_step": {"fused_optimizer"},
    "page_faults": {"host_allocator"},
    "logits": {"accumulation", "chunked_loss"},
}
RULES_OUT = {
    "compute_bound": {"dataloader"},
    "cpu_bf16_not_native": {"amp"},
}


def _finding(rule: str, severity: str, evidence: str, value, threshold, action: str) -> dict:
    return {"rule": rule, "severity": severity, "evidence": evidence, "value": value,
            "threshold": threshold, "action": action}


def _share(summary: dict, part: str) -> float:
    return summary.get("breakdown_share", {}).get(part, 0.0)


def _device_type(summary: dict, context: dict) -> str:
    return context.get("device_type") or ("cuda" if summary.get("device") else "cpu")


def _kernel_share(device: dict, key: str) -> float:
    total = sum(device.get("kernel_ms_by_kind", {}).values())
    return device.get(key, 0.0) / total if total else 0.0


def rule_data_loading(summary: dict, context: dict) -> dict | None:
    share = _share(summary, regions.DATA_LOADING)
    if share <= DATA_LOADING_SHARE_MAX:
        return None
    workers = context.get("num_workers")
    now = f" (num_workers={workers})" if workers is not None else ""
    more = "more background workers" if workers else "background workers (num_workers > 0)"
    return _finding(
        "data_loading", "high" if share > DATA_LOADING_SHARE_HIGH else "medium",
        f"Waiting for the next batch takes {share:.1%} of the step{now}.", share, DATA_LOADING_SHARE_MAX,
        f"Load batches in {more} with persistent_workers=True and prefetching, "
        "or make per-sample transforms cheaper.")


def _h2d_share(summary: dict) -> float:
    """The larger of the host-side copy region and the device-side HtoD copy time, per step."""
    device = summary.get("device") or {}
    steps, step_ms = device.get("steps") or 1, summary.get("step_time_ms") or 0.0
    device_share = device.get("h2d_copy_ms", 0.0) / steps / step_ms if step_ms else 0.0
    return max(_share(summary, regions.HOST_TO_DEVICE), device_share)


def rule_pageable_h2d(summary: dict, context: dict) -> dict | None:
    device = summary.get("device") or {}
    pageable = device.get("h2d_from_pageable") or context.get("pin_memory") is False
    share = _h2d_share(summary)
    if _device_type(summary, context) != "cuda" or not pageable or share <= H2D_SHARE_MAX:
        return None
    return _finding(
        "pageable_h2d", "medium",
        f"Host-to-device copies from pageable memory take {share:.1%} of the step.", share, H2D_SHARE_MAX,
        "Set pin_memory=True on the DataLoader and copy with .to(device, non_blocking=True), "
        "so copies overlap with compute.")


def rule_device_idle(summary: dict, context: dict) -> dict | None:
    device = summary.get("device")
    if not device or device["idle_share"] <= DEVICE_IDLE_SHARE_MAX:
        return None
    starved = _share(summary, regions.DATA_LOADING) > DATA_LOADING_SHARE_MAX
    first = "Fix the input pipeline first (see data_loading); then " if starved else ""
    return _finding(
        "device_idle", "high" if device["idle_share"] > 2 * DEVICE_IDLE_SHARE_MAX else "medium",
        f"The GPU is idle {device['idle_share']:.1%} of the profiled steps.", device["idle_share"],
        DEVICE_IDLE_SHARE_MAX,
        first + "give the GPU more work per launch: torch.compile (fusion), CUDA graphs "
        "(compile mode reduce-overhead), or a larger batch.")


def rule_launch_bound(summary: dict, context: dict) -> dict | None:
    device = summary.get("device")
    if not device or device.get("median_kernel_us") is None:
        return None
    launches, median_us = device["launches_per_step"], device["median_kernel_us"]
    if launches <= LAUNCHES_PER_STEP_MAX or median_us >= MEDIAN_KERNEL_US_MIN:
        return None
    compiled = context.get("compile", "none") not in ("none", None)
    action = ("Already compiled: try mode='reduce-overhead' (CUDA graphs) or a larger batch." if compiled else
              "torch.compile fuses small kernels; CUDA graphs (mode='reduce-overhead') remove launch cost.")
    return _finding(
        "launch_bound", "medium",
        f"{launches:.0f} kernel launches per step with a median kernel of {median_us:.1f} us.",
        launches, LAUNCHES_PER_STEP_MAX, action)


def rule_fp32_tensor_cores(summary: dict, context: dict) -> dict | None:
    device = summary.get("device")
    if not device or not context.get("tensor_cores") or context.get("precision", "fp32") != "fp32":
        return None
    share = _kernel_share(device, "fp32_tensorcore_eligible_ms")
    if share <= FP32_ELIGIBLE_SHARE_MAX:
        return None
    return _finding(
        "fp32_tensor_core_eligible", "high",
        f"{share:.1%} of GPU kernel time is fp32/TF32 convolution or matmul on a tensor-core GPU.",
        share, FP32_ELIGIBLE_SHARE_MAX,
        "Use autocast (bf16, or fp16 with GradScaler) so these kernels run in half precision.")


def rule_layout_conversions(summary: dict, context: dict) -> dict | None:
    device = summary.get("device")
    share = _kernel_share(device, "layout_transpose_ms") if device else 0.0
    if share <= LAYOUT_TRANSPOSE_SHARE_MAX:
        return None
    return _finding(
        "layout_conversions", "medium",
        f"{share:.1%} of GPU kernel time converts between NCHW and NHWC around convolutions.",
        share, LAYOUT_TRANSPOSE_SHARE_MAX,
        "Convert the model and inputs to channels_last (best together with AMP).")


def _peak_mb(summary: dict, context: dict) -> float | None:
    if context.get("peak_memory_mb") is not None:
        return context["peak_memory_mb"]
    return (summary.get("peak_memory_mb") or {}).get(_device_type(summary, context))


def rule_memory_pressure(summary: dict, context: dict) -> dict | None:
    peak, capacity = _peak_mb(summary, context), context.get("device_capacity_mb")
    if peak is None or not capacity or peak / capacity <= MEMORY_PRESSURE_SHARE:
        return None
    return _finding(
        "memory_pressure", "high",
        f"Peak memory is {peak:.0f} MiB, {peak / capacity:.1%} of the {capacity:.0f} MiB available.",
        peak / capacity, MEMORY_PRESSURE_SHARE,
        "Use gradient accumulation (smaller micro-batches) or activation checkpointing.")


def rule_cpu_bf16(summary: dict, context: dict) -> dict | None:
    if not (_device_type(summary, context) == "cpu" and context.get("precision") == "bf16"
            and context.get("cpu_native_bf16") is False):
        return None
    step = f" A step takes {summary.get('step_time_ms', 0.0):.1f} ms."
    return _finding(
        "cpu_bf16_not_native", "high",
        "bf16 autocast is on, but this CPU has no native bf16 (no avx512_bf16/amx_bf16)." + step,
        None, None,
        "Train in fp32 on this CPU: emulated bf16 is many times slower.")


def rule_compute_bound(summary: dict, context: dict) -> dict | None:
    """Forward, backward and optimizer fill the step, less the time a rank spends in them waiting for
    the others in a collective (DDP's all-reduce at the end of backward, behind a slower rank): that
    is not compute, and a waiting rank of an input-bound run must not be told input cannot help."""
    whole = sum(_share(summary, part) for part in regions.COMPUTE_PARTS)
    step_ms = summary.get("step_time_ms") or 0.0
    waiting = min(whole, (summary.get("compute_in_collectives_ms") or 0.0) / step_ms) if step_ms else 0.0
    share = whole - waiting
    if share <= COMPUTE_BOUND_SHARE:
        return None
    besides = f" (besides {waiting:.1%} waiting in collectives)" if waiting else ""
    return _finding(
        "compute_bound", "info",
        f"Forward, backward and optimizer take {share:.1%} of the step{besides}.", share, COMPUTE_BOUND_SHARE,
        "Input-pipeline stages (workers, pinning) will not help; only compute-side stages can "
        "(precision, memory format, compile, or a smaller model).")


def rule_optimizer_step(summary: dict, context: dict) -> dict | None:
    share = _share(summary, regions.OPTIMIZER_STEP)
    if share <= OPTIMIZER_SHARE_MAX or context.get("fused_optimizer"):
        return None
    return _finding(
        "optimizer_step", "medium" if share > OPTIMIZER_SHARE_HIGH else "low",
        f"The optimizer step takes {share:.1%} of the step.", share, OPTIMIZER_SHARE_MAX,
        "Use the fused optimizer (Adam/AdamW/SGD(fused=True), CPU and CUDA): one multi-tensor kernel "
        "instead of a loop over parameters.")


def faulting(host_cpu: dict | None) -> bool:
    """Whether a window's host figures (workbench/host_usage.py) show page faults worth removing."""
    host_cpu = host_cpu or {}
    return ((host_cpu.get("system_time_share") or 0.0) > SYSTEM_TIME_SHARE_MAX
            and (host_cpu.get("minor_faults_per_step") or 0.0) >= PAGE_FAULTS_PER_STEP_MIN)


def rule_page_faults(summary: dict, context: dict) -> dict | None:
    """Measured beside the trace, not in it: the timed window's page faults and system time."""
    host = context.get("host_cpu") or {}
    share = host.get("system_time_share") or 0.0
    if (_device_type(summary, context) != "cpu" or context.get("host_allocator", "system") != "system"
            or not faulting(host)):
        return None
    return _finding(
        "page_faults", "medium" if share > 2 * SYSTEM_TIME_SHARE_MAX else "low",
        f"The kernel takes {share:.1%} of the process's CPU time in the timed steps, with "
        f"{host.get('minor_faults_per_step', 0.0):,.0f} page faults per step: freed tensors go back to the "
        "kernel and are faulted in again the next step.", share, SYSTEM_TIME_SHARE_MAX,
        "Keep freed host memory in the process: the host_allocator stage (mallopt), or for a script "
        f"{GLIBC_TUNABLES_LINE} "
        "(32 MiB is the most every glibc takes; a larger value some ignore, and the trim threshold alone "
        "makes it worse), or an allocator such as jemalloc or tcmalloc via LD_PRELOAD.")


def _collective_share(summary: dict) -> float:
    """The part of "other" spent in collectives (waiting for the other ranks or the wire), as a share of
    the step: the union of every collective's time there, counted once (trace/analyze.py)."""
    step_ms = summary.get("step_time_ms") or 0.0
    ms = summary.get("other_in_collectives_ms") or 0.0
    return min(ms / step_ms, _share(summary, regions.OTHER)) if step_ms else 0.0


def rule_unannotated_time(summary: dict, context: dict) -> dict | None:
    waiting = _collective_share(summary)
    share = _share(summary, regions.OTHER) - waiting
    if share <= OTHER_SHARE_MAX:
        return None
    besides = f" (besides {waiting:.1%} in collectives, waiting for the other ranks)" if waiting else ""
    return _finding(
        "unannotated_time", "low",
        f"{share:.1%} of the step lies outside the annotated regions{besides}.", share, OTHER_SHARE_MAX,
        "Look for Python overhead, logging or host syncs (.item(), .cpu()) in the loop.")


# Attention written by hand: softmax ops among the top operators and no fused SDPA op beside them.
SOFTMAX_OPS = ("aten::softmax", "aten::_softmax", "aten::_softmax_backward_data", "softmax", "_softmax")
SDPA_MARK = "scaled_dot_product"
# The logits and what the loss makes of them (log-softmax, their gradient: about 3 copies in fp32) above
# this share of the peak: computing the loss without all the logits at once is worth it.
LOGITS_PEAK_SHARE_MAX = 0.25
LOGITS_COPIES = 3


def rule_attention_by_hand(summary: dict, context: dict) -> dict | None:
    """softmax(QK^T)V written out: the (seq_len x seq_len) scores live in memory, where SDPA's fused
    backends never materialize them. From the model's first batch where the run knows it, else the trace."""
    ops = [row for row in summary.get("top_ops") or [] if row.get("device") == "cpu"]
    softmax = [row for row in ops if row["name"] in SOFTMAX_OPS]
    fused = any(SDPA_MARK in row["name"] for row in ops)
    known = context.get("attention")
    if known not in (None, "by_hand") or (known is None and (not softmax or fused)):
        return None
    share = sum(row.get("share", 0.0) for row in softmax)
    where = ("the model's forward calls softmax between matmuls and never F.scaled_dot_product_attention"
             if known else "softmax is among the top operators and no scaled_dot_product_attention op is")
    return _finding(
        "attention_by_hand", "medium",
        f"Attention is computed by hand: {where}; softmax ops take {share:.1%} of operator time.", share or None, None,
        "Call torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True): its flash and "
        "memory-efficient backends never keep the seq_len x seq_len scores, and the attention stages can "
        "then choose among them.")


def rule_logits(summary: dict, context: dict) -> dict | None:
    logits = context.get("logits")
    peak = _peak_mb(summary, context)
    if not logits or not peak:
        return None
    one_mib = logits["batch"] * logits["seq_len"] * logits["vocab"] * 4 / 2**20
    share = LOGITS_COPIES * one_mib / peak
    if share <= LOGITS_PEAK_SHARE_MAX:
        return None
    return _finding(
        "logits", "medium",
        f"The logits are {logits['batch']} x {logits['seq_len']} x {logits['vocab']:,} in fp32 = {one_mib:,.0f} MiB; "
        f"with the loss's log-softmax and their gradient about {LOGITS_COPIES * one_mib:,.0f} MiB, {share:.0%} of the "
        f"{peak:,.0f} MiB peak.", share, LOGITS_PEAK_SHARE_MAX,
        "Compute the loss without all the logits at once: the head and cross-entropy over chunks of the sequence "
        "(each chunk checkpointed), or a fused linear cross-entropy (Liger Kernel's, Apple's Cut Cross-Entropy); "
        "a smaller micro-batch (accumulation) shrinks them too.")


RULES: tuple[Callable[[dict, dict], dict | None], ...] = (
    rule_data_loading, rule_pageable_h2d, rule_device_idle, rule_launch_bound,
    rule_fp32_tensor_cores, rule_layout_conversions, rule_memory_pressure, rule_cpu_bf16,
    rule_compute_bound, rule_optimizer_step, rule_page_faults, rule_unannotated_time, rule_attention_by_hand,
    rule_logits,
)


def diagnose(summary: dict, context: dict | None = None) -> list[dict]:
    """Every rule that fires, most severe first (rule order breaks ties)."""
    context = context or {}
    findings = [f for f in (rule(summary, context) for rule in RULES) if f is not None]
    return sorted(findings, key=lambda f: SEVERITY_ORDER.index(f["severity"]))


def predicts(findings: list[dict]) -> set[str]:
    """Stage names the findings predict will help."""
    return set().union(*(PREDICTS.get(f["rule"], set()) for f in findings))


def rules_out(findings: list[dict]) -> set[str]:
    """Stage names the findings predict will not help."""
    return set().union(*(RULES_OUT.get(f["rule"], set()) for f in findings))
