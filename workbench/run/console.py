"""What the run says on the console: a finished stage in one line, a ratio with its interval."""
from __future__ import annotations

import math

from workbench import stats


def fmt(ratio: dict) -> str:
    high = ratio["ci95_high"]
    return f"{ratio['ratio']:.2f}x [{ratio['ci95_low']:.2f}, {high:.2f}]" if math.isfinite(high) else f"{ratio['ratio']:.2f}x"


def one_line(result: dict) -> str:
    """The console line for a finished stage."""
    metrics = result.get("metrics")
    if not metrics or not metrics.get("throughput"):
        return f"-- {result['stage']}: {result['status']}: {result['reason']}"
    tp = metrics["throughput"]
    mfu = f", MFU {metrics['mfu']:.1%}" if metrics.get("mfu") else ""
    return (f"-- {result['stage']}: {result['status']}: {tp['median']:.1f} samples/s "
            f"[{tp['ci95_low']:.1f}, {tp['ci95_high']:.1f}]{tokens(metrics)}, step {metrics['step_time_s']['median'] * 1000:.1f} ms, "
            f"peak {metrics['peak_memory_mb']:.0f} MiB{mfu}, loss {metrics['final_loss']:.3f}{_accuracy(metrics)}; "
            f"{result['reason']}")


def tokens(metrics: dict) -> str:
    """", N tokens/s [low, high]" for a language model's throughput; nothing for images."""
    per_sample = metrics.get("tokens_per_sample")
    if not per_sample:
        return ""
    rate = stats.scaled_rate(metrics["throughput"], per_sample)
    return f" = {rate['median']:,.0f} tokens/s [{rate['ci95_low']:,.0f}, {rate['ci95_high']:,.0f}]"


def _accuracy(metrics: dict) -> str:
    value = metrics.get("eval_accuracy")
    return f", held-out accuracy {value:.1%}" if value is not None else ""
