"""Gradient clipping: by norm (0.5, 1, 2) and by value, against none.

Each configuration is timed with only its clipping call in the step (the cost is honest), then runs
an untimed pass of the same length that records the gradient norm before and after clipping and the
largest gradient element, so the statistics describe the same training run without slowing its clock.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from workbench.report import plots
from workbench.config import RunConfig
from workbench.measure.executor import build, measure_config
from workbench.experiments import charts
from workbench.experiments.lab import Lab, budgeted, stderr_log
from workbench.experiments.rows import series_stats, value
from workbench.progress import Progress
from workbench.trace.regions import OPTIMIZER_STEP
from workbench.training.step import TrainStep, region
from workbench.launch import SideSpec
from workbench.peaks import peak_for

CLIPS = (("none", "none", None), ("norm 0.5", "norm", 0.5), ("norm 1", "norm", 1.0), ("norm 2", "norm", 2.0),
         ("value 0.1", "value", 0.1))
BUDGET = {"warmup_steps": 3, "timed_steps": 10, "repeats": 1}  # rounds, not repeats, are the replicates
ROUNDS = 2


class ClipStep(TrainStep):
    """TrainStep whose optimizer step clips gradients, and records norms while `record` is on."""

    def __init__(self, model, optimizer, settings, method: str, threshold: float | None) -> None:
        super().__init__(model, optimizer, settings)
        self.method, self.threshold = method, threshold
        self.record, self.norms = False, []

    def _clip(self, params: list[torch.Tensor]) -> None:
        if self.method == "norm":
            nn.utils.clip_grad_norm_(params, self.threshold)
        elif self.method == "value":
            nn.utils.clip_grad_value_(params, self.threshold)

    def _optimizer_step(self) -> None:
        with region(OPTIMIZER_STEP, self.annotate):
            self.scaler.unscale_(self.optimizer)  # clip true gradients, not loss-scaled ones (fp16)
            params = [p for p in self.model.parameters() if p.grad is not None]
            before = self._norms(params) if self.record else None
            self._clip(params)
            if self.record:
                self.norms.append(torch.stack([before[0], self._norms(params)[0], before[1]]))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def _norms(params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Total L2 norm of the gradients and their largest absolute element (no host sync)."""
        grads = [p.grad.detach() for p in params]
        return nn.utils.get_total_norm(grads), torch.stack([g.abs().max() for g in grads]).max()


def _norm_pass(built, steps: int, progress: Progress) -> dict:
    built.step.record = True
    for i in range(steps):
        built.step(*built.stream.next())
        progress.update("gradient-norm pass", i + 1, steps)
    table = torch.stack(built.step.norms).float().cpu().tolist()
    return {"before": [r[0] for r in table], "after": [r[1] for r in table], "max_abs_before": [r[2] for r in table]}


def measure(side: SideSpec) -> dict:
    """The measuring function (run in the measuring process) for one clipping configuration."""
    cfg, extra = RunConfig(**side.config), side.options
    built = build(cfg, log=lambda m: print(f"[{side.stage}] {m}", file=sys.stderr, flush=True))
    built.step = ClipStep(built.model, built.optimizer, built.step.settings, extra["method"], extra["threshold"])
    peak, source = peak_for(cfg.precision, cfg.tf32, dict(side.peaks))
    progress = Progress(side.stage)
    raw = measure_config(built, None, peak, source, built.notes["rss_before_model_mb"], progress)
    raw["metrics"]["grad_norms"] = _norm_pass(built, extra["norm_steps"], progress)
    raw.update(status="measured", data=built.data_description)
    return raw


def _extra(variant, good: list[dict]) -> dict:
    """Norm statistics over every recorded step of every round, and how often clipping bit."""
    method, threshold = variant.extra["method"], variant.extra["threshold"]
    norms = {key: [x for raw in good for x in raw["metrics"]["grad_norms"][key]]
             for key in ("before", "after", "max_abs_before")}
    trigger = {"norm": norms["before"], "value": norms["max_abs_before"]}.get(method, [])
    clipped = sum(x > threshold for x in trigger) / len(trigger) if trigger else 0.0
    return {"method": method, "threshold": threshold, "clipped_fraction": clipped,
            "grad_norm_before": series_stats(norms["before"]), "grad_norm_after": series_stats(norms["after"]),
            "max_abs_grad_before": series_stats(norms["max_abs_before"])}


def relative_step_time(row: dict) -> tuple[float | None, tuple[float, float] | None]:
    """Step time as a multiple of no clipping (1 / speedup), with the inverted interval."""
    speed = row.get("speedup")
    if not speed:
        return None, None
    return 1 / speed["ratio"], (1 / speed["ci95_high"], 1 / speed["ci95_low"])


