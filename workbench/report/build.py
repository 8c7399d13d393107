"""A run's report from its files alone: CSV, dashboard, markdown, a training script, reports/latest.

`build_report(run_dir)` reads run.json and stages/*.json (plus the trace summaries next to them),
never torch, and writes everything into the run folder. It works for any prefix of a run: a failed
stage, a skipped one, or a run that stopped after its baseline all produce a complete report.
"""
from __future__ import annotations

import json
import math
import os
import re
import string
import textwrap
from pathlib import Path

from workbench.config import optimizer_lr
from workbench.report import budget, changes, plots
from workbench.report.advice import lessons_section, recommendations_section
from workbench.report.bottlenecks import bottlenecks
from workbench.report.markdown import (CSV_NAME, DASHBOARD_NAME, REPORT_NAME, SCRIPT_NAME, device_name,
                                       environment, environment_section, executive_summary, links_section, script_name,
                                       speedup_text, throughput_text)
from workbench.report.stages import optimizations_section
from workbench.report.experiments import experiments_section
from workbench.report.memory import MEMORY_CHART_NAME, TIMELINE_CHART_NAME, memory_chart, timeline_chart, timeline_lines
from workbench.report.table import RunView, fmt, load_view, write_csv
from workbench.report.verdicts import ceiling_lines, verdicts_section
from workbench.results import LATEST_FILE, LATEST_LINK, write_text_atomic

TEMPLATE = Path(__file__).with_name("templates") / "optimized_training.py.tmpl"


def build_report(run_dir: Path) -> list[Path]:
    """Write the CSV, dashboard, markdown report and optimized script; point reports/latest here."""
    # Resolved, so a run reached through reports/latest is written (and linked) as itself.
    view = load_view(Path(run_dir).resolve())
    written = [
        write_csv(view.records, view.run_dir / CSV_NAME),
        plots.dashboard(view.records, view.run_dir / DASHBOARD_NAME,
                        f"Optimization dashboard: {run_name(view)}", _frontier_panel(view)),
        write_text_atomic(view.run_dir / REPORT_NAME, render_markdown(view)),
        _write_script(view),
    ]
    charts = [memory_chart(view.results, view.run_dir / MEMORY_CHART_NAME),
              budget.frontier_chart(view, view.run_dir / budget.FRONTIER_NAME),
              timeline_chart(view.results, view.run_dir / TIMELINE_CHART_NAME)]
    point_latest(view.run_dir)
    return written + [chart for chart in charts if chart]


def _write_script(view: RunView) -> Path:
    """optimized_training.py for an image run; for a language model, the changes to make in your own loop."""
    if script_name(view) == SCRIPT_NAME:
        return write_text_atomic(view.run_dir / SCRIPT_NAME, render_script(view))
    cfg = _final_config(view)
    model = str(cfg.get("model", "your model"))
    text = changes.render(cfg, model, script_provenance(view)["provenance"].replace("\n", " "))
    return write_text_atomic(view.run_dir / changes.CHANGES_NAME, text)


def _final_config(view: RunView) -> dict:
    final = view.final
    result = view.result(final["stage"]) if final else None
    return (result or {}).get("config") or view.run.get("config") or {}


def _frontier_panel(view: RunView):
    """The dashboard's frontier panel, for a run with a memory budget (None otherwise)."""
    budget_mib, entry = budget.budget_of(view)
    if budget_mib is None:
        return None
    return lambda ax: budget.frontier_panel(ax, budget.points(view), budget_mib, entry.get("chosen"))


def run_name(view: RunView) -> str:
    return str(view.run.get("run") or view.run_dir.name)


def render_markdown(view: RunView) -> str:
    sections = [["# Optimization Report", ""], budget.first_lines(view), executive_summary(view), bottlenecks(view),
                ceiling_lines(view), optimizations_section(view), budget.section(view),
                budget.predictions_section(view), timeline_lines(view.results), verdicts_section(view), experiments_section(view), recommendations_section(view),
                lessons_section(view), environment_section(view), links_section(view)]
    return "\n".join(line for section in sections for line in section).rstrip() + "\n"


# --- optimized_training.py ------------------------------------------------------------------

def _checkpoint_blocks(mode: str) -> int:
    """The script's CHECKPOINT_BLOCKS: 0 (none), K (blocks:K) or all five of a ResNet (blocks)."""
    if mode in (None, "none"):
        return 0
    head, _, count = mode.partition(":")
    return int(count) if count.isdigit() else 5


