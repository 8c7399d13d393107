"""What a result was measured on: software versions, device, CPU flags, git revision."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from workbench.device import DeviceFacts, cpu_generation

# The CPU flags that decide what a CPU can do fast; the full list is long and says little.
INTERESTING_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "fma")


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe(facts: DeviceFacts, threads: int) -> dict:
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device_type": facts.type, "device_name": facts.name, "device_count": facts.device_count,
            "cuda_capability": ".".join(map(str, facts.capability)) if facts.capability else None,
            "device_memory_mb": facts.memory_mb, "cpu_cores": facts.cpu_cores, "threads": threads,
            "cpu_flags": [f for f in INTERESTING_CPU_FLAGS if f in facts.cpu_flags],
            "cpu_generation": cpu_generation(),
            "git_revision": git_revision(),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
