"""The batch_size stage's search: the largest batch that fits, measured, as Lightning's BatchSizeFinder
searches (doubling from the configured size until a size does not fit), with this tool's
measurements: each size runs briefly in its own process, and its peak memory decides whether it fits
as much as an out-of-memory error does (a size that fills the device to the brim fails later, in the
first step that allocates a little more).

The search stops at the first size that does not fit, at MOST_FACTOR times the configured batch, or
when doubling no longer pays (PLATEAU_PATIENCE doublings in a row under PLATEAU_GAIN more samples/s
than the best so far: more memory for nothing; one brief process can dip by 20% on a shared machine,
so one dip does not end it). The size chosen is the smallest within PLATEAU_GAIN of the fastest (the
knee: larger sizes there buy memory, not speed, and the fastest of noisy brief figures moved between
64 and 512 from run to run); the ladder then measures it against the configuration it would join in
paired rounds, like any stage. The learning rate is scaled linearly with the batch (the
rule of Goyal et al. 2017 for SGD; for Adam a square-root rule is also used): the rule it assumes is
said in the result, and the held-out accuracy stands beside the speed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

from workbench.config import RunConfig
from workbench.errors import StageSkipped
from workbench.run import rounds
from workbench.run.session import available_memory_mb

MOST_FACTOR = 16        # 32 -> 512: past this a 224 px ResNet-18 step is no longer launch- or loader-bound
PLATEAU_GAIN = 0.05     # doubling the batch for under 5% more samples/s buys memory, not speed
PLATEAU_PATIENCE = 2    # doublings in a row that do not pay before the search stops
MEMORY_SHARE = 0.90     # a size whose peak passes this share of the memory there is does not fit
PROBE_WARMUP, PROBE_STEPS = 1, 4
LR_RULE = "linear"


@dataclass(frozen=True)
class Probe:
    """One size, measured briefly in its own process."""

    batch: int
    fits: bool
    samples_per_s: float | None = None
    peak_memory_mb: float | None = None
    why: str = ""


def scaled_lr(cfg: RunConfig, batch: int) -> float:
    """The learning rate for `batch` under the linear scaling rule."""
    return cfg.lr * batch / cfg.batch_size


def candidates(start: int, most_factor: int = MOST_FACTOR) -> list[int]:
    """The sizes tried: doubling from twice the configured batch up to most_factor times it."""
    sizes, size = [], start * 2
    while size <= start * most_factor:
        sizes.append(size)
        size *= 2
    return sizes


def search(start: int, probe: Callable[[int], Probe], most_factor: int = MOST_FACTOR, log=print) -> list[Probe]:
    """Probe the configured size (the same brief measurement, for a fair comparison), then doubling
    sizes until one does not fit, doubling stops paying, or the cap."""
    probes = [probe(start)]
    log(f"   batch {start} (configured): {probes[0].why}")
    unpaid = 0  # doublings in a row that did not pay
    for size in candidates(start, most_factor):
        best_rate = max((p.samples_per_s or 0.0) for p in probes if p.fits) if any(p.fits for p in probes) else None
        found = probe(size)
        probes.append(found)
        log(f"   batch {size}: {found.why}")
        if not found.fits:
            break
        paid = not best_rate or found.samples_per_s is None or found.samples_per_s >= best_rate * (1 + PLATEAU_GAIN)
        unpaid = 0 if paid else unpaid + 1
        if unpaid >= PLATEAU_PATIENCE:
            break
    return probes


def chosen(probes: list[Probe]) -> Probe | None:
    """The smallest size that fits within PLATEAU_GAIN of the fastest one (the knee of the curve)."""
    fitting = [p for p in probes if p.fits and p.samples_per_s]
    if not fitting:
        return None
    fastest = max(p.samples_per_s for p in fitting)
    return min((p for p in fitting if p.samples_per_s >= fastest / (1 + PLATEAU_GAIN)), key=lambda p: p.batch)


ALONE = "one brief process"
# A probe in the caller's process (a model or dataset from Python): its resident-memory peak is the process's
# whole history, not the probe's, so on a CPU it is not read at all.
SHARED = "in your Python process: its peak is not the probe's alone, so it is not read on a CPU"


def verdict_of_fit(batch: int, failure: str | None, peak_mb: float | None, room_mb: float | None,
                   samples_per_s: float | None, where: str = ALONE) -> Probe:
    """A probe's reading: out of memory (or any failure) does not fit; nor does a peak over
    MEMORY_SHARE of the room there is."""
    if failure is not None:
        return Probe(batch, False, why=f"does not fit ({failure})")
    if room_mb and peak_mb is not None and peak_mb > MEMORY_SHARE * room_mb:
        return Probe(batch, False, samples_per_s, peak_mb,
                     f"does not fit: peak {peak_mb:.0f} MiB is over {MEMORY_SHARE:.0%} of {room_mb:.0f} MiB")
    rate = f"{samples_per_s:.1f} samples/s" if samples_per_s else "no throughput"
    peak = f", peak {peak_mb:.0f} MiB" if peak_mb is not None else ""
    return Probe(batch, True, samples_per_s, peak_mb, f"fits: {rate}{peak} ({where})")


def probe_config(cfg: RunConfig, batch: int) -> RunConfig:
    """A brief measurement of `batch`: one process, a warm-up step and two timed ones, no trace."""
    # The configuration's own warm-up (at least PROBE_WARMUP): under CUDA graphs the first calls record.
    return cfg.with_overrides(batch_size=batch, micro_batch_size=0, lr=scaled_lr(cfg, batch), rounds=1, repeats=1,
                              warmup_steps=max(PROBE_WARMUP, cfg.warmup_steps), timed_steps=PROBE_STEPS, trace=False)


def searched(cfg: RunConfig, probes: list[Probe]) -> tuple[RunConfig, dict]:
    """The configuration to measure (the chosen size, its scaled learning rate) and the search's record."""
    best = chosen(probes)
    record = {"start": cfg.batch_size, "lr_rule": LR_RULE, "probes": [asdict(p) for p in probes],
              "chosen": best.batch if best else None}
    if best is None or best.batch == cfg.batch_size:
        tried = ", ".join(f"{p.batch} ({p.why})" for p in probes) or "none"
        raise StageSkipped(f"no larger batch than {cfg.batch_size} fits and pays (tried: {tried})")
    return cfg.with_overrides(batch_size=best.batch, micro_batch_size=0, lr=scaled_lr(cfg, best.batch)), record