def _summary(rows: list[dict]) -> dict:
    table = {}
    for r in rows:
        cost, _ = relative_step_time(r)
        table[r["label"]] = {"clipped_fraction": value(r, "extra", "clipped_fraction"),
                             "mean_norm_before": value(r, "extra", "grad_norm_before", "mean"),
                             "mean_norm_after": value(r, "extra", "grad_norm_after", "mean"),
                             "step_time_cost_fraction": None if cost is None else cost - 1,
                             "verdict": value(r, "speedup", "verdict")}
    return {"per_configuration": table, "conclusion": _conclusion(table)}


def _conclusion(table: dict) -> str:
    """How often each setting clipped, the typical pre-clip norm, and which ones cost measurable time."""
    clipped = ", ".join(f"{label} {t['clipped_fraction']:.0%}" for label, t in table.items()
                        if label != "none" and t["clipped_fraction"] is not None)
    norm = table.get("none", {}).get("mean_norm_before")
    slower = [label for label, t in table.items() if t["verdict"] == "slower"]
    return (f"steps clipped: {clipped or 'n/a'}"
            + (f"; unclipped gradient norm averages {norm:.3g}" if norm is not None else "")
            + (f"; measurably slower than none: {', '.join(slower)}" if slower else "; no measurable cost in step time"))


def _grouped_norms(ax, rows: list[dict]) -> None:
    """Mean gradient norm before and after clipping per configuration; dots mark the maxima."""
    x = range(len(rows))
    for offset, key, label, color in ((-0.2, "grad_norm_before", "before", "#4C72B0"),
                                      (0.2, "grad_norm_after", "after", "#55A868")):
        means = [value(r, "extra", key, "mean") or 0.0 for r in rows]
        maxima = [value(r, "extra", key, "max") for r in rows]
        ax.bar([i + offset for i in x], means, width=0.4, color=color, label=f"{label} (mean)", zorder=2)
        ax.scatter([i + offset for i, m in zip(x, maxima) if m is not None], [m for m in maxima if m is not None],
                   color="#222222", marker="_", s=200, zorder=3, label=f"{label} (max)" if offset < 0 else None)
    plots.fit_labels(ax, charts.labels(rows))
    ax.set_yscale("log")  # pre-clip norms can be hundreds of times the thresholds
    ax.set_ylabel("gradient L2 norm (log scale)")
    ax.set_title("Gradient norm before / after clipping")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3, zorder=0)


def plot(doc: dict, out_dir: Path) -> Path:
    rows, reference = doc["rows"], doc["reference"]
    fig, (left, middle, right) = charts.figure(1, 3, "Gradient clipping", width=5.0)
    _grouped_norms(left, rows)
    charts.metric_panel(middle, rows, reference, ("extra", "clipped_fraction"), "fraction of steps clipped",
                        "How often clipping changed the gradients", fmt=lambda v: f"{v:.0%}", speed=False)
    times = [relative_step_time(r) for r in rows]
    plots.bar_chart(right, charts.labels(rows), [t[0] for t in times], errors=[t[1] for t in times],
                           colors=charts.colors(rows, reference), ylabel="step time (x no clipping, 95% CI)",
                           title="Cost in step time", reference=1.0, reference_label="no clipping",
                           value_label=lambda v: f"{v:.3f}x", missing_label=charts.missing(rows))
    charts.footnote(fig, " ".join(doc["notes"]))
    return charts.save(fig, out_dir, "clipping_comparison.png")


def run(cfg: RunConfig, out_dir: Path, log=stderr_log, isolate: bool = True) -> dict:
    lab = Lab("clipping", budgeted(cfg, **BUDGET), out_dir, log, isolate, title="Gradient clipping",
              question="How large are the gradients, how often does clipping bite, and what does it cost?")
    norm_steps = lab.cfg.timed_steps
    lab.note(f"Norm statistics come from an untimed pass of {norm_steps} steps after the timed ones; a norm-clipped "
             "step counts as clipped when its pre-clip norm exceeds the threshold, a value-clipped one when any "
             "gradient element does.")
    variants = [lab.variant(label, measure=measure, extra={"method": method, "threshold": threshold,
                                                           "norm_steps": norm_steps}) for label, method, threshold in CLIPS]
    rows = lab.measure(variants, "none", ROUNDS, extra=_extra)
    return lab.finish(_summary(rows), [plot(lab.doc, Path(out_dir))])
