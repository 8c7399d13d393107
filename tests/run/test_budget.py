"""The memory budget as the ladder's second objective, on injected measurements: the moves tried are
chosen and ordered from the breakdown, the fastest configuration that fits is chosen, one that lowers
the peak is built on when nothing fits, and a budget nothing meets ends in 'nothing fits' and what would.
No test here measures anything: peaks and speeds are given."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from workbench.config import RunConfig
from workbench.device import Capabilities
from workbench.launch import SideReport
from workbench.memory_model import Basis, Parts
from workbench.run import budget, comparing
from workbench.run.record import StageRecord
from workbench.run.rounds import Comparison
from workbench.run.stages import StageContext

CPU_BF16 = Capabilities("bf16", "native", False, False, False, True)
NO_BF16 = Capabilities(None, "no native bf16 on this CPU", False, False, False, False)
STATES = {"adam": 195.0, "adamw": 195.0, "sgd": 97.5, "adam8bit": 49.0, "adamw8bit": 49.0, "adafactor": 60.0}


def breakdown(weights=98.0, gradients=98.0, state=195.0, activations=410.0) -> dict:
    return {"weights": weights, "gradients": gradients, "optimizer_state": state, "activations_and_other": activations}


def metrics(peak: float, parts: dict | None = None, speedup: float = 1.0) -> dict:
    return {"peak_memory_mb": peak, "memory_breakdown_mb": parts or breakdown(), "optimizer_state_mib_by_kind": STATES,
            "throughput": {"median": 100.0 * speedup},
            "speedup_vs_baseline": {"ratio": speedup, "ci95_low": speedup * 0.97, "ci95_high": speedup * 1.03,
                                    "log_ratios": [0.0, 0.01, -0.01, 0.0], "rounds": 4, "paired": True}}


def record(stage: str, cfg: RunConfig, peak: float, speedup: float = 1.0, status: str = "kept", applied=()) -> StageRecord:
    return StageRecord.of({"stage": stage, "status": status, "kind": "speed", "config": cfg.to_dict(),
                           "applied": list(applied), "metrics": metrics(peak, speedup=speedup)})


def side(rate: float, peak: float, key: str) -> SideReport:
    return SideReport(key, "measured", metrics={"step_times_s": [[1.0 / rate] * 4], "samples_per_step": 1,
                                                "epoch_time_s": 500.0 / rate, "throughput": {"median": rate},
                                                "peak_memory_mb": peak, "memory_breakdown_mb": breakdown(),
                                                "optimizer_state_mib_by_kind": STATES})


def session(tmp_path: Path, budget_mib: float, caps=CPU_BF16, **cfg) -> SimpleNamespace:
    base = RunConfig(data="synthetic", trace=False, **cfg)
    return SimpleNamespace(base_cfg=base, context=StageContext("cpu", caps), log=print, mode="ladder",
                           memory_budget_mib=budget_mib, run_dir=tmp_path, profiles_dir=tmp_path, decisions={},
                           environment={}, data_description="synthetic", nproc=1, single_process=None)


class Book:
    def __init__(self):
        self.doc = {}

    def set(self, key, value):
        self.doc[key] = value


def measuring(monkeypatch, outcomes: dict, calls: list, saved: list) -> None:
    """Each move measured as given: {move label: (speed vs the configuration it joins, its peak)}."""
    def compare(session, a, b, label, *args, **kw):
        calls.append(label)
        gain, peak = outcomes[label] if label in outcomes else outcomes["*"]
        return Comparison([side(100.0, 800.0, "a") for _ in range(2)], [side(100.0 * gain, peak, "b") for _ in range(2)])
    monkeypatch.setattr(comparing, "compare", compare)
    monkeypatch.setattr(comparing, "save", lambda s, doc: saved.append(doc) or StageRecord.of(doc))


def basis(parts: Parts, peak: float, states: dict, cfg: RunConfig, blocks: int | None = None) -> Basis:
    return Basis(parts, peak, cfg.to_dict(), states, blocks)


def test_the_moves_follow_the_part_that_dominates_and_say_what_they_predict():
    cfg = RunConfig(batch_size=32)
    activations = budget.moves(cfg, basis(Parts(98, 98, 195, 410), 801, STATES, cfg), StageContext("cpu", CPU_BF16), 512, True)
    assert [m.name for m in activations][:3] == ["accumulation_x4", "amp", "checkpointing"]
    assert activations[0].prediction.peak_mib == pytest.approx(801 - 410 * 0.75)  # 4 micro-batches of 8 predicted to fit
    state_heavy = budget.moves(cfg, basis(Parts(42, 42, 85, 20), 189, STATES, cfg), StageContext("cpu", CPU_BF16), 150, True)
    assert state_heavy[0].name in ("adam8bit", "adafactor") and state_heavy[0].changes == "optimizer"
    without_flag = budget.moves(cfg, basis(Parts(42, 42, 85, 20), 189, STATES, cfg), StageContext("cpu", CPU_BF16), 150, False)
    assert all(m.changes != "optimizer" for m in without_flag)


def test_emulated_bf16_is_no_move_worth_its_minutes():
    moves = budget.moves(RunConfig(batch_size=32), basis(Parts(98, 98, 195, 410), 801, STATES, RunConfig(batch_size=32)), StageContext("cpu", NO_BF16), 512, False)
    assert "amp" not in [m.name for m in moves] and moves


def test_micro_batches_stay_at_two_samples_or_more_for_batchnorm():
    moves = budget.moves(RunConfig(batch_size=8), basis(Parts(40, 40, 80, 400), 560, {}, RunConfig(batch_size=8)), StageContext("cpu", CPU_BF16), 100, False)
    accumulation = next(m for m in moves if m.name.startswith("accumulation"))
    assert accumulation.cfg.micro_batch_size == 2


def test_the_fastest_configuration_that_fits_is_chosen_over_the_lowest_peak(tmp_path, monkeypatch):
    s = session(tmp_path, 512.0)
    amp_cfg = s.base_cfg.with_overrides(precision="bf16")
    finished = [record("baseline", s.base_cfg, 801.0, status="baseline"), record("amp", amp_cfg, 594.0, 1.5, applied=["amp"])]
    state = comparing.LadderState(amp_cfg, applied=["amp"], result=finished[1])
    calls, saved, book = [], [], Book()
    outcomes = {"budget+accumulation_x2": (0.95, 495.0), "budget+checkpointing": (0.75, 450.0)}
    measuring(monkeypatch, outcomes, calls, saved)
    budget.fit(s, state, book, finished)
    assert sorted(calls) == sorted(outcomes)
    entry = book.doc["memory_budget"]
    assert entry["fits"] and entry["chosen"] == "budget+accumulation_x2" and entry["text"].startswith("fits: 495 MiB of the 512")
    assert state.cfg.micro_batch_size == 16 and state.applied == ["amp", "budget+accumulation_x2"]
    chosen = next(d for d in saved if d["stage"] == "budget+accumulation_x2" and d["status"] == "kept")
    assert chosen["memory_prediction"]["predicted_saving_mib"] > 0 and chosen["memory_prediction"]["builds_on"] == "amp"
    assert chosen["memory_budget"] == {"budget_mib": 512.0, "fits": True, "out_of_memory": False}


def test_a_configuration_that_already_fits_measures_no_move(tmp_path, monkeypatch):
    s = session(tmp_path, 1024.0)
    finished = [record("baseline", s.base_cfg, 801.0, status="baseline")]
    state = comparing.LadderState(s.base_cfg, result=finished[0])
    calls, saved, book = [], [], Book()
    measuring(monkeypatch, {}, calls, saved)
    budget.fit(s, state, book, finished)
    assert calls == [] and book.doc["memory_budget"]["chosen"] == "baseline"


def test_a_final_configuration_that_fits_stays_though_a_rejected_one_reads_faster(tmp_path, monkeypatch):
    s = session(tmp_path, 1024.0)
    amp_cfg = s.base_cfg.with_overrides(precision="bf16")
    finished = [record("baseline", s.base_cfg, 801.0, status="baseline"), record("amp", amp_cfg, 594.0, 1.5, applied=["amp"]),
                record("compile", amp_cfg.with_overrides(compile="default"), 561.0, 1.55, status="rejected")]
    state = comparing.LadderState(amp_cfg, applied=["amp"], result=finished[1])
    calls, saved, book = [], [], Book()
    measuring(monkeypatch, {}, calls, saved)
    budget.fit(s, state, book, finished)
    assert calls == [] and book.doc["memory_budget"]["chosen"] == "amp" and state.applied == ["amp"]
    # and what a budget costs is said against that configuration, not against the rejected one
    assert book.doc["memory_budget"]["unconstrained_best"] == "amp" and "1.00x of the unconstrained best (amp)" in \
        book.doc["memory_budget"]["text"]


def test_when_nothing_fits_the_lowest_peak_is_built_on(tmp_path, monkeypatch):
    s = session(tmp_path, 300.0)
    finished = [record("baseline", s.base_cfg, 801.0, status="baseline")]
    state = comparing.LadderState(s.base_cfg, result=finished[0])
    calls, saved, book = [], [], Book()
    outcomes = {"budget+accumulation_x16": (0.8, 470.0), "budget+amp": (1.2, 600.0), "budget+checkpointing": (0.8, 590.0),
                "budget+accumulation_x16+amp": (1.1, 290.0), "budget+accumulation_x16+checkpointing": (0.8, 380.0)}
    measuring(monkeypatch, outcomes, calls, saved)
    budget.fit(s, state, book, finished)
    assert calls[:3] == ["budget+accumulation_x16", "budget+amp", "budget+checkpointing"]
    assert set(calls[3:]) == {"budget+accumulation_x16+amp", "budget+accumulation_x16+checkpointing"}
    assert book.doc["memory_budget"]["chosen"] == "budget+accumulation_x16+amp"
    assert state.cfg.precision == "bf16" and state.cfg.micro_batch_size == 2


def test_a_budget_nothing_meets_says_so_and_what_would(tmp_path, monkeypatch):
    s = session(tmp_path, 100.0)
    finished = [record("baseline", s.base_cfg, 801.0, status="baseline")]
    state = comparing.LadderState(s.base_cfg, result=finished[0])
    calls, saved, book = [], [], Book()
    outcomes = {"*": (0.9, 790.0)}  # every move, and every combination, peaks at 790 MiB
    measuring(monkeypatch, outcomes, calls, saved)
    budget.fit(s, state, book, finished)
    entry = book.doc["memory_budget"]
    assert not entry["fits"] and entry["chosen"] is None and state.applied == []
    assert entry["text"].startswith("nothing measured fits the 100 MiB budget; the smallest was 790 MiB")
    assert "--allow-optimizer-change" in entry["text"]
    # one level of combinations on the lowest peak, then no further: nothing lowered it again
    assert len(calls) == 5


def test_a_final_configuration_leave_one_out_changed_is_measured_before_the_moves(tmp_path, monkeypatch):
    """Leave-one-out dropped channels_last: the configuration the ladder holds was measured only inside
    that check. It is measured first (budget+start), and the moves build on it."""
    s = session(tmp_path, 512.0)
    both = s.base_cfg.with_overrides(precision="bf16", memory_format="channels_last")
    finished = [record("baseline", s.base_cfg, 801.0, status="baseline"),
                record("channels_last", both, 596.0, 1.8, applied=["amp", "channels_last"])]
    state = comparing.LadderState(s.base_cfg.with_overrides(precision="bf16"), applied=["amp"], result=finished[1])
    calls, saved, book = [], [], Book()
    measuring(monkeypatch, {"budget+start": (0.98, 594.0), "*": (0.8, 480.0)}, calls, saved)
    budget.fit(s, state, book, finished)
    assert calls[0] == "budget+start" and "budget+checkpointing" in calls[1:]
    start = saved[0]
    assert start["config"]["memory_format"] == "contiguous" and start["applied"] == ["amp", "budget+start"]
    assert "memory_prediction" not in start  # a measurement of what the ladder holds, not a predicted move
    moved = next(d for d in saved if d["stage"] == "budget+checkpointing")
    assert moved["memory_prediction"]["builds_on"] == "budget+start" and moved["applied"] == ["amp", "budget+checkpointing"]


def test_selective_checkpointing_takes_only_as_many_blocks_as_the_budget_needs():
    cfg = RunConfig(batch_size=32)
    parts = Parts(98, 98, 195, 410)
    # all five blocks save 205 MiB (predicted): 801 -> 596; the first two of five, 82 MiB: 719 fits 720
    found = budget.moves(cfg, basis(parts, 801, STATES, cfg, blocks=5), StageContext("cpu", CPU_BF16), 720, False)
    selective = next(m for m in found if m.name.startswith("checkpointing_"))
    assert selective.name == "checkpointing_2of5" and selective.cfg.checkpointing == "blocks:2"
    assert selective.prediction.peak_mib == pytest.approx(801 - 410 * 0.5 * 2 / 5)
    # a budget only all blocks meet: no selective move (all blocks is its own)
    found = budget.moves(cfg, basis(parts, 801, STATES, cfg, blocks=5), StageContext("cpu", CPU_BF16), 600, False)
    assert not any(m.name.startswith("checkpointing_") for m in found)
