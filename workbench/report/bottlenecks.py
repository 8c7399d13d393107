"""optimization_report.md, part 2: Bottlenecks Identified, from the baseline's trace and metrics.

Each claim carries its evidence (the measured share, time or size) and, where the verdict comes from
a rule, the threshold of the rule in workbench/trace/diagnose.py that judged it, so report and diagnosis
never disagree about what counts as a bottleneck. An --nproc run's baseline adds its ranks side by side
and the straggler, read from its rank traces (workbench/trace/ranks.py).
"""
from __future__ import annotations

import zlib
from pathlib import Path

from workbench.trace import diagnose, ranks, regions
from workbench.report.markdown import bullet, plain, show, table
from workbench.report.table import RunView

TOP_OPS_SHOWN = 3


def bottlenecks(view: RunView) -> list[str]:
    lines = ["## Bottlenecks Identified", ""]
    base = view.baseline
    if base is None:
        return lines + ["No baseline was measured, so there is no trace to diagnose.", ""]
    result, summary = view.result(base["stage"]), view.summary(base["stage"])
    source = (f"the baseline trace ({summary.get('steps', 'n/a')} profiled steps, "
              f"{show('ms', summary.get('step_time_ms'), ' ms')} per profiled step)"
              if summary else "the baseline's measurements (no trace summary was recorded)")
    lines += [f"Evidence below comes from {source}; timing and tracing were separate passes.", ""]
    lines += data_loading_block(summary, result)
    lines += compute_block(base, summary, result, view)
    lines += memory_block(base, result, view)
    lines += ranks_block(result, view.run_dir)
    return lines + findings_block(result, summary is not None)


def _no_trace(result: dict, unknown: str) -> str:
    error = (result.get("trace") or {}).get("analysis_error")
    why = f"its analysis failed: {error}" if error else "trace capture was off or did not finish"
    return bullet("Trace", f"no trace summary was recorded for the baseline ({why}), "
                           f"so {unknown} is unknown.")


def _share_ms(summary: dict, key: str) -> str:
    share = (summary.get("breakdown_share") or {}).get(key)
    ms = (summary.get("breakdown_ms") or {}).get(key)
    return f"{show('pct', _percent(share), '%')} ({show('ms', ms, ' ms')})"


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else fraction * 100.0


def data_loading_block(summary: dict | None, result: dict) -> list[str]:
    lines = ["### Data loading", ""]
    if not summary:
        return lines + [_no_trace(result, "the time spent waiting for data"), ""]
    share = (summary.get("breakdown_share") or {}).get(regions.DATA_LOADING, 0.0)
    limit = diagnose.DATA_LOADING_SHARE_MAX
    workers = (result.get("config") or {}).get("num_workers")
    verdict = ("above" if share > limit else "within") + f" the {show('pct', limit * 100, '%')} the " \
              "data_loading rule allows" + (": the loop waits for input" if share > limit else "")
    return lines + [
        bullet("Waiting for the next batch", f"{_share_ms(summary, 'data_loading')} of the step "
               f"with num_workers={plain(workers)}; {verdict}."),
        bullet("Host-to-device copies", f"{_share_ms(summary, 'host_to_device')} of the step."), ""]


def compute_block(base: dict, summary: dict | None, result: dict, view: RunView) -> list[str]:
    lines = ["### Compute", ""]
    if summary:
        parts = (*regions.COMPUTE_PARTS, regions.OTHER)
        lines.append(bullet("Step breakdown", ", ".join(
            f"{part.replace('_', ' ')} {_share_ms(summary, part)}" for part in parts) + "."))
        lines.append(bullet("Compute share", _compute_share(summary)))
        lines.append(bullet("Device utilization", _device_line(summary, view)))
        lines.append(bullet(f"Top {TOP_OPS_SHOWN} operators by self time", _top_ops(summary)))
    else:
        lines.append(_no_trace(result, "the split between forward, backward and optimizer"))
    metrics = result.get("metrics") or {}
    lines.append(bullet("Model FLOPs utilization", f"{show('pct', base.get('mfu_percent'), '%')} of "
                        f"{plain(metrics.get('peak_flops_source') or 'an unrecorded peak')}."))
    return lines + [""]


def _compute_share(summary: dict) -> str:
    shares = summary.get("breakdown_share") or {}
    share = sum(shares.get(p, 0.0) for p in regions.COMPUTE_PARTS)
    limit = diagnose.COMPUTE_BOUND_SHARE
    side = "above" if share > limit else "below"
    meaning = "compute-bound: input-pipeline stages cannot help" if share > limit else \
        "not yet compute-bound: time outside forward, backward and optimizer is worth removing first"
    return (f"forward + backward + optimizer take {show('pct', share * 100, '%')} of the step, {side} "
            f"the {show('pct', limit * 100, '%')} of the compute_bound rule: {meaning}.")


def _device_line(summary: dict, view: RunView) -> str:
    device = summary.get("device")
    if not device:
        env = view.run.get("environment") or {}
        if env.get("device_type") == "cpu":
            return "not applicable: this is a CPU run, so the trace has no device timeline."
        return "the trace holds no device activity, so utilization is unknown."
    busy = device.get("busy_share", 0.0) * 100
    band = "above 80%: the device is kept busy" if busy > 80 else \
        "below 50%: the device waits most of the time" if busy < 50 else "between 50% and 80%"
    return (f"busy {show('pct', busy, '%')} of the profiled window ({band}); idle limit of the "
            f"device_idle rule: {show('pct', diagnose.DEVICE_IDLE_SHARE_MAX * 100, '%')}.")


