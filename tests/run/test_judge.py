"""Judging a stage from its paired comparison: kept, rejected, inconclusive or trade-off."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from types import SimpleNamespace

from workbench import stats
from workbench.run import judge, stage_results
from workbench.config import RunConfig
from workbench.launch import SideReport
from workbench.run.comparing import LadderState
from workbench.run.first_pass import _advance
from workbench.run.record import StageRecord
from workbench.run.rounds import Comparison
from workbench.run.stages import STAGES

STAGE = {s.name: s for s in STAGES}
JITTER = (1.0, 1.01, 0.99, 1.005)


def raw(step_s: float, loss: float = 1.0, peak: float = 100.0, steps: int = 24) -> SideReport:
    """One process's result as the worker returns it."""
    metrics = {"step_times_s": [[step_s] * 5], "samples_per_step": 32, "final_loss": loss, "loss_finite": True,
               "peak_memory_mb": peak, "trained_steps": steps, "epoch_time_s": 100.0,
               "throughput": {"median": 32 / step_s, "ci95_low": 32 / step_s, "ci95_high": 32 / step_s},
               "memory_breakdown_mb": {"weights": 40.0, "gradients": 40.0, "optimizer_state": 80.0,
                                       "activations_and_other": 0.0}}
    return SideReport("b", "measured", metrics=metrics)


def comparison(before_s: float, after_s: float, jitter=JITTER, after_jitter=None, **after) -> Comparison:
    after_jitter = after_jitter or jitter
    return Comparison([raw(before_s * j) for j in jitter], [raw(after_s * j * (1 + 0.001 * i), **after)
                                                            for i, j in enumerate(after_jitter)])


def session() -> SimpleNamespace:
    return SimpleNamespace(run_dir=Path("/tmp/run"), mode="ladder", decisions={}, data_description="synthetic",
                           environment={"device_type": "cpu"}, base_cfg=RunConfig(), nproc=1, single_process=None)


BASE = {"stage": "baseline", "status": "baseline", "metrics": {**raw(0.1).metrics, "round_throughputs": [320.0] * 4}}


def judged(stage: str, compared: Comparison, floor: float = 0.0) -> dict:
    state = LadderState(RunConfig(), baseline=StageRecord.of(BASE), result=StageRecord.of(BASE),
                        floor=stats.NoiseFloor(floor))
    return stage_results.stage(session(), STAGE[stage], 1, RunConfig(), [stage], compared, BASE, state, "test", 0.0)


def test_a_faster_stage_is_kept():
    result = judged("channels_last", comparison(0.100, 0.080))
    assert result["status"] == "kept" and "kept" in result["reason"]
    assert result["metrics"]["speedup_vs_previous"]["verdict"] == "faster"
    assert result["rounds"]["count"] == 4 and len(result["metrics"]["step_times_s"]) == 4


def test_a_slower_stage_is_rejected_and_shown_slower():
    result = judged("amp", comparison(0.1, 1.3))  # emulated bf16: 13x slower
    assert result["status"] == "rejected" and "slower" in result["reason"]
    assert result["metrics"]["speedup_vs_previous"]["verdict"] == "slower"


def test_a_small_gain_is_not_kept_on_its_point_estimate():
    result = judged("compile", comparison(0.100, 0.099))
    assert result["metrics"]["speedup_vs_previous"]["verdict"] == "no significant change"
    assert result["status"] == "rejected" and "clear gain" in result["reason"]


def test_a_gain_under_the_noise_floor_is_no_significant_change():
    result = judged("fused_optimizer", comparison(0.100, 0.095), floor=0.08)
    assert result["status"] == "rejected"


def test_a_noisy_comparison_is_undecided_and_says_what_would_decide_it():
    result = judged("compile", comparison(0.100, 0.098, after_jitter=(1.0, 2.5, 0.4, 1.8)))
    vs_previous = result["metrics"]["speedup_vs_previous"]
    assert result["status"] == "undecided" and vs_previous["verdict"] == "inconclusive"
    assert vs_previous["would_take"]["rounds"] is None and "a quieter machine" in result["reason"]
    # a 10% gain in a few percent of noise: a handful more rounds would decide it
    close = judged("compile", comparison(0.100, 0.091, after_jitter=(1.0, 1.05, 0.95, 1.08)))
    take = close["metrics"]["speedup_vs_previous"]["would_take"]
    assert close["status"] == "undecided" and 4 < take["rounds"] <= 24
    assert f"about {take['rounds'] - 4} more rounds" in close["reason"]


def test_a_stage_that_hurts_training_is_rejected_even_when_faster():
    result = judged("compile", comparison(0.1, 0.05, loss=2.0))
    assert result["status"] == "rejected" and "training got worse" in result["reason"]
    assert result["training_broke"]


def test_a_memory_stage_is_a_tradeoff():
    result = judged("checkpointing", comparison(0.1, 0.13, peak=60.0))
    assert result["status"] == "tradeoff" and "-40%" in result["reason"]


def test_a_failed_side_is_recorded_with_its_reason():
    failed = Comparison([raw(0.1)], [], failure=SideReport.failed("b", "out of memory: boom"), failed_side="b")
    result = judged("compile", failed)
    assert result["status"] == "failed" and "out of memory" in result["reason"]


