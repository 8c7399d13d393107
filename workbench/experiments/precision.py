"""fp32 against automatic mixed precision: throughput, peak memory, speedup and memory saved.

The AMP dtype is the device's capability decision (workbench.device.decide): bf16 on Ampere+ GPUs
and CPUs with native bf16, fp16 with a GradScaler on older GPUs. A CPU without native bf16 would
emulate it an order of magnitude slower, so there it is measured briefly, just enough to show it.
"""
from __future__ import annotations

from pathlib import Path

from workbench.config import RunConfig
from workbench.experiments import charts
from workbench.experiments.lab import Lab, Variant, budgeted, stderr_log
from workbench.run.stages import PROBE_TIMED_STEPS, PROBE_WARMUP_STEPS

BUDGET = {"warmup_steps": 3, "timed_steps": 10, "repeats": 1}  # rounds, not repeats, are the replicates
ROUNDS = 2
REFERENCE = "fp32"


def amp_variant(lab: Lab) -> Variant:
    """The AMP configuration this device should use, or a brief probe of emulated bf16 on a CPU."""
    caps = lab.caps
    if caps.amp_dtype:
        return lab.variant(f"amp ({caps.amp_dtype})", precision=caps.amp_dtype)
    if lab.device_type == "cpu":
        lab.note(f"AMP on this CPU: {caps.amp_reason}; bf16 measured briefly "
                 f"({PROBE_WARMUP_STEPS} warm-up + {PROBE_TIMED_STEPS} timed steps, one round).")
        return lab.variant("amp (bf16, emulated)", precision="bf16", repeats=1, warmup_steps=PROBE_WARMUP_STEPS,
                           timed_steps=min(lab.cfg.timed_steps, PROBE_TIMED_STEPS), rounds=1)
    return lab.variant("amp", skip=caps.amp_reason)


def _summary(rows: list[dict]) -> dict:
    fp32, amp = rows
    if fp32["status"] != "ok" or amp["status"] != "ok":
        return {"conclusion": "fp32 or AMP could not be measured; see the rows' reasons"}
    speed = amp["speedup"]
    saved = 1 - amp["peak_memory_mb"] / fp32["peak_memory_mb"] if fp32["peak_memory_mb"] > 0 else None
    if saved is None:
        saved_text = "memory change unknown"
    else:
        saved_text = f"{abs(saved):.0%} {'less' if saved >= 0 else 'more'} peak memory"
    return {"amp": amp["label"], "speedup": speed["ratio"], "speedup_ci95": [speed["ci95_low"], speed["ci95_high"]],
            "verdict": speed["verdict"], "memory_saved_fraction": saved,
            "memory_saved_mb": fp32["peak_memory_mb"] - amp["peak_memory_mb"],
            "final_loss": {"fp32": fp32["final_loss"], "amp": amp["final_loss"]},
            "conclusion": f"{amp['label']}: {speed['ratio']:.2f}x fp32 throughput ({speed['verdict']}), {saved_text}"}


def plot(doc: dict, out_dir: Path) -> Path:
    rows, reference = doc["rows"], doc["reference"]
    fig, (left, middle, right) = charts.figure(1, 3, "Automatic mixed precision against fp32", width=5.0)
    charts.throughput_panel(left, rows, reference)
    charts.memory_panel(middle, rows, reference)
    charts.speedup_panel(right, rows, reference, "Speedup vs fp32")
    charts.footnote(fig, " ".join(doc["notes"]))
    return charts.save(fig, out_dir, "amp_comparison.png")


def run(cfg: RunConfig, out_dir: Path, log=stderr_log, isolate: bool = True) -> dict:
    lab = Lab("precision", budgeted(cfg, **BUDGET), out_dir, log, isolate, title="Mixed precision",
              question="How much faster and leaner is autocast (AMP) than fp32 here?")
    lab.note("Weights, gradients and optimizer state stay fp32 under autocast: AMP saves activation memory only.")
    rows = lab.measure([lab.variant(REFERENCE, precision="fp32"), amp_variant(lab)], REFERENCE, ROUNDS)
    return lab.finish(_summary(rows), [plot(lab.doc, Path(out_dir))])
