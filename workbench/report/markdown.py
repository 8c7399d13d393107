"""optimization_report.md, part 1: text helpers, Executive Summary, Environment, Links.

Every figure is printed through `show`, which uses the CSV's formatter for its column kind, so the
same number reads the same in the report and in optimization_results.csv. A value that was not
measured prints as "n/a" next to a sentence saying why, never as a placeholder.
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from workbench.report.summary import ceiling_text, outcome
from workbench.report.table import RunView, fmt
from workbench.results import BREAKDOWN_SUFFIX, TRACE_SUMMARY_SUFFIX, stage_files

CSV_NAME = "optimization_results.csv"
DASHBOARD_NAME = "optimization_dashboard.png"
REPORT_NAME = "optimization_report.md"
SCRIPT_NAME = "optimized_training.py"


def script_name(view) -> str:
    """What carries the final settings: a runnable script for an image run, the changes to make in your
    own loop for a language model's (report/changes.py)."""
    from workbench.report.changes import CHANGES_NAME, is_token_run

    return CHANGES_NAME if is_token_run(view.run.get("config") or {}) else SCRIPT_NAME


# --- text helpers ----------------------------------------------------------------------------

def show(kind: str, value: Any, unit: str = "") -> str:
    """A number as the CSV prints it, plus its unit; 'n/a' when missing."""
    text = fmt(kind, value)
    if text == "":
        return "n/a"
    if text in ("nan", "inf", "-inf"):
        return "not finite"
    return f"{text}{unit}"


