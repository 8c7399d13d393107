"""The closing lines of a run on the terminal: where it started, where it ended, what was kept."""
from __future__ import annotations

from workbench.report.table import final_position


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
             f"speedup vs baseline: {_ratio(ratio)} ({ratio['verdict']}; "
             f"{'paired, same time window' if ratio.get('paired') else 'the baseline itself' if final is baseline else 'unpaired, indicative'})"]
    lines.append(f"outcome: {outcome(finished)}")
    lines += [f"  {r['stage']:<14} {r['status']:<9} {r['reason']}" for r in finished]
    return "\n".join(lines)


# Undecided is counted apart from rejected: it was not measured as no better, only not decided.
OUTCOME_ORDER = ("kept", "rejected", "undecided", "tradeoff", "failed", "skipped")


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
