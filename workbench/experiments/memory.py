"""Memory experiments: accumulation and checkpointing trade-offs, and where the memory goes.

Both run with AMP where the device does it natively, as the lab's memory part does (autocast on top
of fp32 weights); a configuration's precision is in its overrides.
"""
from __future__ import annotations

from pathlib import Path

from workbench.config import RunConfig
from workbench.experiments import charts
from workbench.experiments.lab import Lab, budgeted, stderr_log
from workbench.experiments.rows import value
from workbench.report.plots import BREAKDOWN_COLORS, stacked_bars

ACCUMULATION = (1, 2, 4, 8)
BREAKDOWN_ACCUMULATION = 4
# Memory is the point here, not fine speed differences: one round of 2 + 8 x 2 steps per configuration.
BUDGET = {"warmup_steps": 2, "timed_steps": 8, "repeats": 1}  # rounds, not repeats, are the replicates
BREAKDOWN_BUDGET = {"warmup_steps": 2, "timed_steps": 5, "repeats": 1}
PARTS = (("weights", "weights"), ("gradients", "gradients"), ("optimizer_state", "optimizer state"),
         ("activations_and_other", "activations + other"))
BATCHNORM_NOTE = ("Accumulation with BatchNorm normalizes each micro-batch on its own statistics, so it is not "
                  "numerically the big batch; checkpointing re-runs BatchNorm in backward and updates its "
                  "running statistics twice (pytorch issue 96136).")


def precision_for(lab: Lab) -> str:
    """The user's precision if not fp32, else the device's native AMP dtype, else fp32."""
    return lab.cfg.precision if lab.cfg.precision != "fp32" else (lab.caps.amp_dtype or "fp32")