def plain(value: Any) -> str:
    """A config or decision value as prose: no braces, no Python None."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.3g}"  # findings' raw shares (0.348086) read better at 3 significant digits
    if isinstance(value, dict):
        return ", ".join(f"{k}: {plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) or "none"
    return str(value)


def speedup_text(record: dict, prefix: str) -> str:
    """'1.19x (95% CI 1.14x–1.25x, faster)' for speedup_vs_baseline or speedup_vs_previous."""
    if record.get(prefix) is None:
        return "n/a"
    verdict = record.get("verdict" if prefix == "speedup_vs_baseline" else "verdict_vs_previous")
    interval = f"95% CI {show('ratio', record.get(f'{prefix}_ci95_low'), 'x')}–" \
               f"{show('ratio', record.get(f'{prefix}_ci95_high'), 'x')}"
    source = record.get("speedup_vs_baseline_from") if prefix == "speedup_vs_baseline" else None
    extra = "".join(f", {part}" for part in (verdict, source) if part)
    return f"{show('ratio', record[prefix], 'x')} ({interval}{extra})"


def throughput_text(record: dict) -> str:
    low, high = record.get("throughput_ci95_low"), record.get("throughput_ci95_high")
    interval = f" (95% CI {show('rate', low)}–{show('rate', high)} samples/s)" if low is not None else ""
    tokens = record.get("throughput_tokens_per_s")
    in_tokens = f", {show('rate', tokens, ' tokens/s')}" if tokens is not None else ""
    return f"{show('rate', record.get('throughput_samples_per_s'), ' samples/s')}{in_tokens}{interval}"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def bullet(label: str, text: str) -> str:
    return f"- **{label}:** {text}"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]


def device_name(view: RunView) -> str:
    env = environment(view)
    name, kind = env.get("device_name"), env.get("device_type")
    if name and kind:
        return f"{name} ({kind})"
    return name or kind or "an unrecorded device"


def environment(view: RunView) -> dict:
    return view.run.get("environment") or next(
        (r.get("environment") for r in view.results if r.get("environment")), {})


def data_used(view: RunView) -> str:
    return view.run.get("data") or next((r["data"] for r in view.results if r.get("data")), "not recorded")


# --- Executive Summary ------------------------------------------------------------------------

def _status_counts(view: RunView) -> str:
    return outcome(view.records)  # the console's outcome line, word for word


def _epoch_line(base: dict, final: dict) -> str:
    """The baseline's epoch time, and the optimized one at the final speedup (the paired headline).

    The two throughputs come from different time windows (the A/A's and the headline's), so their
    own epoch times would give a saving that contradicts the speedup beside it: one figure, the
    speedup, carries the comparison."""
    before, speedup = base.get("epoch_time_s"), final.get("speedup_vs_baseline")
    if before is None:
        return "no epoch time was recorded, so the time saved per epoch is unknown"
    if final is base:
        return f"{show('seconds', before, ' s')} per epoch; no kept stage, so no time is saved yet"
    if not speedup:
        return f"{show('seconds', before, ' s')} per epoch; no speedup was recorded, so the time saved is unknown"
    after = before / speedup
    saved = float(fmt("seconds", before)) - float(fmt("seconds", after))
    share = saved / float(fmt("seconds", before)) * 100 if before else 0.0
    word = "saved" if saved >= 0 else "lost"
    low, high = final.get("speedup_vs_baseline_ci95_low"), final.get("speedup_vs_baseline_ci95_high")
    interval = (f" (95% CI {show('seconds', before / high, ' s')}–{show('seconds', before / low, ' s')})"
                if low and high and high != float("inf") else "")
    return (f"{show('seconds', before, ' s')} → {show('seconds', after, ' s')}{interval} per epoch at the "
            f"{show('ratio', speedup, 'x')} speedup: {show('seconds', abs(saved), ' s')} {word} per epoch "
            f"({show('pct', abs(share), '%')})")


def _optimized_lines(view: RunView, base: dict, final: dict) -> list[str]:
    if final is base:
        return [bullet("Optimized throughput", "no stage was kept, so the best configuration is the "
                       "baseline itself: " + throughput_text(base))]
    applied = final.get("applied") or final["stage"]
    which = "best single stage" if view.run.get("mode") == "ablation" else "last kept stage"
    source = ("the final configuration, paired with the baseline" if final["stage"] == "final"
              else f"{which}: `{final['stage']}`")
    return [
        bullet("Optimized throughput", f"{throughput_text(final)} with `{applied}` ({source})"
               f"{_baseline_in_same_rounds(view, final)}"),
        bullet("Final speedup", speedup_text(final, "speedup_vs_baseline")),
    ]


def _baseline_in_same_rounds(view: RunView, final: dict) -> str:
    """The headline's own baseline side: the A/A's baseline figure above is from another time window,
    so dividing the two throughputs need not give the paired speedup; this is the figure that does
    (up to median against mean)."""
    if final["stage"] != "final":
        return ""
    rates = ((view.result("final") or {}).get("rounds") or {}).get("a") or []
    if not rates:
        return ""
    return (f"; in those same rounds the baseline did {show('rate', statistics.median(rates), ' samples/s')} "
            "(the baseline figure above is the A/A's, another time window: compare by the speedup)")


def executive_summary(view: RunView) -> list[str]:
    run = view.run
    lines = ["## Executive Summary", "",
             f"Run `{run.get('run', view.run_dir.name)}` ({run.get('mode', 'ladder')} mode, created "
             f"{run.get('created', 'at an unrecorded time')}) has results for "
             f"{count(len(view.records), 'stage')} on {device_name(view)} with {data_used(view)}.", ""]
    base = view.baseline
    if base is None or base.get("throughput_samples_per_s") is None:
        attempt = base or view.record("baseline") or {}
        reason = attempt.get("error") or attempt.get("reason") or "no baseline result file was written"
        return lines + [f"The baseline was not measured ({reason}), so no speedup can be computed.", ""]
    lines += _headline_figures(view, base, view.final)
    return lines + overview_table(view) + ["", f"![Optimization dashboard]({DASHBOARD_NAME})", ""]


def _headline_figures(view: RunView, base: dict, final: dict) -> list[str]:
    lines = [bullet("Baseline throughput", f"{throughput_text(base)}, "
                    f"{show('ms', base.get('step_time_median_ms'), ' ms')} per step (median)")]
    lines += _optimized_lines(view, base, final)
    lines += [bullet("Epoch time", _epoch_line(base, final)),
              bullet("Outcome", _status_counts(view))]
    ceiling = ceiling_text(view.results, view.result(final["stage"]) or {}) if final else None
    lines += [bullet("Ceiling", ceiling)] if ceiling else []
    lines += _accuracy_line(base, final) + _scaling_lines(view, base, final) + [""]
    if view.run.get("mode") == "ablation":
        lines += ["This is an ablation run: each stage was applied alone to the baseline, so the "
                  "speedups do not compound and the best single stage is reported as optimized.", ""]
    return lines


def _accuracy_line(base: dict, final: dict) -> list[str]:
    if base.get("eval_accuracy_percent") is None:
        return []
    return [bullet("Held-out accuracy", f"{show('pct', base['eval_accuracy_percent'], '%')} (baseline) and "
                   f"{show('pct', final.get('eval_accuracy_percent'), '%')} (optimized) after "
                   f"{show('int', final.get('trained_steps'))} training steps: a check that training still "
                   "works, not a converged accuracy")]


def _scaling_lines(view: RunView, base: dict, final: dict) -> list[str]:
    if base.get("scaling_efficiency_percent") is None:
        return []
    return [bullet("Scaling", f"{show('int', base.get('world_size'))} processes: baseline at "
                   f"{show('pct', base['scaling_efficiency_percent'], '%')} of {show('int', base.get('world_size'))}x "
                   f"the one-process baseline, optimized at {show('pct', final.get('scaling_efficiency_percent'), '%')}; "
                   f"collectives take {show('pct', base.get('communication_percent'), '%')} of a baseline step")
            ] + _node_scaling_lines(_scaling_of(view, base), _scaling_of(view, final))


def _scaling_of(view: RunView, record: dict) -> dict:
    return ((view.result(record.get("stage")) or {}).get("metrics") or {}).get("scaling") or {}


def _node_scaling_lines(base: dict, final: dict) -> list[str]:
    """Several nodes: efficiency against N x one node's baseline (node 0's processes alone)."""
    if not base.get("nnodes"):
        return []
    percent = lambda scaling: None if scaling.get("efficiency_vs_one_node") is None else 100 * scaling["efficiency_vs_one_node"]
    return [bullet("Scaling across nodes", f"{show('int', base['nnodes'])} nodes x {show('int', base.get('nproc_per_node'))} "
                   f"processes: baseline at {show('pct', percent(base), '%')} of {show('int', base['nnodes'])}x one node's "
                   f"baseline ({show('int', base.get('nproc_per_node'))} processes on node 0 alone), optimized at "
                   f"{show('pct', percent(final), '%')}")]


def overview_table(view: RunView) -> list[str]:
    in_tokens = any(r.get("tokens_per_sample") for r in view.records)
    headers = ["stage", "status", "throughput (tokens/s)" if in_tokens else "throughput (samples/s)", "measured in",
               "speedup vs baseline", "speedup vs previous", "peak memory (MiB)", "impact"]
    rows = [[r["stage"], r["status"], show("rate", r.get("throughput_tokens_per_s" if in_tokens else "throughput_samples_per_s")),
             r.get("throughput_from") or "n/a",
             show("ratio", r.get("speedup_vs_baseline"), "x"),
             show("ratio", r.get("speedup_vs_previous"), "x"),
             show("mb", r.get("peak_memory_mb")), r.get("impact") or "n/a"] for r in view.records]
    note = ("n/a: not measured (failed or skipped stage), or not applicable (the baseline has no "
            "previous configuration and no impact). Each throughput is one side of its own paired "
            "comparison, in its own time window: compare stages by their speedups, not by these figures. "
            "The final configuration's speedup vs baseline is the paired headline. A stage measured against "
            "the baseline shows that paired comparison; one measured against a kept stage shows the product "
            "of the paired comparisons along the kept stages (chained: each in its own window, so drift "
            "between them does not enter, and the interval widens with each link); a figure from rounds "
            "minutes apart is marked unpaired (the CSV's speedup_vs_baseline_from says which).")
    return table(headers, rows) + ["", note]


# --- Environment and Links --------------------------------------------------------------------

ENVIRONMENT_LABELS = (
    ("device_name", "device"), ("device_type", "device type"), ("device_count", "device count"),
    ("cuda_capability", "CUDA capability"), ("device_memory_mb", "device memory (MiB)"),
    ("cpu_cores", "usable CPU cores"), ("threads", "intra-op threads"), ("cpu_flags", "CPU flags"),
    ("cpu_generation", "CPU generation"),
    ("torch", "torch"), ("torchvision", "torchvision"), ("python", "Python"),
    ("platform", "platform"), ("git_revision", "git revision"),
)


def environment_section(view: RunView) -> list[str]:
    env = environment(view)
    lines = ["## Environment", ""]
    if not env:
        return lines + ["No environment was recorded in run.json or in any stage result.", ""]
    known = {key for key, _ in ENVIRONMENT_LABELS}
    rows = [[label, _env_value(key, env.get(key))] for key, label in ENVIRONMENT_LABELS if key in env]
    rows += [[key, plain(value)] for key, value in sorted(env.items()) if key not in known]
    rows += [["data", data_used(view)], ["run mode", str(view.run.get("mode", "ladder"))]]
    return lines + table(["item", "value"], rows) + [""] + _decisions(view)


def _env_value(key: str, value: Any) -> str:
    if value is None:
        return "not applicable" if key in ("cuda_capability", "device_memory_mb") else "not recorded"
    if key == "cpu_flags":
        return plain(value) if value else "none of the flags the workbench checks (avx2, avx512, amx)"
    return plain(value)


def _decisions(view: RunView) -> list[str]:
    decisions = view.run.get("decisions") or {}
    if not decisions:
        return []
    lines = ["Decisions taken once for the whole run:", ""]
    return lines + [bullet(key, plain(value)) for key, value in decisions.items()] + [""]


def relative_link(view: RunView, recorded: str | None) -> tuple[str, bool] | None:
    """A path from a result file, as a link relative to the run folder, and whether it exists.

    Recorded paths are absolute or relative to the directory the run started in, which is the
    parent of the reports folder by default (reports/<run>/): try both.
    """
    if not recorded:
        return None
    path = Path(recorded)
    candidates = [path] if path.is_absolute() else [view.run_dir.parent.parent / path, Path.cwd() / path]
    found = next((c for c in candidates if c.exists()), candidates[0])
    return os.path.relpath(found, view.run_dir), found.exists()


def _link(label: str, target: tuple[str, bool] | None) -> str:
    if target is None:
        return f"{label}: not recorded"
    href, exists = target
    return f"[{label}]({href})" + ("" if exists else " (not found on this machine)")


def links_section(view: RunView) -> list[str]:
    lines = ["## Links", "", f"- [Results table]({CSV_NAME})", f"- [Dashboard]({DASHBOARD_NAME})",
             (f"- [Optimized training script]({SCRIPT_NAME})" if script_name(view) == SCRIPT_NAME
              else f"- [What to change in your training script]({script_name(view)})")]
    lines += [f"- [{png.stem.replace('_', ' ')}]({png.name})" for png in sorted(view.run_dir.glob("*.png"))
              if png.name != DASHBOARD_NAME]
    lines += ["", "Per stage:", ""]
    for result in view.results:
        lines.append(f"- `{result.get('stage')}`: " + ", ".join(_stage_links(view, result)))
    return lines + [""]


def _stage_links(view: RunView, result: dict) -> list[str]:
    stage = str(result.get("stage"))
    trace = result.get("trace") or {}
    links = [_link("result", _local(view, stage, ".json"))]
    if not trace:
        return links + ["no trace was recorded for this stage"]
    return links + [
        _link("trace folder", relative_link(view, trace.get("dir"))),
        _link("trace summary", _local(view, stage, TRACE_SUMMARY_SUFFIX)
              or relative_link(view, trace.get("summary_json"))),
        _link("step breakdown CSV", _local(view, stage, BREAKDOWN_SUFFIX)
              or relative_link(view, trace.get("breakdown_csv"))),
    ]


def _local(view: RunView, stage: str, suffix: str) -> tuple[str, bool] | None:
    """A stage's file in the run's stages/ folder (the documented layout, either form), when it is there."""
    found = stage_files(view.run_dir, stage, suffix)
    return (found[0].relative_to(view.run_dir).as_posix(), True) if found else None
