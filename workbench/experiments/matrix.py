"""The Lightning lab's memory matrix: precision x micro-batch at one effective batch of 256.

Six short training runs of the lab's small CNN (conv 32-64-128, linear 512; AdamW lr 1e-3, weight
decay 0.01), each from the same seed and the same fixed number of optimizer steps, then validated on
the test split. The model has no BatchNorm, so accumulated micro-batches compute the big batch's
gradient exactly and accuracy differences are precision and noise, not normalization statistics.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from matplotlib.patches import Patch
from torch import nn

from workbench.report import plots
from workbench.config import RunConfig
from workbench.measure.executor import build, evaluate, measure_config
from workbench.experiments import charts
from workbench.experiments.lab import Lab, budgeted, stderr_log
from workbench.experiments.rows import value
from workbench.progress import Progress
from workbench.launch import SideSpec
from workbench.peaks import peak_for

LAB_MODEL = "workbench.experiments.matrix:lab_cnn"
LAB_BATCH = 256
# A short fixed schedule: 3 + 27 = 30 optimizer steps (about 1.5 epochs of the lab's CIFAR-10 would be
# 300; --warmup-steps / --timed-steps lengthen it). The first 3 steps train but are not timed.
BUDGET = {"warmup_steps": 3, "timed_steps": 27, "repeats": 1}


class LabCNN(nn.Module):
    """conv 32-64-128 (3x3, ReLU, 2x2 max-pool each), then linear 512 and the class head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers = []
        for c_in, c_out in ((3, 32), (32, 64), (64, 128)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        # 4x4 at CIFAR's 32 px (identity there); other image sizes keep the lab's 2048 features.
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * 16, 512), nn.ReLU(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def lab_cnn(num_classes: int = 10) -> nn.Module:
    """Model factory (cfg.model = 'workbench.experiments.matrix:lab_cnn')."""
    return LabCNN(num_classes)


def validate(built) -> dict:
    """Top-1 accuracy on the whole test split (the executor's own check looks at its first images only)."""
    started = time.perf_counter()
    samples = len(built.eval_data) if built.eval_data is not None else 0
    accuracy = evaluate(built, max_images=samples) if samples else None
    return {"accuracy": accuracy, "samples": samples, "split": "test", "eval_s": time.perf_counter() - started}


def measure(side: SideSpec) -> dict:
    """The measuring function (run in the measuring process): train the fixed schedule (timed), then validate."""
    cfg = RunConfig(**side.config)
    built = build(cfg, log=lambda m: print(f"[{side.stage}] {m}", file=sys.stderr, flush=True))
    peak, source = peak_for(cfg.precision, cfg.tf32, dict(side.peaks))
    trace_dir = Path(side.trace_dir) if side.trace_dir else None  # for the tensor-based peak
    raw = measure_config(built, trace_dir, peak, source, built.notes["rss_before_model_mb"], Progress(side.stage))
    raw["metrics"]["validation"] = validate(built)
    raw.update(status="measured", data=built.data_description)
    return raw


def matrix_configs(batch: int) -> list[tuple[str, int, bool]]:
    """(short name, micro-batch, mixed precision) in the lab's order."""
    half, quarter = batch // 2, batch // 4
    return [("STD", batch, False), ("MP", batch, True), (f"GA{batch}-{half}", half, False),
            (f"GA{batch}-{quarter}", quarter, False), (f"Comb{batch}-{half}", half, True),
            (f"Comb{batch}-{quarter}", quarter, True)]


def _variants(lab: Lab, batch: int) -> list:
    amp = lab.caps.amp_dtype
    no_amp = "" if amp else (f"no native mixed precision here ({lab.caps.amp_reason}); emulated it would "
                             "take an order of magnitude longer")
    return [lab.variant(name, skip=no_amp if mixed else "", measure=measure, precision=(amp or "fp32") if mixed else "fp32",
                        micro_batch_size=micro if micro != batch else 0) for name, micro, mixed in matrix_configs(batch)]


def _extra(variant, good: list[dict]) -> dict:
    cfg, last = variant.cfg, good[-1]["metrics"]
    return {"val_accuracy": last["validation"]["accuracy"], "val_samples": last["validation"]["samples"],
            "micro_batch": cfg.effective_micro_batch, "accumulation_steps": cfg.accumulation_steps,
            "precision": cfg.precision, "optimizer_steps": cfg.warmup_steps + cfg.timed_steps * cfg.repeats}


def _summary(rows: list[dict], std: str) -> dict:
    base = next((r for r in rows if r["label"] == std and r["status"] == "ok"), None)
    table = {r["label"]: {"val_accuracy": value(r, "extra", "val_accuracy"), "peak_memory_mb": r["peak_memory_mb"],
                          "memory_vs_std": (r["peak_memory_mb"] / base["peak_memory_mb"]
                                            if base and r["peak_memory_mb"] is not None and base["peak_memory_mb"] > 0 else None)}
             for r in rows}
    measured = [r for r in rows if r["status"] == "ok"]
    lowest = min(measured, key=lambda r: r["peak_memory_mb"], default=None)
    accuracies = [r["extra"]["val_accuracy"] for r in measured]
    text = (f"lowest peak memory: {lowest['label']}; validation accuracy spans {min(accuracies):.1%}-{max(accuracies):.1%}"
            if lowest else "nothing measured")
    return {"per_configuration": table, "lowest_peak": lowest["label"] if lowest else None, "conclusion": text}


PRECISION_COLORS = {"fp32": "#4C72B0", "mixed": "#55A868"}


def _bar_plot(doc: dict, out_dir: Path, path: tuple[str, ...], ylabel: str, title: str, name: str, fmt) -> Path:
    """One bar per run, coloured by precision (the matrix's other axis, micro-batch, is in the name)."""
    rows = doc["rows"]
    colors = [PRECISION_COLORS["fp32" if r["overrides"].get("precision") == "fp32" else "mixed"] for r in rows]
    fig, ax = charts.figure(1, 1, title, width=8.0, height=5.0)
    plots.bar_chart(ax, charts.labels(rows), [value(r, *path) for r in rows], colors=colors,
                    ylabel=ylabel, value_label=fmt, missing_label=charts.missing(rows))
    ax.legend(handles=[Patch(facecolor=c, label=k) for k, c in PRECISION_COLORS.items()], fontsize=8,
              loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    charts.footnote(fig, " ".join(doc["notes"]))
    return charts.save(fig, out_dir, name)


def run(cfg: RunConfig, out_dir: Path, log=stderr_log, isolate: bool = True, batch: int = LAB_BATCH,
        model: str = LAB_MODEL) -> dict:
    base = budgeted(cfg, **BUDGET).with_overrides(model=model, optimizer="adamw", lr=1e-3, batch_size=batch,
                                                   micro_batch_size=0, checkpointing="none", compile="none")
    lab = Lab("matrix", base, out_dir, log, isolate, title="Memory matrix (Lightning lab)",
              question="Do mixed precision and smaller micro-batches lower peak memory without hurting accuracy?")
    lab.measure_memory_from_tensors()
    steps = base.warmup_steps + base.timed_steps * base.repeats
    lab.doc["settings"].update(effective_batch=batch, lab_batch=LAB_BATCH, optimizer_steps=steps, model=model)
    lab.note(f"Each run trains {steps} optimizer steps at effective batch {batch} "
             f"(about {steps * batch / lab.dataset_size:.2f} epochs), then validates on the full test split."
             + ("" if batch == LAB_BATCH else f" Batch scaled from the lab's {LAB_BATCH} to {batch}."))
    if "synthetic" in lab.doc["data"]:
        lab.note("Accuracy is on the synthetic stand-in data (one faint colour pattern per class under "
                 "noise), not CIFAR-10: it shows whether a setting still learns, not CIFAR-10 accuracy.")
    if lab.caps.amp_dtype:
        lab.note(f"Mixed precision here is {lab.caps.amp_dtype} autocast (the lab's '16-mixed' is fp16 on a GPU).")
    rows = lab.measure(_variants(lab, batch), "STD", rounds=1, extra=_extra)
    kinds = {r["peak_memory_kind"] for r in rows if r["peak_memory_kind"]}
    lab.note("Peak memory: " + "; ".join(sorted(kinds)) + "." if kinds else "No peak memory was measured.")
    out_dir = Path(out_dir)
    plots_made = [_bar_plot(lab.doc, out_dir, ("extra", "val_accuracy"), "validation accuracy (test split)",
                            "Validation accuracy after the fixed schedule", "matrix_accuracy.png", "{:.1%}".format),
                  _bar_plot(lab.doc, out_dir, ("peak_memory_mb",), "peak memory (MiB)",
                            "Peak memory per configuration", "matrix_memory.png", "{:.0f}".format)]
    return lab.finish(_summary(rows, "STD"), plots_made)