def _accumulation_variant(lab: Lab, steps: int, precision: str, label: str | None = None):
    batch = lab.cfg.batch_size
    fits = batch % steps == 0
    skip = "" if fits else f"batch_size={batch} cannot be split into {steps} equal micro-batches"
    return lab.variant(label or f"accumulation={steps}", skip=skip, precision=precision,
                       micro_batch_size=batch // steps if fits else 0, checkpointing="none")


def _memory_extra(variant, good: list[dict]) -> dict:
    cfg = variant.cfg
    return {"effective_batch": cfg.batch_size, "micro_batch": cfg.effective_micro_batch,
            "accumulation_steps": cfg.accumulation_steps, "precision": cfg.precision,
            "optimizer_steps_per_round": cfg.warmup_steps + cfg.timed_steps * cfg.repeats}


def _saving(row: dict, reference: dict | None) -> float | None:
    ref = value(reference or {}, "peak_memory_mb")
    mine = value(row, "peak_memory_mb")
    return None if not ref or mine is None else 1 - mine / ref


def _memory_summary(rows: list[dict]) -> dict:
    reference = rows[0]
    table = {r["label"]: {"memory_saved_fraction": _saving(r, reference), "speedup": value(r, "speedup", "ratio"),
                          "verdict": value(r, "speedup", "verdict")} for r in rows[1:]}
    lowest = min((r for r in rows if r["status"] == "ok"), key=lambda r: r["peak_memory_mb"], default=None)
    saved = _saving(lowest, reference) if lowest else None
    text = (f"lowest peak memory: {lowest['label']} ({lowest['peak_memory_mb']:.0f} MiB"
            + (f", {saved:.0%} below {reference['label']})" if saved is not None else ")")) if lowest else "nothing measured"
    return {"against": reference["label"], "per_configuration": table,
            "lowest_peak": lowest["label"] if lowest else None, "conclusion": text}


def _pair_plot(doc: dict, labels: list[str], title: str, out_dir: Path, name: str) -> Path:
    rows = [r for r in doc["rows"] if r["label"] in labels]
    fig, (left, right) = charts.figure(1, 2, title)
    charts.memory_panel(left, rows, doc["reference"], "Peak memory")
    charts.throughput_panel(right, rows, doc["reference"])
    kind = rows[0]["peak_memory_kind"] if rows else None
    charts.footnote(fig, f"Peak memory: {kind}." if kind else "")
    return charts.save(fig, out_dir, name)


def run(cfg: RunConfig, out_dir: Path, log=stderr_log, isolate: bool = True) -> dict:
    lab = Lab("memory", budgeted(cfg, **BUDGET), out_dir, log, isolate, title="Accumulation and checkpointing",
              question="How much peak memory do gradient accumulation and activation checkpointing save, at what cost?")
    precision = precision_for(lab)
    lab.note(f"All configurations at precision={precision} and one effective batch of {lab.cfg.batch_size}.")
    lab.note(BATCHNORM_NOTE)
    lab.measure_memory_from_tensors()
    variants = [_accumulation_variant(lab, k, precision) for k in ACCUMULATION]
    variants.append(lab.variant("checkpointing", precision=precision, micro_batch_size=0, checkpointing="blocks"))
    rows = lab.measure(variants, "accumulation=1", rounds=1, extra=_memory_extra)
    lab.note("checkpointing_comparison.png compares 'checkpointing' with 'accumulation=1' (standard).")
    out_dir = Path(out_dir)
    plots = [_pair_plot(lab.doc, [f"accumulation={k}" for k in ACCUMULATION],
                        f"Gradient accumulation at effective batch {lab.cfg.batch_size}", out_dir,
                        "accumulation_comparison.png"),
             _pair_plot(lab.doc, ["accumulation=1", "checkpointing"], "Activation checkpointing", out_dir,
                        "checkpointing_comparison.png")]
    return lab.finish(_memory_summary(rows), plots)


def _breakdown_variants(lab: Lab) -> list:
    amp = lab.caps.amp_dtype
    no_amp = "" if amp else f"no native AMP here ({lab.caps.amp_reason})"
    plain = {"precision": "fp32", "micro_batch_size": 0, "checkpointing": "none"}
    return [lab.variant("baseline", **plain),
            lab.variant(f"amp ({amp or 'none'})", skip=no_amp, **{**plain, "precision": amp or "fp32"}),
            _accumulation_variant(lab, BREAKDOWN_ACCUMULATION, "fp32", f"accumulation x{BREAKDOWN_ACCUMULATION}"),
            lab.variant("checkpointing", **{**plain, "checkpointing": "blocks"})]


def _peak_below_tensors(row: dict) -> bool:
    parts = row.get("memory_breakdown_mb") or {}
    tensors = sum(v for k, v in parts.items() if k != "activations_and_other")
    return row["peak_memory_mb"] is not None and row["peak_memory_mb"] < tensors


def plot_breakdown(doc: dict, out_dir: Path) -> Path:
    rows = doc["rows"]
    series = {name: [value(r, "memory_breakdown_mb", key) for r in rows] for key, name in PARTS}
    totals = [None if r["peak_memory_mb"] is None else f"peak {r['peak_memory_mb']:.0f} MiB" for r in rows]
    fig, ax = charts.figure(1, 1, "Where training memory goes", width=8.0, height=5.0)
    stacked_bars(ax, charts.labels(rows), series, ylabel="MiB", title="weights, gradients, optimizer state "
                 "(from the tensors) and the rest of the measured peak", colors=BREAKDOWN_COLORS, totals=totals)
    charts.footnote(fig, " ".join(doc["notes"]))
    return charts.save(fig, out_dir, "memory_breakdown.png")


def run_breakdown(cfg: RunConfig, out_dir: Path, log=stderr_log, isolate: bool = True) -> dict:
    lab = Lab("memory_breakdown", budgeted(cfg, **BREAKDOWN_BUDGET), out_dir, log, isolate,
              title="Memory breakdown", question="Weights, gradients, optimizer state or activations: what fills memory?")
    lab.measure_memory_from_tensors()
    lab.note("Weights, gradients and optimizer state are summed from the tensors; 'activations + other' is the "
             "measured peak minus those (on a CPU it also holds the batch, allocator slack and library buffers).")
    rows = lab.measure(_breakdown_variants(lab), "baseline", rounds=1)
    summary = {r["label"]: r.get("memory_breakdown_mb") for r in rows}
    under = [r["label"] for r in rows if _peak_below_tensors(r)]
    if under:
        lab.note(f"Measured peak below the tensors' own sum for {', '.join(under)}: that figure undercounts "
                 "(e.g. memory allocated before the measurement started), so 'activations + other' shows 0.")
    return lab.finish({"breakdown_mb": summary, "peak_memory_kind": rows[0]["peak_memory_kind"],
                       "conclusion": _breakdown_conclusion(summary.get("baseline"))},
                      [plot_breakdown(lab.doc, Path(out_dir))])


def _breakdown_conclusion(parts: dict | None) -> str:
    if not parts:
        return "the baseline could not be measured"
    largest = max(parts, key=parts.get)
    listed = ", ".join(f"{name} {parts[key]:.0f}" for key, name in PARTS)
    return f"baseline (MiB): {listed}; largest: {largest.replace('_', ' ')}"
