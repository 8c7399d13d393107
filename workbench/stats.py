"""Statistics over step times: medians, spread, and bootstrap intervals (numpy only, no torch).

Step times come as one list per repeat. Intervals come from a two-level bootstrap (repeats, then the
steps inside each), so the spread between repeats, usually the larger noise on a shared machine,
widens the interval as it should.
"""
from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


def spread(step_times: list[list[float]]) -> dict:
    """Median, quartiles, IQR and mean of all timed steps (seconds)."""
    flat = np.concatenate([np.asarray(r, dtype=float) for r in step_times])
    q1, median, q3 = np.percentile(flat, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "mean": float(flat.mean()), "n": int(flat.size)}


def _bootstrap_total_time(step_times: list[list[float]], rng: np.random.Generator) -> np.ndarray:
    """Mean step time of each bootstrap resample (repeats resampled, then steps within them)."""
    repeats = [np.asarray(r, dtype=float) for r in step_times]
    picks = rng.integers(0, len(repeats), size=(BOOTSTRAP_SAMPLES, len(repeats)))
    means = np.stack([r[rng.integers(0, r.size, size=(BOOTSTRAP_SAMPLES, r.size))].mean(axis=1) for r in repeats])
    return np.take_along_axis(means.T, picks, axis=1).mean(axis=1)


def throughput(step_times: list[list[float]], samples_per_step: int, seed: int = 0) -> dict:
    """Median over repeats of samples / summed step time, with a 95% bootstrap interval."""
    rng = np.random.default_rng(seed)
    median = float(np.median(repeat_throughputs(step_times, samples_per_step)))
    boot = samples_per_step / _bootstrap_total_time(step_times, rng)
    low, high = np.percentile(boot, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return {"median": median, "ci95_low": float(low), "ci95_high": float(high)}


def repeat_throughputs(step_times: list[list[float]], samples_per_step: int) -> list[float]:
    return [samples_per_step * len(r) / float(np.sum(r)) for r in step_times]


def speedup(new_times: list[list[float]], new_samples: int, old_times: list[list[float]],
            old_samples: int, seed: int = 0) -> dict:
    """Throughput ratio new/old with a 95% interval; the verdict says whether it holds 1."""
    rng = np.random.default_rng(seed)
    new_boot = new_samples / _bootstrap_total_time(new_times, rng)
    old_boot = old_samples / _bootstrap_total_time(old_times, rng)
    ratios = new_boot / old_boot
    point = (new_samples / np.mean(np.concatenate(new_times))) / (old_samples / np.mean(np.concatenate(old_times)))
    low, high = np.percentile(ratios, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return {"ratio": float(point), "ci95_low": float(low), "ci95_high": float(high),
            "verdict": verdict(float(low), float(high))}


def verdict(low: float, high: float) -> str:
    if low > 1.0:
        return "faster"
    if high < 1.0:
        return "slower"
    return "no significant change"
