"""Stage results -> one flat record per configuration, and the CSV written from those records.

Every number the report prints goes through `fmt` with the column's kind, so the markdown, the CSV
and the plots' labels show the same digits and a reader can match them by eye.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.trace.regions import BREAKDOWN_PARTS
from workbench.results import (RUN_FILE, TRACE_SUMMARY_SUFFIX, load_stage_results, read_json, read_run_file, stage_files,
                               write_atomic)

MEASURED_STATUSES = ("baseline", "kept", "dropped", "rejected", "undecided", "tradeoff", "final")
# What the pass built later stages on (a dropped stage was carried forward until leave-one-out).
CARRIED_STATUSES = ("baseline", "kept", "dropped")
BREAKDOWN_KEYS = BREAKDOWN_PARTS  # the CSV's <region>_percent columns, in the trace's order

# Impact thresholds, stated once here and quoted in the report: a speedup counts only when its 95%
# interval excludes 1 (verdict "faster"), so noise cannot earn a stage a "High".
IMPACT_RULES = (("High", 1.30, 30.0), ("Medium", 1.10, 10.0))

# (column, kind): the kind picks the formatter, so one column always prints with one rounding.
COLUMNS = (
    ("stage", "text"), ("index", "int"), ("status", "text"), ("reason", "text"), ("applied", "text"),
    ("throughput_samples_per_s", "rate"), ("throughput_ci95_low", "rate"),
    ("throughput_ci95_high", "rate"), ("throughput_from", "text"), ("step_time_median_ms", "ms"), ("step_time_iqr_ms", "ms"),
    ("epoch_time_s", "seconds"), ("peak_memory_mb", "mb"), ("peak_memory_kind", "text"),
    ("memory_change_vs_previous_percent", "signed_pct"), ("speedup_vs_baseline", "ratio"),
    ("speedup_vs_baseline_ci95_low", "ratio"), ("speedup_vs_baseline_ci95_high", "ratio"),
("verdict", "text"), ("speedup_vs_previous", "ratio"), ("speedup_vs_previous_ci95_low", "ratio"),
    ("speedup_vs_previous_ci95_high", "ratio"), ("verdict_vs_previous", "text"),
    ("previous_stage", "text"), ("impact", "text"), ("final_loss", "loss"), ("loss_finite", "bool"),
    ("eval_accuracy_percent", "pct"), ("trained_steps", "int"), ("world_size", "int"),
    ("scaling_efficiency_percent", "pct"), ("communication_percent", "pct"),
    ("compile_s", "seconds"), ("mfu_percent", "pct"), ("trace_step_time_ms", "ms"),
    *((f"{key}_percent", "pct") for key in BREAKDOWN_KEYS),
    ("device_busy_percent", "pct"), ("error", "text"),
    # Added after the others, so a reader that goes by position keeps working.
    ("speedup_vs_baseline_from", "text"),
    ("throughput_tokens_per_s", "rate"), ("tokens_per_sample", "int"), ("mfu_estimate_percent", "pct"),
)


def _fixed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def _rate(value: float) -> str:
    # One decimal, as the ladder's console lines print it; below 1 sample/s (bf16 emulated on a
    # CPU at 224 px) one decimal would hide the number, so two there.
    return _fixed(value, 1 if abs(value) >= 1 else 2)


FORMATTERS = {
    "rate": _rate,
    "ratio": lambda v: _fixed(v, 2),  # as the ladder's own reasons print speedups ("1.19x [1.14, 1.25]")
    "ms": lambda v: _fixed(v, 1),
    "seconds": lambda v: _fixed(v, 1),
    "mb": lambda v: _fixed(v, 0),
    "pct": lambda v: _fixed(v, 1),
    "signed_pct": lambda v: f"{v:+.1f}",
    "loss": lambda v: _fixed(v, 4),
    "int": lambda v: str(int(v)),
}


def fmt(kind: str, value: Any) -> str:
    """The one rounding for a kind of number. Missing is '', non-finite is 'nan'/'inf'."""
    if value is None or value == "":
        return ""
    if kind == "text":
        return str(value)
    if kind == "bool":
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return FORMATTERS[kind](float(value))


def formatted(record: dict) -> dict[str, str]:
    """A record as the CSV row: every column, every number with its column's rounding."""
    return {name: fmt(kind, record.get(name)) for name, kind in COLUMNS}