def _top_ops(summary: dict) -> str:
    ops = summary.get("top_ops") or []
    gpu = [op for op in ops if op.get("device") == "gpu"]
    chosen = sorted(gpu or ops, key=lambda op: -op.get("self_ms", 0.0))[:TOP_OPS_SHOWN]
    if not chosen:
        return "the trace summary lists no operators."
    where = "GPU kernels" if gpu else "CPU operators"
    steps = summary.get("steps", "n/a")
    items = [f"`{op['name']}` {show('ms', op.get('self_ms'), ' ms')} "
             f"({show('pct', op.get('share', 0.0) * 100, '%')} of {where.split()[0]} time, "
             f"{op.get('calls', 'n/a')} calls)" for op in chosen]
    return "; ".join(items) + f", summed over the {steps} profiled steps."


def memory_block(base: dict, result: dict, view: RunView) -> list[str]:
    metrics = result.get("metrics") or {}
    lines = ["### Memory", "",
             bullet("Peak memory", f"{show('mb', base.get('peak_memory_mb'), ' MiB')}, measured as "
                    f"{plain(base.get('peak_memory_kind') or 'an unrecorded kind')}.")]
    lines += _breakdown_lines(metrics.get("memory_breakdown_mb") or {})
    capacity = (view.run.get("environment") or {}).get("device_memory_mb")
    if capacity and base.get("peak_memory_mb") is not None:
        lines.append(bullet("Headroom", f"{show('pct', base['peak_memory_mb'] / capacity * 100, '%')} "
                            f"of the device's {show('mb', capacity, ' MiB')} in use at the peak."))
    return lines + [""]


def _breakdown_lines(parts: dict) -> list[str]:
    total = sum(v for v in parts.values() if v)
    if not total:
        return [bullet("Where it goes", "no memory breakdown was recorded for the baseline.")]
    shares = ", ".join(f"{k.replace('_', ' ')} {show('mb', v, ' MiB')} ({show('pct', v / total * 100, '%')})"
                       for k, v in parts.items())
    return [bullet("Where it goes", shares + " (per stage: [memory_breakdown_stages.png](memory_breakdown_stages.png))."),
            _activation_reading((parts.get("activations_and_other") or 0.0) / total)]


def _activation_reading(share: float) -> str:
    if share > 0.5:
        return bullet("Reading", "Activations (and other transient buffers) are the largest part, "
                      "which is what accumulation, checkpointing and AMP reduce.")
    return bullet("Reading", "Weights, gradients and optimizer state are the larger part, so "
                  "activation-side stages "
            "(accumulation, checkpointing) can save little.")


def findings_block(result: dict, traced: bool) -> list[str]:
    lines = ["### Findings", ""]
    findings = result.get("findings") or []
    if not findings:
        why = "no rule in workbench/trace/diagnose.py fired on the baseline trace" if traced else \
            "no trace summary, so the diagnosis rules did not run"
        return lines + [f"No findings: {why}.", ""]
    return lines + [_finding_line(finding) for finding in findings] + [""]


def _finding_line(finding: dict) -> str:
    return (f"- **{finding.get('rule')}** ({finding.get('severity')}): {finding.get('evidence')} "
            f"Measured {plain(finding.get('value'))} against a threshold of "
            f"{plain(finding.get('threshold'))}. Action: {finding.get('action')}")


# The per-rank table's columns: (heading, key of a ranks.rank_row), ms per step.
RANK_COLUMNS = (("step", "step_ms"), ("data loading", "data_loading_ms"), ("backward", "backward_ms"),
                ("in collectives", "collective_ms"), ("waiting in them", "waiting_ms"), ("own work", "work_ms"))


def ranks_block(result: dict, run_dir: Path) -> list[str]:
    """An --nproc run: the baseline's ranks side by side and the findings across them (trace/ranks.py),
    read from the rank traces beside the baseline's trace while they are on disk (a run folder copied
    without its profiles has none: then the block is left out)."""
    try:
        reading = _rank_reading(result.get("trace_file"), run_dir)
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as error:  # a damaged trace
        return ["### Ranks", "", bullet("Rank traces", f"could not be read ({type(error).__name__}: "
                                        f"{str(error)[:200]}), so no straggler can be named."), ""]
    if not reading:
        return []
    rows = [[str(row["rank"]), *(show("ms", row[key], "") for _, key in RANK_COLUMNS)] for row in reading["ranks"]]
    lines = ["### Ranks", "", "Per profiled step, ms; own work is the step minus the time waiting in collectives.", ""]
    lines += table(["rank", *(head for head, _ in RANK_COLUMNS)], rows) + [""]
    if not reading["findings"]:
        lines.append("No straggler (no rank's own work stands out), and communication is small or hidden.")
    return lines + [_finding_line(finding) for finding in reading["findings"]] + [""]


def _rank_reading(trace_file: str | None, run_dir: Path) -> dict | None:
    """The per-rank reading of the folder holding trace_file (as recorded: from the working directory,
    or from the run's root), or None when it does not hold one trace per rank."""
    if not trace_file:
        return None
    for folder in (Path(trace_file).parent, Path(run_dir).parent.parent / Path(trace_file).parent):
        if folder.is_dir():
            return ranks.read_folder(folder)
    return None
