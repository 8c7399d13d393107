"""Forked from the fork server in tests/run/test_host_allocator.py: sets (or not) the host allocator,
then counts the page faults of re-allocating a 48 MiB block; the exit status carries them."""
from __future__ import annotations

import resource


def faults_per_allocation(allocator: str) -> int:
    import numpy as np

    from workbench.training import host_memory
    host_memory.use(allocator)
    block = np.ones(6 << 20)  # 48 MiB, past glibc's largest dynamic mmap threshold
    del block
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        block = np.ones(6 << 20)
        del block
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) // 5
    return min(250, faults // 2)  # an exit status: 0 when none were faulted in again