def script_settings(view: RunView) -> dict[str, str]:
    """Template fields, as Python literals, from the optimized configuration (or the run's base)."""
    final = view.final
    cfg = _final_config(view)
    batch = int(cfg.get("batch_size", 32))
    micro = int(cfg.get("micro_batch_size") or batch)
    compile_mode = cfg.get("compile", "none")
    values = {
        "model_name": str(cfg.get("model", "resnet18")), "image_size": int(cfg.get("image_size", 224)),
        "batch_size": batch, "accumulation_steps": max(batch // micro, 1),
        "num_workers": int(cfg.get("num_workers", 0)), "pin_memory": bool(cfg.get("pin_memory", False)),
        "persistent_workers": bool(cfg.get("persistent_workers", False)),
        "prefetch_factor": int(cfg.get("prefetch_factor") or 2),
        "precision": str(cfg.get("precision", "fp32")),
        "tf32": bool(cfg.get("tf32", False)), "channels_last": cfg.get("memory_format") == "channels_last",
        "checkpoint_blocks": _checkpoint_blocks(cfg.get("checkpointing", "none")),
        "compile_mode": None if compile_mode in (None, "none") else str(compile_mode),
        "optimizer": str(cfg.get("optimizer", "adam")),
        "lr": optimizer_lr(str(cfg.get("optimizer", "adam")), float(cfg.get("lr", 1e-4))),
        "fused_optimizer": bool(cfg.get("fused_optimizer", False)),
        "retain_host_memory": cfg.get("host_allocator", "system") == "retain",
    }
    fields = {key: literal(value) for key, value in values.items()}
    fields["measured_throughput"] = literal(_measured_text(final))
    return {**fields, "model_title": docstring_safe(values["model_name"]), "device_expr": _device_expr(view, cfg)}


def docstring_safe(text: str) -> str:
    """Text for the script's docstring: a recorded value must never close the string or escape it."""
    return re.sub(r"[^A-Za-z0-9_.:/ -]", "_", text)[:200]


def _measured_text(final: dict | None) -> str:
    """The optimized throughput as the report prints it, for the script to print beside its own."""
    if not final or final.get("throughput_samples_per_s") is None:
        return "no throughput (nothing was measured)"
    low, high = final.get("throughput_ci95_low"), final.get("throughput_ci95_high")
    tokens = final.get("throughput_tokens_per_s")
    in_tokens = f" ({fmt('rate', tokens)} tokens/s)" if tokens is not None else ""
    return (f"{fmt('rate', final['throughput_samples_per_s'])} samples/s{in_tokens} "
            f"(95% CI {fmt('rate', low)}-{fmt('rate', high)} samples/s) on {final.get('stage')}")


def literal(value) -> str:
    """Python source for a setting: strings in double quotes (JSON escapes are valid Python), like
    the rest of the script; never a value pasted as code."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f'float("{value}")'  # repr(nan) is `nan`, a name the script does not define
    return repr(value)


def _device_expr(view: RunView, cfg: dict) -> str:
    measured = environment(view).get("device_type")
    if measured:
        return literal(str(measured))
    if cfg.get("device") not in (None, "auto"):
        return literal(str(cfg["device"]))
    return '"cuda" if torch.cuda.is_available() else "cpu"'


def script_provenance(view: RunView) -> dict[str, str]:
    """The docstring paragraph saying where the settings came from and what they measured."""
    final, base = view.final, view.baseline
    if final is None:
        source, measured = "no stage was measured: these are the run's starting settings", "nothing"
    elif final is base:
        source = "no stage beat the baseline: these are the baseline settings"
        measured = throughput_text(final)
    else:
        source = f"last kept stage: {final['stage']}; applied: {final.get('applied')}"
        measured = f"{throughput_text(final)}, {speedup_text(final, 'speedup_vs_baseline')} over the baseline"
    text = (f"Generated by `workbench report` from run {run_name(view)} ({source}). "
            f"Measured on {device_name(view)}: {measured}.")
    # The paragraph lands inside the script's docstring: keep it from closing the string.
    text = text.replace("\\", "/").replace('"""', "'''")
    text = "".join(ch if ch.isprintable() else "_" for ch in text)
    return {"provenance": textwrap.fill(text, width=100, break_on_hyphens=False)}


def render_script(view: RunView) -> str:
    template = string.Template(TEMPLATE.read_text())
    return template.substitute({**script_settings(view), **script_provenance(view)})


# --- reports/latest --------------------------------------------------------------------------

def point_latest(run_dir: Path) -> Path:
    """Point <reports>/latest at this run: a relative symlink swapped in atomically.

    Where symlinks cannot be made (some filesystems, Windows without privileges), write a LATEST
    file holding the run's folder name instead.
    """
    run_dir = Path(run_dir).resolve()  # via reports/latest itself, the link must not point at itself
    link = run_dir.parent / LATEST_LINK
    tmp = run_dir.parent / f".{LATEST_LINK}.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(run_dir.name, tmp, target_is_directory=True)
        os.replace(tmp, link)  # atomic: readers see the old run or the new one, never no link
        return link
    except (OSError, NotImplementedError):
        tmp.unlink(missing_ok=True)
        return write_text_atomic(run_dir.parent / LATEST_FILE, run_dir.name + "\n")
    except BaseException:  # Ctrl-C between link and rename: no stray link stays behind
        tmp.unlink(missing_ok=True)
        raise
