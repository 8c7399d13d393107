"""Choosing DataLoader workers by measurement: how fast can each setting deliver batches?

The sweep covers the machine: powers of two up to the usable cores, and the core count itself (a
16-core GPU host needs 16 workers to feed a bf16 step at 224 px). Workers hand batches over through
/dev/shm, which a container often caps at 64 MB while 224 px batches in flight need hundreds: when it
is too small, workers share through the file system instead (said once), and a worker count that
still crashes is recorded in the sweep rather than ending the run.
"""
from __future__ import annotations

import math
import shutil
import time

from workbench.training.data import build_loader

SWEEP_BATCHES = 15
SHM_PATH = "/dev/shm"
# Batches each worker keeps in flight (prefetch_factor 2) plus the one being collated and the one
# being handed over.
BATCHES_IN_FLIGHT_PER_WORKER = 4


def candidates(cores: int) -> list[int]:
    """0, then powers of two up to the usable cores, then the core count itself."""
    powers = {2 ** k for k in range(int(math.log2(max(cores, 1))) + 1)}
    return sorted({0, cores, *powers})


def shm_needed_mb(batch_bytes: int, workers: int) -> float:
    return workers * BATCHES_IN_FLIGHT_PER_WORKER * batch_bytes / 2**20


def shm_free_mb(path: str = SHM_PATH) -> float | None:
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return None


def check_shared_memory(batch_bytes: int, workers: int, log=print, free_mb: float | None = None) -> str | None:
    """Switch worker hand-over to the file system when /dev/shm cannot hold the batches in flight;
    return the sentence that says so (None when /dev/shm is large enough or absent)."""
    free = shm_free_mb() if free_mb is None else free_mb
    needed = shm_needed_mb(batch_bytes, workers)
    if free is None or workers == 0 or needed <= free:
        return None
    import torch.multiprocessing

    torch.multiprocessing.set_sharing_strategy("file_system")
    note = (f"/dev/shm has {free:.0f} MB free, {workers} workers need ~{needed:.0f} MB for batches in flight: "
            "workers share batches through the file system instead (enlarge /dev/shm, e.g. docker --shm-size, "
            "to use shared memory)")
    log(note)
    return note


def loader_seconds_per_batch(dataset, batch_size: int, workers: int, seed: int, batches: int = SWEEP_BATCHES) -> float:
    """Steady-state seconds per batch of the input pipeline alone (worker start-up excluded)."""
    loader = build_loader(dataset, batch_size, workers, False, False, 2, seed)
    iterator = iter(loader)
    next(iterator)  # start-up: forking workers, first fill of the queue
    start = time.perf_counter()
    count = 0
    for count, _ in zip(range(1, batches + 1), iterator):
        pass
    elapsed = time.perf_counter() - start
    del iterator
    return elapsed / max(count, 1)


def sweep(dataset, batch_size: int, cores: int, seed: int, log=print) -> tuple[dict[int, float], dict[int, str]]:
    """Seconds per batch for each candidate worker count, and the error of each that crashed."""
    timings, errors = {}, {}
    for workers in candidates(cores):
        try:
            timings[workers] = loader_seconds_per_batch(dataset, batch_size, workers, seed)
        except Exception as error:  # a bus error in a worker (/dev/shm), a fork failure: record, go on
            errors[workers] = f"{type(error).__name__}: {str(error).strip()[:200]}"
            log(f"[dataloader sweep] num_workers={workers}: failed ({errors[workers]})")
            continue
        log(f"[dataloader sweep] num_workers={workers}: {timings[workers] * 1000:.1f} ms per batch")
    return timings, errors


def best(timings: dict[int, float], tolerance: float = 0.05) -> int:
    """The fewest workers within `tolerance` of the fastest: extra workers cost cores and memory."""
    if not timings:
        return 0
    fastest = min(timings.values())
    return min(w for w, t in timings.items() if t <= fastest * (1 + tolerance))
