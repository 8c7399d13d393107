"""Judging a measured stage: kept, rejected or trade-off, from step times and losses."""
from __future__ import annotations

from types import SimpleNamespace

from workbench import judge
from workbench.config import RunConfig
from workbench.ladder import LadderState, _advance
from workbench.stages import STAGES

STAGE = {s.name: s for s in STAGES}


def measured(stage: str, step_s: float, loss: float = 1.0, peak: float = 100.0, repeats: int = 5,
             jitter: float = 0.01, steps: int = 155) -> dict:
    """A result as the worker returns it, with step times around step_s (a little spread per repeat)."""
    times = [[step_s * (1 + jitter * ((r % 3) - 1))] * 10 for r in range(repeats)]
    metrics = {"step_times_s": times, "samples_per_step": 32, "final_loss": loss, "loss_finite": True,
               "peak_memory_mb": peak, "trained_steps": steps,
               "memory_breakdown_mb": {"weights": 40.0, "gradients": 40.0, "optimizer_state": 80.0,
                                       "activations_and_other": 0.0}}
    config = RunConfig().to_dict()
    return {"stage": stage, "index": 0, "status": "measured", "metrics": metrics, "config": config,
            "applied": [], "trace_file": None}


def judged(stage: str, result: dict, previous: dict) -> dict:
    state = LadderState(RunConfig(), baseline=previous, result=previous)
    session = SimpleNamespace(nproc=1, single_process=None)
    judge.judge(result, STAGE[stage], state, session)
    return result


BASE = {**measured("baseline", 0.100), "status": "baseline"}


def test_a_faster_stage_is_kept():
    result = judged("channels_last", measured("channels_last", 0.080), BASE)
    assert result["status"] == "kept"
    assert result["metrics"]["speedup_vs_previous"]["verdict"] == "faster"


def test_a_slower_stage_is_rejected_and_shown_slower():
    result = judged("amp", measured("amp", 1.3), BASE)  # emulated bf16: 13x slower
    assert result["status"] == "rejected"
    assert result["metrics"]["speedup_vs_baseline"]["verdict"] == "slower"
    assert "significantly slower" in result["reason"]


def test_no_significant_change_without_gain_is_not_carried_forward():
    result = judged("compile", measured("compile", 0.103, jitter=0.05), BASE)
    assert result["metrics"]["speedup_vs_previous"]["verdict"] == "no significant change"
    assert result["status"] == "rejected" and "no gain" in result["reason"]


def test_a_stage_that_hurts_training_is_rejected_even_when_faster():
    result = judged("compile", measured("compile", 0.05, loss=2.0), BASE)
    assert result["status"] == "rejected" and "training got worse" in result["reason"]


def test_a_memory_stage_is_a_tradeoff():
    result = judged("checkpointing", measured("checkpointing", 0.13, peak=60.0), BASE)
    assert result["status"] == "tradeoff"
    assert "-40%" in result["reason"]


def test_a_kept_probe_does_not_carry_its_measurement_settings_forward():
    state = LadderState(RunConfig(), baseline={"config": RunConfig().to_dict()})
    probe = RunConfig(precision="bf16", repeats=1, warmup_steps=1, timed_steps=4).to_dict()
    _advance(state, STAGE["amp"], {"status": "kept", "config": probe, "applied": ["amp"]}, "ladder")
    assert state.cfg.precision == "bf16"
    assert (state.cfg.repeats, state.cfg.warmup_steps, state.cfg.timed_steps) == (5, 5, 30)
