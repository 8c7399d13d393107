"""Judging, pure: a comparison, the noise floor and the keep rule in; a speedup, a status and its
reason out. Nothing here reads a file, measures or writes: workbench/run/stage_results.py gathers
the measurement and the trace's reading, asks these functions for the verdict, and assembles the
stage result (workbench/run/result.py), once.
"""
from __future__ import annotations

import math
from typing import Mapping

from workbench import stats
from workbench.run.console import fmt
from workbench.run.stages import MEMORY, REFERENCE
from workbench.trace import diagnose

# The baseline against itself, as the baseline's own speedup: exactly 1 by definition.
SAME = {"ratio": 1.0, "ci95_low": 1.0, "ci95_high": 1.0, "verdict": "no significant change"}

# A speed stage whose final loss is this much above the configuration before it changed what is
# learned (same seed, same data, same steps), whatever it does to speed.
LOSS_DEGRADATION_MAX = 1.25


def paired_speedup(comparison, min_effect: float, floor: stats.NoiseFloor) -> dict:
    """b/a over the paired rounds with its verdict; one round (a brief probe) falls back to a
    bootstrap over that round's steps, which is all one round can say. noise_floor is the floor this
    comparison was held to (the A/A's, scaled by floor_scale: its own spread against the A/A's)."""
    if len(comparison.a_rounds) > 1:
        ratio = comparison.ratio()
    else:
        a, b = comparison.a_final.metrics, comparison.b_final.metrics
        ratio = stats.speedup(b["step_times_s"], b["samples_per_step"], a["step_times_s"], a["samples_per_step"])
    verdict = stats.judged_verdict(ratio, min_effect, floor)
    judged = {**ratio, "verdict": verdict, "min_effect": min_effect, "noise_floor": floor.fitted(ratio),
              "floor_scale": floor.scale(ratio)}
    if verdict == "inconclusive":
        judged["would_take"] = stats.would_take(ratio, min_effect, floor)
    return judged


def verdict_text(ratio: dict, against: str) -> str:
    text = f"{fmt(ratio)} vs {against}"
    if ratio["verdict"] == "inconclusive":
        return f"{text}: undecided, {(ratio.get('would_take') or {}).get('text', stats.INCONCLUSIVE_TEXT)}"
    return f"{text}: {ratio['verdict']}"


BROKE = {"training_broke": True}


def _speed_verdict(metrics: Mapping, previous: dict) -> tuple[str, str, dict]:
    """(status, reason, marks) of a speed stage; marks say when it broke training."""
    if not metrics["loss_finite"]:
        return "rejected", "the loss became non-finite: training broke", BROKE
    before = previous["metrics"]["final_loss"]
    same_steps = metrics.get("trained_steps") == previous["metrics"].get("trained_steps")
    if same_steps and before > 0 and metrics["final_loss"] > LOSS_DEGRADATION_MAX * before:
        return "rejected", (f"final loss {metrics['final_loss']:.3f} vs {before:.3f} for {previous['stage']} "
                            f"(over {LOSS_DEGRADATION_MAX:.2f}x): training got worse, not carried forward"), BROKE
    vs_prev = metrics["speedup_vs_previous"]
    text = verdict_text(vs_prev, previous["stage"])
    if vs_prev["verdict"] == "faster":
        return "kept", f"{text} (whole interval above {1 + vs_prev['min_effect']:.2f}x), kept", {}
    if vs_prev["verdict"] == "slower":
        return "rejected", f"{text}, not carried forward", {}
    if vs_prev["verdict"] == "inconclusive":  # not measured as no better: not decided either way
        return "undecided", f"{text}; not carried forward until it is decided", {}
    return "rejected", f"{text}, not carried forward (a stage is kept only on a clear gain)", {}


def _memory_verdict(metrics: Mapping, previous: dict) -> tuple[str, str, dict]:
    before = previous["metrics"]
    change = metrics["peak_memory_mb"] / before["peak_memory_mb"] - 1 if before["peak_memory_mb"] else 0.0
    return "tradeoff", (f"peak memory {metrics['peak_memory_mb']:.0f} MiB vs {before['peak_memory_mb']:.0f} MiB "
                        f"({change:+.0%}), speed {fmt(metrics['speedup_vs_previous'])} vs {previous['stage']}; "
                        "a memory/speed trade-off, not carried forward"), {}


def status(metrics: Mapping, kind: str, previous: Mapping) -> tuple[str, str, dict]:
    """(status, reason, marks) from the figures the verdict looks at (the trace's headline memory in)."""
    if kind == REFERENCE:
        return "baseline", "the reference every stage is compared with", {}
    if kind == MEMORY:
        return _memory_verdict(metrics, previous)
    return _speed_verdict(metrics, previous)


def prediction(stage: str, vs_previous: Mapping, previous: Mapping | None) -> dict | None:
    """Did the finding before this stage predict what the stage then did?"""
    if previous is None or stage == "baseline":
        return None
    predicted = stage in diagnose.predicts(previous.get("findings", []))
    helped = vs_previous["verdict"] == "faster"
    return {"predicted_to_help": predicted, "helped": helped, "agrees": predicted == helped}


