"""Measuring a training loop honestly: synchronized clocks, peak memory and FLOPs."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import psutil
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

RSS_SAMPLE_INTERVAL_S = 0.005


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class StepClock:
    """Step boundaries: CUDA events on the GPU's stream (no per-step sync), perf_counter elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.marks = device, []

    def mark(self) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            synchronize(self.device)
            self.marks.append(time.perf_counter())

    def step_times(self) -> list[float]:
        """Seconds between consecutive marks (synchronizes once, at the end)."""
        synchronize(self.device)
        if self.device.type == "cuda":
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class RssSampler:
    """Peak resident memory of this process, sampled on a thread (CPU has no allocator counter)."""

    def __init__(self) -> None:
        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(RSS_SAMPLE_INTERVAL_S)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


class HostPeak:
    """Peak resident memory of this process over a `with` block.

    On Linux the kernel keeps the peak (VmHWM) and lets us reset it (/proc/self/clear_refs), so
    nothing runs beside the timed steps; elsewhere a sampling thread stands in.
    """

    def __init__(self) -> None:
        self.peak_mb, self._sampler = 0.0, None

    def __enter__(self) -> "HostPeak":
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        except OSError:
            self._sampler = RssSampler().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._sampler is not None:
            self._sampler.__exit__(*exc)
            self.peak_mb = self._sampler.peak / 2**20
            return
        status = Path("/proc/self/status").read_text()
        self.peak_mb = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def release_cuda_cache(device: torch.device) -> None:
    """Hand cached blocks back, so the reserved peak that follows is this configuration's own.
    Run an untimed step after it: the first step after a release re-grows the pool."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_cuda_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peaks(device: torch.device) -> dict:
    stats = torch.cuda.memory_stats(device)
    return {"allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
            "alloc_retries": int(stats.get("num_alloc_retries", 0)),
            "ooms": int(stats.get("num_ooms", 0))}


def tensor_bytes(tensors) -> int:
    """Bytes this process holds: a sharded tensor (FSDP2's DTensor) counts its local shard only."""
    local = (t.to_local() if hasattr(t, "to_local") else t for t in tensors if isinstance(t, torch.Tensor))
    return sum(t.numel() * t.element_size() for t in local)


def memory_parts_mb(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Weights, gradients and optimizer state measured from the tensors themselves (this process's)."""
    params = list(model.parameters())
    # ZeroRedundancyOptimizer keeps this process's shard of the state in its inner optimizer.
    inner = getattr(optimizer, "optim", optimizer)
    # Only what this process holds where the model is: a host-offloaded state is not the device's memory.
    device = params[0].device if params else None
    state = [v for s in inner.state.values() for v in s.values()
             if not isinstance(v, torch.Tensor) or device is None or v.device == device]
    grads = [p.grad for p in params if p.grad is not None]
    # Gradients are freed by zero_grad(set_to_none=True); during backward they exist at full size.
    grad_bytes = tensor_bytes(grads) or tensor_bytes(p for p in params if p.requires_grad)
    return {"weights": tensor_bytes(params) / 2**20, "gradients": grad_bytes / 2**20,
            "optimizer_state": tensor_bytes(state) / 2**20}


def training_flops(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """FLOPs of one forward+backward pass of the eager model (FlopCounterMode)."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())
