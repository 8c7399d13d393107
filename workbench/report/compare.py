"""Two runs side by side: per-stage deltas, and whether the chosen metric regressed.

Stages are matched by name. Speed (throughput, step time, MFU) is judged on what each run measured
paired, never on raw throughputs taken minutes or days apart (two runs of one revision differ there
by more than any threshold): each stage's speedup against the configuration before it in its own run
(the final configuration's: the paired headline against the baseline), and the gate asks whether B's
speedup is smaller than A's, with an interval that carries both runs' spread. A speed regression is
that interval lying wholly below 1 - threshold; a stage the two runs compared against different
configurations, and the baseline (nothing paired to hold it against), are shown and not judged:
`compare --remeasure` measures the two runs' configurations in paired rounds for absolute figures.
MFU rows use one denominator (run A's peak) or say that they cannot. Peak memory regresses when it
grows by more than the threshold. A stage measured in A that failed in B is a regression too, since
its number is gone. Reads only the runs' result files (no torch), through the report's records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
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
    a_flops, b_flops = _flops_by_stage(a_view), _flops_by_stage(b_view)
    a_records = {r["stage"]: _one_denominator(r, a_flops.get(r["stage"]), a_flops.get(r["stage"])) for r in a_view.records}
    b_records = {r["stage"]: _one_denominator(r, b_flops.get(r["stage"]), a_flops.get(r["stage"])) for r in b_view.records}
    a_paired, b_paired = _paired_by_stage(a_view), _paired_by_stage(b_view)
    stages = list(a_records) + [s for s in b_records if s not in a_records]
    # Every judged stage is one more chance of a false flag: each interval is widened (Bonferroni) so that
    # the chance of any false verdict among them stays under 5% (two ladders of one revision, judged at 95%
    # each, flagged 1 of 24 rows "faster").
    judged = sum(_judgeable(a_paired.get(stage), b_paired.get(stage)) for stage in stages)
    level = stats.family_level(judged)
    changes = {stage: gain_change(a_paired.get(stage), b_paired.get(stage), threshold, level, judged) for stage in stages}
    rows = [row for stage in stages for name in METRICS
            if (row := delta_row(stage, name, a_records.get(stage), b_records.get(stage),
                                 metric, threshold, changes[stage])) is not None]
    rows.sort(key=_sort_key)
    return rows, any(row["regression"] for row in rows)



# What, when it differs between two runs, can change a speedup with no change in the code: a verdict
# of "regressed" or "faster" then says as much about the machine as about the revision.
MACHINE_FIELDS = (("device_name", "device"), ("cpu_generation", "CPU generation"), ("cpu_flags", "CPU flags"),
                  ("cpu_cores", "usable cores"), ("threads", "intra-op threads"), ("torch", "torch"),
                  ("torchvision", "torchvision"))


def machine_differences(run_a_dir: Path, run_b_dir: Path) -> list[str]:
    """'CPU generation: A ... , B ...' for each field the two runs' environments disagree on (fields a
    run did not record are left out: an older run is not called different for its silence)."""
    a_env, b_env = (_environment(load_view(Path(d))) for d in (run_a_dir, run_b_dir))
    return [f"{label}: A {a_env[key]}, B {b_env[key]}" for key, label in MACHINE_FIELDS
            if a_env.get(key) is not None and b_env.get(key) is not None and a_env[key] != b_env[key]]


def _environment(view) -> dict:
    return view.run.get("environment") or next((r.get("environment") for r in view.results if r.get("environment")), {})


def _paired_by_stage(view) -> dict[str, dict]:
    """Each stage's speedup as its own run measured it, paired: against the configuration before it
    (the final's: against the baseline, the headline). The baseline has none."""
    paired = {}
    for result, record in zip(view.results, view.records):
        metrics = result.get("metrics") or {}
        key = "speedup_vs_baseline" if result.get("status") == "final" else "speedup_vs_previous"
        ratio = metrics.get(key) or {}
        if result.get("status") != "baseline" and _finite(ratio):
            against = "baseline" if key == "speedup_vs_baseline" else ratio.get("against") or record.get("previous_stage")
            paired[result["stage"]] = {**ratio, "against": against}
    return paired


def _finite(ratio: dict) -> bool:
    return bool(ratio.get("ratio")) and (ratio.get("ci95_low") or 0) > 0 and math.isfinite(ratio.get("ci95_high", math.inf))


def _judgeable(a: dict | None, b: dict | None) -> bool:
    return a is not None and b is not None and a["against"] == b["against"]


def family_text(judged: int) -> str:
    """What the family-wise level means for a reader of the table."""
    if judged <= 1:
        return f"{judged} stage judged at 95%"
    level = stats.family_level(judged)
    return (f"{judged} stages judged, each interval at {level:.2%} (Bonferroni): the chance of any false verdict "
            f"among them is at most 5%, so expect at most {1 - stats.CONFIDENCE:.2f} false rows in all")


def gain_change(a: dict | None, b: dict | None, threshold: float, level: float = stats.CONFIDENCE,
                family: int = 1) -> dict | None:
    """B's paired speedup over A's, with a 95% interval that carries both runs' spread: a Welch
    t-interval on the two runs' per-round log ratios where they are recorded, else one built from
    each run's own interval. None when a side has none; a note when the two runs measured the stage
    against different configurations."""
    if a is None or b is None:
        return None
    if a["against"] != b["against"]:
        return {"not_judged": f"A measured it against {a['against']}, B against {b['against']}"}
    if len(a.get("log_ratios") or []) > 1 and len(b.get("log_ratios") or []) > 1:
        diff, se, df = stats.welch_logs(b["log_ratios"], a["log_ratios"])
        half, method = stats.t_quantile_at(df, level) * se, "Welch t-interval on the two runs' per-round log ratios"
    else:
        diff = math.log(b["ratio"]) - math.log(a["ratio"])
        z = NormalDist().inv_cdf(1 - (1 - level) / 2)
        half, method = z * math.hypot(_log_se(a), _log_se(b)), "from each run's own 95% interval"
    ratio = {"ratio": math.exp(diff), "ci95_low": math.exp(diff - half), "ci95_high": math.exp(diff + half),
             "method": f"B's paired speedup vs {a['against']} over A's: {method}, at {level:.2%}"
                       + (f" (one of {family} stages judged: Bonferroni)" if family > 1 else ""),
             "level": level, "family": family}
    return {**ratio, "verdict": stats.judged_verdict(ratio, threshold)}


def _log_se(ratio: dict) -> float:
    """A run's own interval as a standard error on the log scale (its t quantile taken out)."""
    quantile = stats.t_quantile(ratio["rounds"] - 1) if (ratio.get("rounds") or 0) > 1 else stats.Z_975
    return (math.log(ratio["ci95_high"]) - math.log(ratio["ci95_low"])) / (2 * quantile)


def _flops_by_stage(view) -> dict[str, tuple[float | None, float | None]]:
    return {r["stage"]: ((r.get("metrics") or {}).get("achieved_flops_per_s"), (r.get("metrics") or {}).get("peak_flops_per_s"))
            for r in view.results}


def _one_denominator(record: dict, own: tuple | None, reference: tuple | None) -> dict:
    """B's MFU against run A's denominator (each run measures its own matmul peak on a CPU, so two
    runs' MFUs moved by 100-225% with nothing else changed); as recorded where either is missing."""
    achieved, peak = (own or (None, None))[0], (reference or (None, None))[1]
    if not achieved or not peak:
        return record
    return {**record, "mfu_percent": achieved / peak * 100, "mfu_denominator": "run A's peak"}


def delta_row(stage: str, name: str, a: dict | None, b: dict | None, chosen: str,
              threshold: float, speed: dict | None = None) -> dict | None:
    """One stage's change in one metric; None when neither run has the figure."""
    spec = METRICS[name]
    before, after = (a or {}).get(spec.column), (b or {}).get(spec.column)
    if before is None and after is None and (name != chosen or not _lost(a, b)):
        return None
    relative = (after - before) / before if before and after is not None else None
    worse = relative is not None and (-relative if spec.higher_is_better else relative) > 0
    statistical = speed if name != "peak_memory" and speed and "not_judged" not in speed else None
    if name == "peak_memory":
        beyond = relative is not None and abs(relative) > threshold
    else:  # speed: only a paired change of gain is judged; raw figures minutes apart are shown, not judged
        beyond = statistical is not None and statistical["ci95_high"] < 1 - threshold
    regression = name == chosen and ((worse and beyond) or _lost(a, b))
    return {"stage": stage, "metric": name, "unit": spec.unit, "a": before, "b": after,
            "change": None if relative is None else after - before, "relative_change": relative,
            "worse": worse, "regression": regression, "status_a": (a or {}).get("status"),
            "status_b": (b or {}).get("status"), "note": _note(a, b, name, speed),
            "speedup": statistical}


def _lost(a: dict | None, b: dict | None) -> bool:
    """Measured in A, failed in B: the figure disappeared, which a gate must not let through."""
    return bool(a and b and a.get("throughput_samples_per_s") is not None and b.get("status") == "failed")


def _note(a: dict | None, b: dict | None, name: str = "", speed: dict | None = None) -> str:
    if a is None:
        return "only in B"
    if b is None:
        return "only in A"
    if a.get("status") != b.get("status"):
        return f"status {a.get('status')} -> {b.get('status')}"
    if name == "mfu" and b.get("mfu_denominator"):
        return "both against run A's peak FLOP/s"
    if name in ("throughput", "step_time", "mfu") and speed is None and b.get("throughput_samples_per_s") is not None:
        return "raw figures, minutes apart: not judged (no paired speedup; compare --remeasure)"
    if speed is not None and "not_judged" in speed:
        return f"not judged: {speed['not_judged']}"
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
