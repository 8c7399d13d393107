"""One table row per configuration, built from its measured rounds (numpy only, no torch).

A configuration may be measured in several rounds (fresh processes, interleaved with the other
configurations so slow drift on a shared machine hits them all alike). Each round's step times are
kept as separate repeats, so the bootstrap intervals of workbench.stats see the spread between
rounds as they see the spread between repeats.
"""
from __future__ import annotations

import numpy as np

from workbench import stats

REFERENCE_VERDICT = "reference"


def merged_times(raws: list[dict]) -> list[list[float]]:
    """Every repeat of every successful round, in measurement order."""
    return [repeat for raw in raws for repeat in raw["metrics"]["step_times_s"]]


def _ok(raws: list[dict]) -> list[dict]:
    return [raw for raw in raws if raw.get("status") == "measured" and raw.get("metrics")]


def _status(variant_skip: str, raws: list[dict]) -> tuple[str, str]:
    if variant_skip:
        return "skipped", variant_skip
    errors = [raw.get("error") or raw.get("status") for raw in raws if raw.get("status") != "measured"]
    if errors:
        return "failed", "; ".join(str(e) for e in errors)
    return ("ok", "") if raws else ("pending", "not measured yet")


def timing_fields(good: list[dict]) -> dict:
    """Throughput (median, 95% CI), step time (median, IQR) and epoch estimate of the merged rounds."""
    times, first = merged_times(good), good[0]["metrics"]
    samples = first["samples_per_step"]
    throughput = stats.throughput(times, samples, seed=0)
    dataset_size = first["epoch_time_s"] * first["throughput"]["median"]
    return {"samples_per_step": samples, "throughput": throughput, "step_time_s": stats.spread(times),
            "repeat_throughputs": stats.repeat_throughputs(times, samples),
            "epoch_time_s": dataset_size / throughput["median"], "rounds": len(good)}


def other_fields(good: list[dict]) -> dict:
    """Memory (worst round), warm-up (first round: the cold one) and the last round's loss."""
    metrics = [raw["metrics"] for raw in good]
    worst = max(metrics, key=lambda m: m["peak_memory_mb"])
    return {"peak_memory_mb": worst["peak_memory_mb"], "peak_memory_kind": worst["peak_memory_kind"],
            "memory_breakdown_mb": worst.get("memory_breakdown_mb"),
            "warmup_s": metrics[0]["warmup_s"], "warmup_s_per_round": [m["warmup_s"] for m in metrics],
            "final_loss": metrics[-1]["final_loss"], "loss_finite": all(m.get("loss_finite", True) for m in metrics),
            "mfu": metrics[-1].get("mfu"), "eval_accuracy": metrics[-1].get("eval_accuracy")}


def round_rates(good: list[dict]) -> list[float]:
    """Throughput of each round (one fresh process each): all its timed steps."""
    return [stats.repeat_throughputs([[t for r in raw["metrics"]["step_times_s"] for t in r]],
                                     raw["metrics"]["samples_per_step"])[0] for raw in good]


def speedup_against(good: list[dict], reference: list[dict] | None, is_reference: bool) -> dict | None:
    """Throughput ratio against the experiment's reference configuration, with its interval.

    Rounds interleave every configuration, so round k of a configuration and round k of the reference
    ran side by side in time: with two or more rounds each, the interval is the ladder's paired
    t-interval over rounds and the verdict its rule (inconclusive when too wide to tell)."""
    if is_reference:
        return {"ratio": 1.0, "ci95_low": 1.0, "ci95_high": 1.0, "verdict": REFERENCE_VERDICT}
    if not good or not reference:
        return None
    if min(len(good), len(reference)) >= 2:
        count = min(len(good), len(reference))
        ratio = stats.paired_ratio(round_rates(reference)[:count], round_rates(good)[:count])
        return {**ratio, "verdict": stats.judged_verdict(ratio, 0.0)}
    samples, ref_samples = good[0]["metrics"]["samples_per_step"], reference[0]["metrics"]["samples_per_step"]
    ratio = stats.speedup(merged_times(good), samples, merged_times(reference), ref_samples, seed=0)
    return {**ratio, "verdict": stats.judged_verdict(ratio, 0.0)}


def too_wide(row: dict, key: str) -> bool:
    """A figure whose interval cannot tell anything (the rule of stats.judged_verdict)."""
    figure = row.get(key) or {}
    if figure.get("verdict") == "inconclusive":
        return True
    low, high = figure.get("ci95_low"), figure.get("ci95_high")
    return bool(low is not None and high is not None and figure.get("median") and
                stats.half_width({"ci95_low": low, "ci95_high": high}) > stats.INCONCLUSIVE_HALF_WIDTH)


def build_row(label: str, overrides: dict, skip: str, raws: list[dict], reference: list[dict] | None,
              is_reference: bool, extra: dict | None = None) -> dict:
    """The row of one configuration: every field is present; unmeasured figures are None."""
    status, reason = _status(skip, raws)
    good = _ok(raws)
    row = {"label": label, "overrides": overrides, "status": status, "reason": reason,
           "throughput": None, "step_time_s": None, "epoch_time_s": None, "peak_memory_mb": None,
           "peak_memory_kind": None, "memory_breakdown_mb": None, "final_loss": None, "eval_accuracy": None, "warmup_s": None, "rounds": 0,
           "speedup": speedup_against(good, _ok(reference or []), is_reference) if good else None,
           "extra": extra or {}}
    if good:
        row.update(timing_fields(good))
        row.update(other_fields(good))
    return row


def value(row: dict, *path: str):
    """A nested figure of a row, or None where the row has none (failed, skipped)."""
    node = row
    for key in path:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return node


def interval(row: dict, key: str) -> tuple[float, float] | None:
    low, high = value(row, key, "ci95_low"), value(row, key, "ci95_high")
    return None if low is None or high is None else (low, high)


def series_stats(values: list[float]) -> dict:
    """Mean, median and max of a per-step series (e.g. gradient norms)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return {"mean": None, "median": None, "max": None, "n": 0}
    return {"mean": float(array.mean()), "median": float(np.median(array)), "max": float(array.max()),
            "n": int(array.size)}