def lr_text(before: RunConfig, after: RunConfig) -> str:
    factor = after.batch_size / before.batch_size
    return (f"batch {before.batch_size} -> {after.batch_size}, learning rate {before.lr:g} -> {after.lr:g} "
            f"({LR_RULE} scaling, x{factor:g}; Adam often wants x{math.sqrt(factor):.2g}: check it over a full run)")


def measure_probe(session, cfg: RunConfig, batch: int, room_mb: float | None) -> Probe:
    """One size measured briefly alone in its own process (the session's launcher), read as a Probe."""
    report = rounds.measure_alone(session, rounds.Side(probe_config(cfg, batch), f"batch {batch}"))
    if not report.measured:
        return verdict_of_fit(batch, (report.error or report.status).splitlines()[0][:160], None, room_mb, None)
    shared = not session.isolate
    readable = not (shared and session.context.device_type == "cpu")
    return verdict_of_fit(batch, None, report.metrics.get("peak_memory_mb") if readable else None, room_mb,
                          rounds.round_throughput(report), SHARED if shared else ALONE)


def run_search(session, cfg: RunConfig) -> tuple[RunConfig, dict]:
    """The whole search for the configuration cfg: the sizes probed, the one chosen and its record."""
    room = session.environment.get("device_memory_mb") if session.context.device_type == "cuda" else available_memory_mb()
    budget_mib = getattr(session, "memory_budget_mib", None)
    if budget_mib:  # under a memory budget a size fits only within it: the room whose share is the budget
        room = min(room or math.inf, budget_mib / MEMORY_SHARE)
    session.log(f"== batch_size: searching the largest batch that fits, from {cfg.batch_size} up to "
                f"{cfg.batch_size * MOST_FACTOR} (doubling; each size " + ("one brief process)" if session.isolate
                                                                           else "measured briefly in your process)"))
    probes = search(cfg.batch_size, lambda batch: measure_probe(session, cfg, batch, room), log=session.log)
    return searched(cfg, probes)
