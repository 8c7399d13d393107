"""What this process's host CPU did over a window of training steps: page faults and the kernel's
share of the CPU time (getrusage). A window that spends a visible share in the kernel is faulting
freed memory back in every step (workbench/training/host_memory.py keeps it; the `page_faults`
finding in workbench/trace/diagnose.py reads these figures). No torch: the trace package uses it too.
"""
from __future__ import annotations

import resource

Counters = tuple[int, float, float]  # minor page faults, user CPU seconds, system CPU seconds


def process_counters() -> Counters:
    """This process's counters so far (every thread; child processes such as DataLoader workers not)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt, usage.ru_utime, usage.ru_stime


def since(start: Counters) -> Counters:
    """The counters' growth since start."""
    return tuple(now - then for now, then in zip(process_counters(), start))


def per_step(counters: Counters, steps: int, counted: str) -> dict:
    """The window's figures per step, and what they counted."""
    faults, user_s, system_s = counters
    steps = max(1, steps)
    busy = user_s + system_s
    return {"minor_faults_per_step": faults / steps, "cpu_s_per_step": busy / steps,
            "system_time_share": system_s / busy if busy else 0.0, "steps": steps, "counted": counted}
