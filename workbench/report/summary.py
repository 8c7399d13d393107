"""The closing lines of a run on the terminal: where it started, where it ended, what was kept."""
from __future__ import annotations


def _final_kept(finished: list[dict]) -> dict | None:
    """The headline's final configuration (measured against the baseline, paired); without one, the
    best stage of an ablation, or the baseline when nothing was kept."""
    final = next((r for r in finished if r["status"] == "final" and r.get("metrics")), None)
    if final:
        return final
    kept = [r for r in finished if r["status"] == "kept" and r.get("metrics")]
    if kept:
        return max(kept, key=lambda r: r["metrics"]["speedup_vs_baseline"]["ratio"])
    return next((r for r in finished if r["status"] == "baseline"), None)


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
             f"speedup vs baseline: {_ratio(ratio)} ({ratio['verdict']}; "
             f"{'paired, same time window' if ratio.get('paired') else 'the baseline itself' if final is baseline else 'unpaired, indicative'})"]
    lines += [f"  {r['stage']:<14} {r['status']:<9} {r['reason']}" for r in finished]
    return "\n".join(lines)


def _ratio(ratio: dict) -> str:
    high = ratio["ci95_high"]
    return f"{ratio['ratio']:.2f}x [{ratio['ci95_low']:.2f}, {high:.2f}]" if high != float("inf") else f"{ratio['ratio']:.2f}x"


def _rate(throughput: dict) -> str:
    """A throughput with its 95% interval: a figure without its spread says too little."""
    return (f"{throughput['median']:.1f} samples/s "
            f"[{throughput['ci95_low']:.1f}, {throughput['ci95_high']:.1f}]")


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value else "n/a"