def nonfinite_baseline_reason(metrics: Mapping | None) -> str | None:
    """A NaN or infinite baseline loss is no reference: every comparison with it would mislead."""
    metrics = metrics or {}
    if metrics.get("loss_finite") is not False:
        return None
    return (f"the baseline's training loss is not finite (final loss {metrics.get('final_loss')}): "
            "it cannot be the reference; check the model, data and learning rate")


def aa_summary(comparison) -> dict:
    ratio = comparison.ratio()
    return {**ratio, "noise_floor": stats.noise_floor(ratio)}


def unpaired_vs_baseline(metrics: Mapping, baseline: dict | None) -> dict:
    """Against the baseline measured minutes earlier: indicative only (the headline is paired)."""
    rates = (baseline or {}).get("metrics", {}).get("round_throughputs")
    if not rates:
        return SAME
    ratio = stats.welch_rates(metrics["round_throughputs"], rates)
    return {**ratio, "verdict": stats.judged_verdict(ratio, 0.0), "paired": False}


CHAINED = ("chained: the product of paired comparisons along the kept stages; standard errors added, "
           "Welch-Satterthwaite degrees of freedom")


def vs_baseline(name: str, vs_previous: dict, against: Mapping, metrics: Mapping, baseline: dict | None) -> dict:
    """A stage's configuration against the baseline, from paired comparisons wherever it can be.

    Against the baseline itself, the stage's own paired comparison is that figure (one configuration,
    one figure: the table and the dashboard then agree with the headline). Against a kept stage whose
    own figure is paired, the two multiply: each factor was measured in its own time window, so drift
    between the windows does not enter. Otherwise (an earlier run's record, a one-round probe, whose
    interval is a bootstrap over its steps and knows nothing of process-to-process noise) the
    unpaired figure against the baseline's rounds, marked as such. The verdict is "is it different
    from the baseline" (no minimum effect, no floor), as for the unpaired and chained figures alike.
    """
    if _rounds(vs_previous) < 2:
        return unpaired_vs_baseline(metrics, baseline)
    if against.get("stage") == "baseline":
        ratio = {key: vs_previous[key] for key in ("ratio", "ci95_low", "ci95_high", "rounds", "log_ratios", "method")
                 if key in vs_previous}
        return {**ratio, "verdict": stats.judged_verdict(ratio, 0.0), "against": "baseline", "paired": True}
    before = (against.get("metrics") or {}).get("speedup_vs_baseline") or {}
    if not (before.get("paired") and _log_se(before) is not None):
        return unpaired_vs_baseline(metrics, baseline)
    ratio = _product(before, vs_previous)
    chain = [*(before.get("chain") or [against.get("stage")]), name]
    return {**ratio, "verdict": stats.judged_verdict(ratio, 0.0), "against": "baseline", "paired": True,
            "method": CHAINED, "chain": chain}


def _rounds(ratio: Mapping) -> int:
    return len(ratio.get("log_ratios") or ()) or 0


def _log_se(ratio: Mapping) -> tuple[float, float] | None:
    """(standard error of the log ratio, its degrees of freedom): stored on a chained figure, else
    from the paired rounds' log ratios; None with fewer than two rounds."""
    if "log_se" in ratio:
        return ratio["log_se"], ratio["dof"]
    logs = ratio.get("log_ratios") or ()
    if len(logs) < 2:
        return None
    mean = sum(logs) / len(logs)
    variance = sum((x - mean) ** 2 for x in logs) / (len(logs) - 1)
    return math.sqrt(variance / len(logs)), float(len(logs) - 1)


def _product(first: Mapping, second: Mapping) -> dict:
    """Two independent paired ratios multiplied: the log estimates add, so do their variances, and the
    interval takes a t quantile at the Welch-Satterthwaite degrees of freedom."""
    (se1, df1), (se2, df2) = _log_se(first), _log_se(second)
    log_ratio = math.log(first["ratio"]) + math.log(second["ratio"])
    se = math.hypot(se1, se2)
    dof = se ** 4 / (se1 ** 4 / df1 + se2 ** 4 / df2) if se else df1 + df2
    half = stats.t_quantile(dof) * se
    return {"ratio": math.exp(log_ratio), "ci95_low": math.exp(log_ratio - half),
            "ci95_high": math.exp(log_ratio + half), "log_se": se, "dof": dof}


def check_entry(name: str, comparison, min_effect: float, floor: stats.NoiseFloor) -> dict:
    """A second-look or leave-one-out comparison, as one entry of verdicts.json."""
    if comparison.failure is not None:
        return {"stage": name, "verdict": "failed", "text": f"failed: {comparison.failure.error}"}
    ratio = paired_speedup(comparison, min_effect, floor)
    return {"stage": name, **ratio, "text": verdict_text(ratio, "the configuration without it")}




def reference_status(metrics: Mapping) -> tuple[str, str]:
    """The baseline is the reference, unless its loss is not finite."""
    refused = nonfinite_baseline_reason(metrics)
    return ("failed", refused) if refused else ("baseline", "the reference every stage is compared with")


def headline_reason(applied: list[str], ratio: Mapping) -> str:
    return f"{' + '.join(applied)}: {verdict_text(ratio, 'baseline')} (paired, same time window)"