def load_run(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    return read_run_file(run_dir) if path.exists() else {"run": Path(run_dir).name}


def load_trace_summary(run_dir: Path, result: dict) -> dict | None:
    """The stage's trace summary from the documented layout (either form), or from where the result
    says it is."""
    run_dir = Path(run_dir)
    candidates = stage_files(run_dir, str(result.get("stage")), TRACE_SUMMARY_SUFFIX)
    recorded = (result.get("trace") or {}).get("summary_json")
    if recorded:
        candidates += [Path(recorded), run_dir / recorded, run_dir.parent.parent / recorded]
    for path in candidates:
        if path.is_file():
            return read_json(path)
    return None


def previous_result(results: list[dict], position: int) -> dict | None:
    """The configuration a stage was built on: the latest earlier stage still in effect.

    Prefer what the result names ('against' in speedup_vs_previous), then its record of what was
    in effect ('applied'); fall back to the latest earlier kept stage, which is the ladder's rule.
    """
    current = results[position]
    named = ((current.get("metrics") or {}).get("speedup_vs_previous") or {}).get("against")
    if named:
        return next((r for r in results[:position] if r.get("stage") == named), None)
    applied = set(current.get("applied") or []) - {current.get("stage")}
    earlier = [r for r in results[:position] if r.get("metrics")]
    in_effect = [r for r in earlier if r.get("stage") in applied or r.get("status") == "baseline"]
    carried = [r for r in earlier if r.get("status") in CARRIED_STATUSES]
    chosen = in_effect if applied else carried
    return chosen[-1] if chosen else None


def _speedup_fields(prefix: str, speedup: dict | None) -> dict:
    speedup = speedup or {}
    return {
        prefix: speedup.get("ratio"),
        f"{prefix}_ci95_low": speedup.get("ci95_low"),
        f"{prefix}_ci95_high": speedup.get("ci95_high"),
    }


def _metric_fields(metrics: dict) -> dict:
    step = metrics.get("step_time_s") or {}
    throughput = metrics.get("throughput") or {}
    mfu = metrics.get("mfu")
    return {
        "throughput_samples_per_s": throughput.get("median"),
        "throughput_ci95_low": throughput.get("ci95_low"),
        "throughput_ci95_high": throughput.get("ci95_high"),
        "step_time_median_ms": _times(step.get("median"), 1000.0),
        "step_time_iqr_ms": _times(step.get("iqr"), 1000.0),
        "epoch_time_s": metrics.get("epoch_time_s"),
        "peak_memory_mb": metrics.get("peak_memory_mb"),
        "peak_memory_kind": metrics.get("peak_memory_kind"),
        "final_loss": metrics.get("final_loss"),
        "loss_finite": metrics.get("loss_finite"),
        "compile_s": metrics.get("compile_s"),
        "mfu_percent": _times(mfu, 100.0),
        "eval_accuracy_percent": _times(metrics.get("eval_accuracy"), 100.0),
        "trained_steps": metrics.get("trained_steps"),
        "world_size": metrics.get("world_size"),
        # A language model's: samples/s x seq_len, and the MFU by 6N + attention beside the counted one.
        "throughput_tokens_per_s": _times(throughput.get("median"), metrics.get("tokens_per_sample"))
        if metrics.get("tokens_per_sample") else None,
        "tokens_per_sample": metrics.get("tokens_per_sample"),
        "mfu_estimate_percent": _times(metrics.get("mfu_estimate"), 100.0),
        **_scaling_fields(metrics.get("scaling") or {}),
    }


def _scaling_fields(scaling: dict) -> dict:
    """Multi-process runs only: efficiency against N x the one-process baseline, time in collectives."""
    return {"scaling_efficiency_percent": _times(scaling.get("efficiency"), 100.0),
            "communication_percent": _times(scaling.get("communication_share"), 100.0)}


def _times(value: Any, factor: float) -> float | None:
    return None if value is None else float(value) * factor


def _trace_fields(summary: dict | None) -> dict:
    if not summary:
        return {}
    shares = summary.get("breakdown_share") or {}
    fields = {f"{key}_percent": _times(shares.get(key), 100.0) for key in BREAKDOWN_KEYS}
    fields["trace_step_time_ms"] = summary.get("step_time_ms")
    fields["device_busy_percent"] = _times((summary.get("device") or {}).get("busy_share"), 100.0)
    return fields


def memory_change_percent(record: dict, previous: dict | None) -> float | None:
    before = previous and previous.get("peak_memory_mb")
    after = record.get("peak_memory_mb")
    if not before or after is None:
        return None
    return (after - before) / before * 100.0


def impact(record: dict) -> str:
    """High/Medium/Low by IMPACT_RULES; empty for the baseline and for unmeasured stages."""
    if record.get("status") not in MEASURED_STATUSES or record.get("status") == "baseline":
        return ""
    # Judge the printed (rounded) figures, so a reader checking the rule gets the same answer.
    faster = record.get("verdict_vs_previous") == "faster"
    ratio = float(fmt("ratio", record.get("speedup_vs_previous")) or 0.0)
    saved = -float(fmt("signed_pct", record.get("memory_change_vs_previous_percent")) or 0.0)
    if record.get("verdict_vs_previous") == "slower" and record.get("status") != "tradeoff":
        saved = 0.0  # memory bought with a slowdown counts only when offered as a trade-off
    for label, min_ratio, min_saved in IMPACT_RULES:
        if (faster and ratio >= min_ratio) or saved >= min_saved:
            return label
    return "Low"


def stage_record(result: dict, summary: dict | None) -> dict:
    """One configuration's raw numbers (floats, None when not measured), keyed by CSV column."""
    metrics = result.get("metrics") or {}
    record = {
        "stage": result.get("stage"), "index": result.get("index"),
        "status": result.get("status"), "reason": result.get("reason"),
        "applied": "+".join(result.get("applied") or []),
        "error": _first_line(result.get("error")),
        **_metric_fields(metrics),
        **_speedup_fields("speedup_vs_baseline", metrics.get("speedup_vs_baseline")),
        **_speedup_fields("speedup_vs_previous", metrics.get("speedup_vs_previous")),
        **_trace_fields(summary),
    }
    record["verdict"] = (metrics.get("speedup_vs_baseline") or {}).get("verdict")
    record["speedup_vs_baseline_from"] = baseline_figure_source(result)
    record["verdict_vs_previous"] = (metrics.get("speedup_vs_previous") or {}).get("verdict")
    return record


def baseline_figure_source(result: dict) -> str | None:
    """How a row's speedup against the baseline was obtained: one paired comparison, a chain of them
    (kept stage by kept stage, each paired in its own window), or unpaired rounds minutes apart."""
    ratio = (result.get("metrics") or {}).get("speedup_vs_baseline") or {}
    if result.get("status") == "baseline" or not ratio:
        return None
    if result.get("status") == "final":
        return "paired"  # the headline: final against baseline in the same rounds, always
    if ratio.get("chain"):
        return "chained: " + " x ".join(ratio["chain"])
    return "paired" if ratio.get("paired") else "unpaired"


def throughput_source(result: dict, previous_stage: str | None) -> str | None:
    """Which comparison a row's throughput comes from: each is one side of its own paired rounds, in
    its own time window, so two rows' throughputs are not a comparison (their speedups are)."""
    metrics, rounds = result.get("metrics") or {}, (result.get("rounds") or {}).get("count")
    if not metrics.get("throughput"):
        return None
    against = (metrics.get("speedup_vs_previous") or {}).get("against") or previous_stage
    counted = f", {rounds} paired round{'s' if rounds != 1 else ''}" if rounds else ""
    if result.get("status") == "baseline":
        return f"the A/A (baseline vs itself{counted})"
    if result.get("status") == "final":
        return f"the headline (final vs baseline{counted})"
    if result.get("adopted_config"):  # its figures against the baseline stand on its second look
        first = ((result.get("first_pass") or {}).get("metrics") or {}).get("speedup_vs_previous") or {}
        was = first.get("against") or previous_stage
        return f"its first pass (its comparison with {was}{counted}); adopted later on its second look"
    return f"its comparison with {against}{counted}" if against else None


def _first_line(text: Any) -> str | None:
    return str(text).strip().splitlines()[0] if text else None


def build_records(results: list[dict], summaries: list[dict | None]) -> list[dict]:
    """Every stage result as a record, each linked to the record it was built on."""
    records = [stage_record(r, s) for r, s in zip(results, summaries)]
    by_stage = {rec["stage"]: rec for rec in records}
    for position, record in enumerate(records):
        previous = previous_result(results, position) if record["status"] != "baseline" else None
        record["previous_stage"] = previous and previous.get("stage")
        record["throughput_from"] = throughput_source(results[position], record["previous_stage"])
        record["memory_change_vs_previous_percent"] = memory_change_percent(
            record, by_stage.get(record["previous_stage"]))
        record["impact"] = impact(record)
    _headline_for_its_configuration(results, records)
    return records


HEADLINE_SOURCE = "the headline (same configuration)"


def _headline_for_its_configuration(results: list[dict], records: list[dict]) -> None:
    """A kept stage whose configuration is the final one shows the headline as its speedup against the
    baseline: the headline measured that very configuration against the baseline, often with more
    rounds (narrowed), and one configuration gets one figure. Its speedup over the configuration it
    built on, the comparison that kept it, stays its own."""
    final = next((i for i, r in enumerate(results) if r.get("stage") == "final" and r.get("status") == "final"), None)
    if final is None or not results[final].get("config"):
        return
    for result, record in zip(results, records):
        # A stage adopted on its second look joined the configuration of that moment (adopted_config).
        if record["status"] == "kept" and (result.get("adopted_config") or result.get("config")) == results[final]["config"]:
            record.update({key: records[final][key] for key in
                           ("speedup_vs_baseline", "speedup_vs_baseline_ci95_low", "speedup_vs_baseline_ci95_high", "verdict")})
            record["speedup_vs_baseline_from"] = HEADLINE_SOURCE


@dataclass(frozen=True)
class RunView:
    """Everything the report reads from a run folder, loaded once, in ladder order."""
    run_dir: Path
    run: dict
    results: list[dict]
    summaries: list[dict | None]
    records: list[dict]

    def result(self, stage: str | None) -> dict | None:
        return next((r for r in self.results if r.get("stage") == stage), None)

    def record(self, stage: str | None) -> dict | None:
        return next((r for r in self.records if r.get("stage") == stage), None)

    def summary(self, stage: str | None) -> dict | None:
        return next((s for r, s in zip(self.results, self.summaries) if r.get("stage") == stage), None)

    @property
    def baseline(self) -> dict | None:
        return next((r for r in self.records if r["status"] == "baseline"), None)

    @property
    def final(self) -> dict | None:
        """The optimized configuration's record (see final_position)."""
        position = final_position(self.results, self.run.get("mode", "ladder"))
        return None if position is None else self.records[position]

    def with_status(self, *statuses: str) -> list[dict]:
        return [r for r in self.records if r["status"] in statuses]


def final_position(results: list[dict], mode: str) -> int | None:
    """Where the optimized configuration is among a run's stage results; the one rule the report and
    the run's closing lines share.

    The paired headline ('final', measured against the baseline in the same time window) when there
    is one; else the last measured stage carried forward (the baseline when nothing was kept). In an
    ablation every stage stands alone on the baseline, so nothing is carried forward: the best single
    kept stage is the optimized configuration there.
    """
    measured = [i for i, r in enumerate(results) if ((r.get("metrics") or {}).get("throughput") or {}).get("median") is not None]
    headline = [i for i in measured if results[i].get("status") == "final"]
    if headline:
        return headline[-1]
    carried = [i for i in measured if results[i].get("status") in ("baseline", "kept")]  # in the final mix
    if mode == "ablation" and carried:
        return max(carried, key=lambda i: _baseline_ratio(results[i]))
    return carried[-1] if carried else None


def _baseline_ratio(result: dict) -> float:
    return ((result.get("metrics") or {}).get("speedup_vs_baseline") or {}).get("ratio") or 0.0


def load_view(run_dir: Path) -> RunView:
    run_dir = Path(run_dir)
    results = load_stage_results(run_dir)
    summaries = [load_trace_summary(run_dir, r) for r in results]
    return RunView(run_dir, load_run(run_dir), results, summaries, build_records(results, summaries))


def write_csv(records: list[dict], path: Path) -> Path:
    """Every record as a row with its columns' rounding, written atomically."""
    def write(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=[name for name, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(formatted(record) for record in records)

    return write_atomic(Path(path), write)
