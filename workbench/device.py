"""Which device we run on and what it can do: every capability decision in one place.

Decisions are pure functions of capability facts (CUDA compute capability, CPU flags), so they are
tested on any machine without a GPU; only `probe()` touches the hardware.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

# CPU flags that give native bf16 arithmetic (otherwise bf16 is emulated and very slow).
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Tensor cores arrived with Volta (7.0); bf16 and TF32 with Ampere (8.0).
TENSOR_CORE_MIN_CAPABILITY = (7, 0)
BF16_MIN_CAPABILITY = (8, 0)
TF32_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class DeviceFacts:
    """What the hardware is, as plain data (recorded in every result)."""

    type: str                      # cpu, cuda or mps
    name: str
    cpu_flags: tuple[str, ...] = ()
    cpu_cores: int = 1
    capability: tuple[int, int] | None = None   # CUDA compute capability
    memory_mb: float | None = None
    device_count: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Capabilities:
    """Decisions taken from the facts, each with a reason a person can read."""

    amp_dtype: str | None          # "bf16", "fp16" or None when AMP should not be used
    amp_reason: str
    tensor_cores: bool
    tf32: bool
    pin_memory: bool
    native_bf16_cpu: bool
    notes: dict = field(default_factory=dict)


def cpu_flags() -> tuple[str, ...]:
    """CPU feature flags from /proc/cpuinfo (empty where the file does not exist)."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return ()
    for line in info.read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return tuple(sorted(set(line.split(":", 1)[1].split())))
    return ()


def has_native_bf16(flags: tuple[str, ...]) -> bool:
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def decide(facts: DeviceFacts) -> Capabilities:
    """Capability decisions from facts alone: no device call, so tests can feed any GPU."""
    if facts.type == "cuda":
        return _decide_cuda(facts.capability or (0, 0))
    if facts.type == "mps":
        return Capabilities("fp16", "MPS autocast supports fp16", False, False, False, False)
    native = has_native_bf16(facts.cpu_flags)
    reason = ("CPU has native bf16 (" + ", ".join(f for f in NATIVE_BF16_CPU_FLAGS if f in facts.cpu_flags) + ")"
              if native else "CPU lacks avx512_bf16/amx_bf16: bf16 would be emulated, measured once and not kept")
    return Capabilities("bf16" if native else None, reason, False, False, False, native)


def _decide_cuda(capability: tuple[int, int]) -> Capabilities:
    if capability >= BF16_MIN_CAPABILITY:
        dtype, reason = "bf16", f"compute capability {capability[0]}.{capability[1]} has bf16: no loss scaling needed"
    else:
        dtype, reason = "fp16", f"compute capability {capability[0]}.{capability[1]} lacks bf16: fp16 with GradScaler"
    return Capabilities(dtype, reason, capability >= TENSOR_CORE_MIN_CAPABILITY,
                        capability >= TF32_MIN_CAPABILITY, True, False)


def resolve_device_type(requested: str) -> str:
    """'auto' becomes cuda, then mps, then cpu; an explicit device must exist."""
    import torch

    from workbench.errors import UsageError

    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
    if requested == "auto":
        return next(kind for kind in ("cuda", "mps", "cpu") if available[kind])
    if not available[requested]:
        allowed = ", ".join(kind for kind, ok in available.items() if ok)
        raise UsageError(f"device={requested!r} is not available on this machine; available: {allowed}")
    return requested


def probe(device_type: str) -> DeviceFacts:
    """Read the facts of the device we run on."""
    import torch

    flags, cores = cpu_flags(), usable_cores()
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(0)
        return DeviceFacts("cuda", props.name, flags, cores, (props.major, props.minor),
                           props.total_memory / 2**20, torch.cuda.device_count())
    if device_type == "mps":
        return DeviceFacts("mps", "Apple MPS", flags, cores)
    return DeviceFacts("cpu", platform.processor() or _cpu_model_name() or "cpu", flags, cores)


def _cpu_model_name() -> str:
    return _cpuinfo_fields().get("model name", "")


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where the file does not exist)."""
    info = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in info.read_text().splitlines() if info.exists() else []:
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_generation() -> str | None:
    """Vendor, family, model and stepping: a virtual machine often names its CPU only "AMD EPYC", and
    two such machines can be different generations that trade fp32 against bf16 differently (on a
    Zen 5, family 26, fp32 AVX-512 runs at full width, and bf16 autocast did not pay at 32 px where it
    had in earlier runs on an "AMD EPYC"). Two runs to compare should say whether they ran on the same one."""
    fields = _cpuinfo_fields()
    if "cpu family" not in fields:
        return None
    return (f"{fields.get('vendor_id', 'unknown vendor')} family {fields['cpu family']} model {fields.get('model', '?')} "
            f"stepping {fields.get('stepping', '?')}")


def threads_for(requested: int, cores: int) -> int:
    """Intra-op threads: what the user asked, else every usable core.

    The DataLoader's worker count deliberately plays no part: workers run single-threaded and mostly
    sleep once their prefetch queue is full, so taking cores away from compute for them costs more
    than the brief oversubscription; the dataloader stage measures the net effect either way.
    """
    return requested or cores