def test_a_kept_probe_does_not_carry_its_measurement_settings_forward():
    base = RunConfig()
    state = LadderState(base)
    probe = RunConfig(precision="bf16", repeats=1, rounds=1, warmup_steps=1, timed_steps=4).to_dict()
    _advance(state, StageRecord.of({"stage": "amp", "status": "kept", "config": probe, "applied": ["amp"]}), "ladder", base)
    assert state.cfg.precision == "bf16"
    measured = (base.repeats, base.rounds, base.warmup_steps, base.timed_steps)
    assert (state.cfg.repeats, state.cfg.rounds, state.cfg.warmup_steps, state.cfg.timed_steps) == measured
    assert measured != (1, 1, 1, 4)  # the defaults, not the probe's brief settings


def test_a_one_round_probe_is_judged_on_its_steps():
    """A brief probe has one round: its speedup is a bootstrap over that round's steps."""
    one = Comparison([raw(0.1)], [raw(0.4)])
    ratio = judge.paired_speedup(one, 0.05, stats.NO_FLOOR)
    assert ratio["ratio"] == pytest.approx(0.25) and ratio["verdict"] == "slower"


def test_a_failed_check_says_why():
    failed = Comparison([raw(0.1)], [], failure=SideReport.failed("b", "worker exited with status 1"), failed_side="b")
    entry = judge.check_entry("amp", failed, 0.05, stats.NO_FLOOR)
    assert entry["verdict"] == "failed" and "status 1" in entry["text"]


def test_judging_is_pure():
    """The judge reads nothing and writes nothing: no file, trace or process module in reach."""
    source = Path(judge.__file__).read_text()
    assert "open(" not in source and "read_trace" not in source and "launch" not in source


# --- the speedup against the baseline: one figure per configuration --------------------------------

def _paired(logs: list[float], **more) -> dict:
    """A paired comparison's figure from its rounds' log ratios, as stats.paired_ratio gives it."""
    ratio = stats.paired_ratio([100.0] * len(logs), [100.0 * math.exp(x) for x in logs])
    return {**ratio, "verdict": "faster", **more}


def test_a_stage_measured_against_the_baseline_shows_that_paired_comparison():
    vs_previous = {**_paired([0.30, 0.25, 0.33, 0.28]), "verdict": "no significant change", "min_effect": 0.05}
    figure = judge.vs_baseline("fused_optimizer", vs_previous, {"stage": "baseline", "metrics": {}},
                               {"round_throughputs": [1.0, 2.0]}, {"metrics": {"round_throughputs": [9.0, 9.5]}})
    same = ("ratio", "ci95_low", "ci95_high")
    assert [figure[k] for k in same] == [vs_previous[k] for k in same] and figure["paired"] is True
    # Judged as every figure against the baseline is: different from 1, no minimum effect.
    assert figure["verdict"] == "faster" and "min_effect" not in figure


def test_a_stage_after_a_kept_one_multiplies_the_paired_comparisons():
    first = _paired([0.20, 0.15, 0.22, 0.17])
    kept = {"stage": "fused_optimizer", "metrics": {"speedup_vs_baseline": {**first, "paired": True}}}
    second = _paired([0.10, 0.05, 0.12, 0.07, 0.09, 0.08])
    figure = judge.vs_baseline("amp", second, kept, {}, None)
    assert figure["ratio"] == pytest.approx(first["ratio"] * second["ratio"])
    se1 = np.std([0.20, 0.15, 0.22, 0.17], ddof=1) / 2
    se2 = np.std([0.10, 0.05, 0.12, 0.07, 0.09, 0.08], ddof=1) / math.sqrt(6)
    se = math.hypot(se1, se2)
    dof = se ** 4 / (se1 ** 4 / 3 + se2 ** 4 / 5)
    assert figure["log_se"] == pytest.approx(se) and figure["dof"] == pytest.approx(dof)
    assert math.log(figure["ci95_high"] / figure["ratio"]) == pytest.approx(stats.t_quantile(dof) * se)
    assert figure["chain"] == ["fused_optimizer", "amp"] and figure["paired"] is True
    # The interval is narrower than the two half-widths added in quadrature (that covered ~98%).
    quadrature = math.hypot(math.log(first["ci95_high"] / first["ratio"]), math.log(second["ci95_high"] / second["ratio"]))
    assert math.log(figure["ci95_high"] / figure["ratio"]) < quadrature
    longer = judge.vs_baseline("channels_last", second, {"stage": "amp", "metrics": {"speedup_vs_baseline": figure}}, {}, None)
    assert longer["chain"] == ["fused_optimizer", "amp", "channels_last"]
    assert longer["log_se"] == pytest.approx(math.hypot(se, se2))


def test_an_unpaired_figure_or_a_one_round_probe_is_not_chained():
    kept = {"stage": "fused_optimizer", "metrics": {"speedup_vs_baseline": {**_paired([0.2, 0.1, 0.15]), "paired": False}}}
    metrics, baseline = {"round_throughputs": [110.0, 112.0, 111.0]}, {"metrics": {"round_throughputs": [100.0, 101.0, 99.0]}}
    figure = judge.vs_baseline("amp", _paired([0.1, 0.05, 0.08]), kept, metrics, baseline)
    assert figure["paired"] is False and "chain" not in figure
    assert figure["ratio"] == pytest.approx(111.0 / 100.0, rel=0.01)
    # A one-round probe's interval is a bootstrap over its steps: not a paired figure, even against the baseline.
    probe = {"ratio": 0.41, "ci95_low": 0.39, "ci95_high": 0.42, "verdict": "slower", "log_ratios": [math.log(0.41)]}
    assert judge.vs_baseline("amp", probe, {"stage": "baseline", "metrics": {}}, metrics, baseline)["paired"] is False
