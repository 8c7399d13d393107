"""How the measuring process's C allocator treats freed host memory: glibc's default, or kept.

glibc returns a large freed block to the kernel (it was mmap'd, or it sits at the top of the heap
past the trim threshold), and the next step's allocation of the same size faults every page in
again, zeroed by the kernel. A CPU training step frees and re-allocates its activations and
gradients every step. How much that costs depends on the loop: on a 2-core machine the workbench's
ResNet-18 at 96 px, batch 64, took 36,000-53,000 minor page faults per step and 7.5-9.7% of its CPU
time in the kernel, at 32 px about 700 (12 with fused Adam) and 1% (a bare loop at 32 px took 5,000:
the loader's small allocations can pin the heap's top). Hence the stage's gate on measured figures.
`retain` raises the two thresholds (mallopt, as the GLIBC_TUNABLES
glibc.malloc.mmap_threshold/trim_threshold settings do), so freed blocks stay in the process and
are reused (6 faults per step there); what they hold stays in the process's resident memory.

It is a process setting: set once, before the model is built, in a process of the configuration's
own (measure/entry.py, in the forked or started child); a paired round whose sides differ in it runs
each side alone (rounds.py).
The page faults and kernel time it removes are counted by workbench/host_usage.py.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
RETAIN_MMAP_THRESHOLD = 1 << 30   # blocks up to 1 GiB come from the heap, not a fresh mmap
FALLBACK_MMAP_THRESHOLD = 32 << 20  # the most some glibc versions accept (HEAP_MAX_SIZE / 2)
RETAIN_TRIM_THRESHOLD = (1 << 31) - 1  # never give the top of the heap back (mallopt takes an int)


def unavailable_reason() -> str | None:
    """Why `retain` cannot be set in this process's C library, or None when it can."""
    library, _ = platform.libc_ver()
    if platform.system() != "Linux" or library != "glibc":
        return (f"keeping freed host memory uses glibc's mallopt; this process runs on "
                f"{platform.system()} with {library or 'another C library'}")
    return None


def retain_freed_memory() -> dict:
    """Set `retain` in this process: the thresholds mallopt accepted."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    threshold = RETAIN_MMAP_THRESHOLD
    if libc.mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        threshold = FALLBACK_MMAP_THRESHOLD
        if libc.mallopt(M_MMAP_THRESHOLD, threshold) != 1:
            raise RuntimeError("glibc refused mallopt(M_MMAP_THRESHOLD); host_allocator=retain cannot be set here")
    # Set after the mmap threshold: a trim threshold alone turns off glibc's dynamic mmap threshold,
    # and every large block would be mapped and faulted afresh (ten times the faults of the default).
    if libc.mallopt(M_TRIM_THRESHOLD, RETAIN_TRIM_THRESHOLD) != 1:
        raise RuntimeError("glibc refused mallopt(M_TRIM_THRESHOLD); host_allocator=retain cannot be set here")
    return {"mmap_threshold": threshold, "trim_threshold": RETAIN_TRIM_THRESHOLD}


_IN_EFFECT: dict = {}  # what use() set in this process


def use(host_allocator: str) -> dict:
    """Put this measuring process under the configuration's allocator setting; what was set.
    `system` changes nothing: the process starts (or is forked) with glibc's own behaviour."""
    if host_allocator == "system":
        return {}
    why = unavailable_reason()
    if why:
        raise RuntimeError(why)
    try:
        _IN_EFFECT.update(retain_freed_memory())
    except OSError as error:  # no C library to load
        raise RuntimeError(f"glibc could not be loaded for mallopt: {error}") from None
    return dict(_IN_EFFECT)


def in_effect() -> str | None:
    """The thresholds set in this process, as one line for a measurement's notes (None: glibc's own).
    A glibc that caps the mmap threshold leaves blocks over 32 MiB mapped afresh: this says so."""
    if not _IN_EFFECT:
        return None
    return f"mmap_threshold={_IN_EFFECT['mmap_threshold']} trim_threshold={_IN_EFFECT['trim_threshold']}"
