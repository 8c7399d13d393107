"""The closing lines of a run on the terminal: where it started, where it ended, what was kept."""
from __future__ import annotations

from workbench.report.table import baseline_figure_source, final_position


def _final_kept(finished: list[dict]) -> dict | None:
    """The optimized configuration, by the report's own rule (ladder or ablation alike)."""
    mode = finished[0].get("mode", "ladder") if finished else "ladder"
    position = final_position(finished, mode)
    return None if position is None else finished[position]


def final_summary(finished: list[dict]) -> str:
    baseline = next((r for r in finished if r["status"] == "baseline"), None)
    final = _final_kept(finished)
    if baseline is None or final is None:
        return "no baseline was measured: nothing to summarize"
    b, f = baseline["metrics"], final["metrics"]
    ratio = f["speedup_vs_baseline"]
    lines = [f"baseline: {_rate(b['throughput'])}, MFU {_pct(b.get('mfu'))}",
             f"final kept configuration ({' + '.join(final['applied']) or 'baseline'}): "
             f"{_rate(f['throughput'])}, MFU {_pct(f.get('mfu'))} "
             f"({f.get('peak_flops_source', '')})",
             f"speedup vs baseline: {_ratio(ratio)} ({ratio['verdict']}; {_how(final, baseline)})"]
    ceiling = ceiling_text(finished, final)
    if ceiling:
        lines.append(f"ceiling: {ceiling}")
    lines.append(f"outcome: {outcome(finished)}")
    lines += [f"  {r['stage']:<14} {r['status']:<9} {r['reason']}" for r in finished]
    return "\n".join(lines)


def _how(final: dict, baseline: dict) -> str:
    """Which kind of figure the speedup is, in the words of the CSV's speedup_vs_baseline_from."""
    if final is baseline:
        return "the baseline itself"
    source = baseline_figure_source(final)
    if final.get("stage") == "final":
        return "paired, same time window"
    return {"paired": "paired with the baseline", "unpaired": "unpaired, indicative"}.get(source, source or "unpaired")


# Undecided is counted apart from rejected: it was not measured as no better, only not decided.
# Dropped: kept in the pass, then measured by leave-one-out as no longer paying in the final mix.
OUTCOME_ORDER = ("kept", "dropped", "rejected", "undecided", "tradeoff", "failed", "skipped")


def outcome(finished: list[dict]) -> str:
    counts = [(status, sum(r["status"] == status for r in finished)) for status in OUTCOME_ORDER]
    return ", ".join(f"{n} {status}" for status, n in counts if n) or "no stage beyond the baseline"


def _ratio(ratio: dict) -> str:
    high = ratio["ci95_high"]
    return f"{ratio['ratio']:.2f}x [{ratio['ci95_low']:.2f}, {high:.2f}]" if high != float("inf") else f"{ratio['ratio']:.2f}x"


def _rate(throughput: dict) -> str:
    """A throughput with its 95% interval: a figure without its spread says too little."""
    return (f"{throughput['median']:.1f} samples/s "
            f"[{throughput['ci95_low']:.1f}, {throughput['ci95_high']:.1f}]")


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value else "n/a"


def _compute_only_mfu(metrics: dict) -> float | None:
    """The share of the peak the model reaches on device-resident data: the delivered MFU scaled by
    compute-only throughput over delivered (same FLOPs per sample, same peak)."""
    delivered = (metrics.get("throughput") or {}).get("median")
    ceiling = ((metrics.get("compute_only") or {}).get("throughput") or {}).get("median")
    if not (metrics.get("mfu") and delivered and ceiling):
        return None
    return metrics["mfu"] * ceiling / delivered


def _best_ceiling(results: list[dict]) -> dict | None:
    """The configuration whose device-resident throughput is highest (the best batch measured)."""
    found = [r for r in results if r.get("status") not in ("failed", "skipped", "cancelled")
             and _compute_only_mfu(r.get("metrics") or {}) is not None]
    return max(found, key=lambda r: r["metrics"]["compute_only"]["throughput"]["median"], default=None)


def ceiling_text(results: list[dict], final: dict) -> str | None:
    """How far the final configuration is from the hardware: what it delivers as a share of the
    device's peak (MFU), beside what the same model does on device-resident data (no loading, copy or
    augmentation) at the best batch measured. None when the figures are not there."""
    metrics, best = final.get("metrics") or {}, _best_ceiling(results)
    if not metrics.get("mfu") or best is None:
        return None
    top = best["metrics"]
    batch = (best.get("config") or {}).get("batch_size")
    searched = any(r.get("stage") == "batch_size" and r.get("status") not in ("skipped", "failed") for r in results)
    hint = "" if searched else " (--allow-batch-change searches larger batches)"
    ceiling_mfu = _compute_only_mfu(top)
    # A ceiling measured in another precision is a share of that precision's peak (bf16's is several
    # times fp32's): said so, or a higher throughput would read as a smaller share of the same peak.
    own_peak = top.get("peak_flops_source")
    of = "it" if own_peak == metrics.get("peak_flops_source") else f"its own peak ({own_peak or 'peak unknown'})"
    share = (f"{ceiling_mfu:.1%} of {of}: the rest is the model's own step (kernel efficiency, launches, memory "
             "traffic)" if ceiling_mfu <= 1 else "over the measured peak, which understates this device")
    spread = _intervals(metrics["throughput"], top["compute_only"]["throughput"])
    return (f"the final configuration delivers {metrics['throughput']['median']:.1f} samples/s, "
            f"{metrics['mfu']:.1%} of the peak ({metrics.get('peak_flops_source') or 'peak unknown'}); "
            f"on device-resident data the model does {top['compute_only']['throughput']['median']:.1f} samples/s "
            f"at batch {batch} ({best['stage']}){hint}, {share}{spread}")


def _intervals(delivered: dict, resident: dict) -> str:
    """Both figures' 95% intervals, where they have them: a throughput without its spread says too little."""
    shown = [f"{label} [{t['ci95_low']:.1f}, {t['ci95_high']:.1f}]" for label, t in
             (("delivered", delivered), ("device-resident", resident)) if "ci95_low" in t and "ci95_high" in t]
    return f" (95% intervals: {'; '.join(shown)})" if shown else ""
