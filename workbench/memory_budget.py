"""The memory budget: `--memory-budget SIZE` read, checked and resolved to MiB.

A size with a unit (512MiB, 12GiB, 1.5GB) or a share of the device ("80%": of the GPU's memory on
CUDA, of the host's on a CPU). The syntax is checked when the configuration is built (a bad budget is
one line and exit 2 before anything is written); a share is resolved once the device is known.
Torch-free: the report and the run both read it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from workbench.errors import UsageError

# Binary and decimal units, as people write them; the figure is kept in MiB like every peak we report.
UNITS_MIB = {"b": 1 / 2**20, "kib": 1 / 1024, "mib": 1.0, "gib": 1024.0, "tib": 1024.0**2,
             "kb": 1e3 / 2**20, "mb": 1e6 / 2**20, "gb": 1e9 / 2**20, "tb": 1e12 / 2**20}
ALLOWED = "a size with a unit (512MiB, 12GiB, 1.5GB) or a share of the device's memory (80%)"
_PATTERN = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[a-zA-Z%]*)\s*$")


@dataclass(frozen=True)
class Budget:
    """A parsed budget: an absolute size in MiB, or a share (0..1] of the device's memory."""

    text: str
    mib: float | None = None
    share: float | None = None

    def resolve(self, device_total_mib: float | None) -> float:
        """The budget in MiB on a device with this much memory."""
        if self.mib is not None:
            return self.mib
        if not device_total_mib:
            raise UsageError(f"memory_budget={self.text!r} is a share of the device's memory, which is unknown "
                             f"here; allowed: an absolute size such as 512MiB")
        return self.share * device_total_mib


def parse(text: str) -> Budget | None:
    """The budget a `--memory-budget` value asks for; None for an empty value (no budget)."""
    if not text or not text.strip():
        return None
    match = _PATTERN.match(text)
    if not match:
        raise UsageError(f"memory_budget={text!r} is not a size; allowed: {ALLOWED}")
    number, unit = float(match["number"]), match["unit"].lower()
    if unit == "%":
        if not 0 < number <= 100:
            raise UsageError(f"memory_budget={text!r} is out of range; a share must be above 0% and at most 100%")
        return Budget(text.strip(), share=number / 100)
    if unit not in UNITS_MIB:
        raise UsageError(f"memory_budget={text!r} has no unit I know ({unit or 'none'}); allowed: {ALLOWED}")
    mib = number * UNITS_MIB[unit]
    if mib < 1:
        raise UsageError(f"memory_budget={text!r} is under 1 MiB; no training step fits in that; allowed: {ALLOWED}")
    return Budget(text.strip(), mib=mib)


def fits(peak_mib: float | None, budget_mib: float) -> bool:
    return peak_mib is not None and peak_mib <= budget_mib
