"""Choosing DataLoader workers by measurement: how fast can each setting deliver batches?"""
from __future__ import annotations

import time

from workbench.data import build_loader

CANDIDATE_WORKERS = (0, 1, 2, 4, 8)
SWEEP_BATCHES = 15


def candidates(cores: int) -> list[int]:
    """Worker counts worth trying, clamped to the usable cores (more only oversubscribe them)."""
    return sorted({w for w in CANDIDATE_WORKERS if w <= cores})


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


def sweep(dataset, batch_size: int, cores: int, seed: int, log=print) -> dict[int, float]:
    """Seconds per batch for each candidate worker count."""
    timings = {}
    for workers in candidates(cores):
        timings[workers] = loader_seconds_per_batch(dataset, batch_size, workers, seed)
        log(f"[dataloader sweep] num_workers={workers}: {timings[workers] * 1000:.1f} ms per batch")
    return timings


def best(timings: dict[int, float], tolerance: float = 0.05) -> int:
    """The fewest workers within `tolerance` of the fastest: extra workers cost cores and memory."""
    fastest = min(timings.values())
    return min(w for w, t in timings.items() if t <= fastest * (1 + tolerance))
