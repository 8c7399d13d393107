"""Two runs side by side: per-stage deltas with intervals, and whether the chosen metric regressed.

Stages are matched by name. Speed (throughput, step time, MFU) is judged with the ladder's own
statistics: each stage's rounds (or, in older results, its repeats) give a throughput per process, and
the ratio B/A gets a Welch t-interval on the log scale. A speed regression is an interval that lies
wholly below 1 - threshold: a slowdown the spread cannot explain and large enough to matter; an
interval that holds 1 is "no significant change", one too wide to tell is "inconclusive". Peak
memory has no spread to speak of and regresses when it grows by more than the threshold. A stage
measured in A that failed in B is a regression too, since its number is gone. Reads only the runs'
result files (no torch), through the same records and rounding as the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench import stats
from workbench.report.table import fmt, load_view


@dataclass(frozen=True)
class Metric:
    column: str       # record/CSV column holding the figure
    unit: str
    kind: str         # formatter kind in report.table.fmt
    higher_is_better: bool


METRICS = {
    "throughput": Metric("throughput_samples_per_s", "samples/s", "rate", True),
    "step_time": Metric("step_time_median_ms", "ms", "ms", False),
    "peak_memory": Metric("peak_memory_mb", "MiB", "mb", False),
    "mfu": Metric("mfu_percent", "%", "pct", True),
}


def compare_runs(run_a_dir: Path, run_b_dir: Path, metric: str = "throughput",
                 threshold: float = 0.05) -> tuple[list[dict], bool]:
    """Rows of per-stage, per-metric deltas (largest relative change first), and regressed?"""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not known; allowed: {', '.join(METRICS)}")
    a_view, b_view = load_view(Path(run_a_dir)), load_view(Path(run_b_dir))
    a_records = {r["stage"]: r for r in a_view.records}
    b_records = {r["stage"]: r for r in b_view.records}
    a_rates, b_rates = _rates_by_stage(a_view.results), _rates_by_stage(b_view.results)
    stages = list(a_records) + [s for s in b_records if s not in a_records]
    rows = [row for stage in stages for name in METRICS
            if (row := delta_row(stage, name, a_records.get(stage), b_records.get(stage),
                                 metric, threshold, _speed(a_rates.get(stage), b_rates.get(stage), threshold)))
            is not None]
    rows.sort(key=_sort_key)
    return rows, any(row["regression"] for row in rows)


def _rates_by_stage(results: list[dict]) -> dict[str, list[float]]:
    """Throughput per process (per round), or per repeat in results written before rounds existed."""
    rates = {}
    for result in results:
        metrics = result.get("metrics") or {}
        if metrics.get("round_throughputs"):
            rates[result["stage"]] = metrics["round_throughputs"]
        elif metrics.get("step_times_s"):
            rates[result["stage"]] = stats.repeat_throughputs(metrics["step_times_s"], metrics["samples_per_step"])
    return rates


def _speed(a: list[float] | None, b: list[float] | None, threshold: float) -> dict | None:
    """B/A throughput with its interval and verdict; None when a side has no measurement."""
    if not a or not b:
        return None
    ratio = stats.welch_rates(b, a)
    return {**ratio, "verdict": stats.judged_verdict(ratio, threshold)}


def delta_row(stage: str, name: str, a: dict | None, b: dict | None, chosen: str,
              threshold: float, speed: dict | None = None) -> dict | None:
    """One stage's change in one metric; None when neither run has the figure."""
    spec = METRICS[name]
    before, after = (a or {}).get(spec.column), (b or {}).get(spec.column)
    if before is None and after is None and (name != chosen or not _lost(a, b)):
        return None
    relative = (after - before) / before if before and after is not None else None
    worse = relative is not None and (-relative if spec.higher_is_better else relative) > 0
    statistical = speed if name != "peak_memory" else None
    if statistical is not None:
        beyond = statistical["ci95_high"] < 1 - threshold  # the whole interval below a practical loss
    else:
        beyond = relative is not None and abs(relative) > threshold
    regression = name == chosen and ((worse and beyond) or _lost(a, b))
    return {"stage": stage, "metric": name, "unit": spec.unit, "a": before, "b": after,
            "change": None if relative is None else after - before, "relative_change": relative,
            "worse": worse, "regression": regression, "status_a": (a or {}).get("status"),
            "status_b": (b or {}).get("status"), "note": _note(a, b),
            "speedup": statistical}


def _lost(a: dict | None, b: dict | None) -> bool:
    """Measured in A, failed in B: the figure disappeared, which a gate must not let through."""
    return bool(a and b and a.get("throughput_samples_per_s") is not None and b.get("status") == "failed")


def _note(a: dict | None, b: dict | None) -> str:
    if a is None:
        return "only in B"
    if b is None:
        return "only in A"
    if a.get("status") != b.get("status"):
        return f"status {a.get('status')} -> {b.get('status')}"
    return ""


def _sort_key(row: dict) -> tuple:
    # Regressions without a number (stage failed in B) first, then the biggest relative changes,
    # then rows that cannot be compared at all.
    relative = row["relative_change"]
    if relative is None:
        return (0 if row["regression"] else 2, 0.0, row["stage"], row["metric"])
    return (1, -abs(relative), row["stage"], row["metric"])


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of compare_runs rows, numbers rounded as in the report."""
    headers = ["stage", "metric", "run A", "run B", "change", "flag"]
    body = [[row["stage"], row["metric"], _value(row, "a"), _value(row, "b"), _change(row), _flag(row)]
            for row in rows]
    if not body:
        return "no stage has a figure in either run"
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *body)]
    lines = [_line(headers, widths), _line(["-" * w for w in widths], widths)]
    return "\n".join(lines + [_line(cells, widths) for cells in body])


def _line(cells: list[str], widths: list[int]) -> str:
    return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()


def _value(row: dict, side: str) -> str:
    text = fmt(METRICS[row["metric"]].kind, row[side])
    space = "" if row["unit"] == "%" else " "
    return f"{text}{space}{row['unit']}" if text else "-"


def _change(row: dict) -> str:
    relative = row["relative_change"]
    return "-" if relative is None else f"{fmt('signed_pct', relative * 100)}%"


def _flag(row: dict) -> str:
    speed = row.get("speedup")
    if row["regression"]:
        verdict = "REGRESSION"
    elif speed is not None:
        verdict = {"faster": "faster", "slower": "slower", "inconclusive": stats.INCONCLUSIVE_TEXT}.get(
            speed["verdict"], "no significant change")
    else:
        verdict = "worse" if row["worse"] else "better" if row["relative_change"] else ""
    interval = f"B/A {_interval(speed)}" if speed is not None else ""
    return "; ".join(part for part in (verdict, interval, row["note"]) if part)


def _interval(speed: dict) -> str:
    high = speed["ci95_high"]
    if high == float("inf"):
        return f"{speed['ratio']:.2f}x"
    return f"{speed['ratio']:.2f}x [{speed['ci95_low']:.2f}, {high:.2f}]"
