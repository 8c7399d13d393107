"""Peak FLOP/s, the denominator of MFU: datasheet figures for known GPUs, a measured matmul on a CPU.

A fact of the device, settled once per run (run/session.py) and handed to each measuring process in
its request; `peak_for` picks the entry a configuration's compute dtype is measured against.
"""
from __future__ import annotations

import math
import re
import time

import torch

from workbench.device import Capabilities, DeviceFacts

# Dense peak FLOP/s from NVIDIA's datasheets (SXM parts unless named), keyed by a substring of the
# device name and the compute dtype. fp32 means plain fp32 (no TF32); tf32/bf16/fp16 are tensor-core,
# dense (no sparsity). Sources: H100/H200 datasheet (2023/2024), A100 datasheet (2021),
# L4/A10/T4/V100 product briefs. H200 NVL: NVIDIA H200 datasheet (NVL column, 2024; its tensor
# figures are quoted with sparsity, halved here). GH200: NVIDIA GH200 Grace Hopper Superchip datasheet
# (2023), the same Hopper GPU at the SXM figures. Most specific names first: "H200 NVL" before "H200",
# and "GH200" is its own word ("H200" does not match inside it).
GPU_PEAK_FLOPS = {
    "H100 NVL": {"fp32": 60e12, "tf32": 417.5e12, "bf16": 835e12, "fp16": 835e12},
    "H200 NVL": {"fp32": 60e12, "tf32": 417.5e12, "bf16": 835.5e12, "fp16": 835.5e12},
    "GH200": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
    "H200": {"fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
    "H100 PCIe": {"fp32": 51.2e12, "tf32": 378e12, "bf16": 756e12, "fp16": 756e12},
    "H100": {"fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
    "A100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12},
    "L40S": {"fp32": 91.6e12, "tf32": 183e12, "bf16": 362e12, "fp16": 362e12},
    "L40": {"fp32": 90.5e12, "tf32": 90.5e12, "bf16": 181e12, "fp16": 181e12},
    "L4": {"fp32": 30.3e12, "tf32": 60e12, "bf16": 121e12, "fp16": 121e12},
    "A10G": {"fp32": 31.2e12, "tf32": 62.5e12, "bf16": 125e12, "fp16": 125e12},
    "A10": {"fp32": 31.2e12, "tf32": 62.5e12, "bf16": 125e12, "fp16": 125e12},
    "V100": {"fp32": 15.7e12, "fp16": 125e12},
    "T4": {"fp32": 8.1e12, "fp16": 65e12},
}
MATMUL_PROBE_SIZE = 2048


def measured_matmul_peak(dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """FLOP/s of a large CPU matmul: the practical peak the MFU of a CPU run is measured against.
    The best of `repeats` single calls: a peak is what the cores can do, and any call slowed by
    another process on them (the mean of three read 87 GFLOP/s on a busy 2-core machine whose
    training steps then ran at 138) would understate it and put MFU over 100%."""
    a = torch.randn(MATMUL_PROBE_SIZE, MATMUL_PROBE_SIZE, dtype=dtype)
    b = torch.randn(MATMUL_PROBE_SIZE, MATMUL_PROBE_SIZE, dtype=dtype)
    a @ b  # first call allocates and picks kernels
    fastest = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        fastest = min(fastest, time.perf_counter() - start)
    return 2 * MATMUL_PROBE_SIZE**3 / fastest


def gpu_peak_flops(device_name: str, dtype_key: str) -> tuple[float | None, str]:
    """Documented dense peak for a GPU, and the name of the denominator."""
    for key, table in GPU_PEAK_FLOPS.items():  # most specific names first: "L40S" before "L40" before "L4"
        if re.search(rf"\b{re.escape(key)}\b", device_name) and dtype_key in table:
            return table[dtype_key], f"{key} datasheet dense {dtype_key} peak"
    return None, f"no documented peak for {device_name!r} ({dtype_key}); MFU not reported"


def peak_for(precision: str, tf32: bool, peaks: dict) -> tuple[float | None, str]:
    """The peak FLOP/s a configuration's MFU is measured against (from the session's table), and its name."""
    key = precision if precision != "fp32" else ("tf32" if tf32 else "fp32")
    entry = peaks.get(key) or peaks.get("fp32") or {}
    return entry.get("flops_per_s"), entry.get("source", "no peak known")


def measure(facts: DeviceFacts, caps: Capabilities, threads: int = 0) -> dict:
    """Peak FLOP/s per compute dtype: measured matmuls on a CPU (with the threads a stage gets),
    datasheet numbers on a GPU."""
    if facts.type == "cuda":
        peaks = {}
        for key in ("fp32", "tf32", "bf16", "fp16"):
            value, source = gpu_peak_flops(facts.name, key)
            peaks[key] = {"flops_per_s": value, "source": source}
        return peaks
    torch.set_num_threads(threads or torch.get_num_threads())
    peaks = {"fp32": {"flops_per_s": measured_matmul_peak(torch.float32),
                      "source": f"measured fp32 {MATMUL_PROBE_SIZE}^3 matmul on this CPU"}}
    if caps.native_bf16_cpu:
        peaks["bf16"] = {"flops_per_s": measured_matmul_peak(torch.bfloat16),
                         "source": f"measured bf16 {MATMUL_PROBE_SIZE}^3 matmul on this CPU"}
    return peaks
