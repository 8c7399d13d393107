"""The recommendations say what this run measured of the stages a finding points at."""
from __future__ import annotations

import json
from types import SimpleNamespace

from workbench.report import advice
from workbench.report.verdicts import verdict_words


def view_of(tmp_path, records: dict, second_look: list[dict]):
    (tmp_path / "verdicts.json").write_text(json.dumps({"second_look": second_look}))
    return SimpleNamespace(run_dir=tmp_path, record=lambda name: records.get(name))


def record(stage: str, status: str, ratio: float) -> dict:
    return {"stage": stage, "status": status, "speedup_vs_previous": ratio, "speedup_vs_previous_ci95_low": ratio - 0.1,
            "speedup_vs_previous_ci95_high": ratio + 0.1, "verdict_vs_previous": "no significant change"}


def test_a_finding_whose_stages_were_measured_and_not_kept_says_so_instead_of_advising_them(tmp_path):
    records = {"dataloader": record("dataloader", "rejected", 0.93), "batched_input": record("batched_input", "rejected", 1.01)}
    look = [{"stage": "dataloader", "ratio": 0.92, "ci95_low": 0.86, "ci95_high": 0.98, "verdict": "slower"}]
    said = advice._measured_here(view_of(tmp_path, records, look), {"rule": "data_loading"})
    assert said.startswith("Measured here: `batched_input` rejected, 1.01x")
    assert "on the final configuration 0.92x [0.86, 0.98] (slower)" in said and "did not pay on this machine" in said


def test_an_undecided_stage_is_not_called_a_stage_that_did_not_pay(tmp_path):
    records = {"dataloader": record("dataloader", "rejected", 0.93), "batched_input": record("batched_input", "undecided", 1.05)}
    said = advice._measured_here(view_of(tmp_path, records, []), {"rule": "data_loading"})
    assert "decide the undecided ones" in said and "did not pay" not in said


def test_a_stage_not_measured_or_kept_leaves_the_rules_own_advice(tmp_path):
    kept = {"dataloader": record("dataloader", "kept", 1.3), "batched_input": record("batched_input", "rejected", 1.0)}
    assert advice._measured_here(view_of(tmp_path, kept, []), {"rule": "data_loading"}) is None
    assert advice._measured_here(view_of(tmp_path, {}, []), {"rule": "data_loading"}) is None
    assert advice._measured_here(view_of(tmp_path, kept, []), {"rule": "unannotated_time"}) is None


def test_an_inconclusive_check_is_worded_as_undecided_with_what_it_would_take():
    entry = {"verdict": "inconclusive", "would_take": {"rounds": 13, "text": "about 9 more rounds (13 in all) at this spread"}}
    assert verdict_words(entry) == "undecided: about 9 more rounds (13 in all) at this spread"
    assert verdict_words({"verdict": "slower"}) == "slower"
    assert verdict_words({"verdict": "inconclusive"}).startswith("inconclusive")


def test_a_trade_off_keeps_the_rules_advice_and_a_sweep_skip_or_a_stage_not_retried_reads_as_measured(tmp_path):
    memory = {"accumulation": record("accumulation", "tradeoff", 0.7), "checkpointing": record("checkpointing", "tradeoff", 0.7)}
    assert advice._measured_here(view_of(tmp_path, memory, []), {"rule": "memory_pressure"}) is None
    swept = {**record("dataloader", "skipped", 1.0), "reason": "nothing to change on this machine (num_workers=0 ...)"}
    records = {"dataloader": swept, "batched_input": record("batched_input", "rejected", 0.95)}
    not_retried = [{"stage": "batched_input", "ratio": 0.95, "ci95_low": 0.85, "ci95_high": 1.05,
                    "verdict": "no significant change", "not_retried": "cannot pay"}]
    said = advice._measured_here(view_of(tmp_path, records, not_retried), {"rule": "data_loading"})
    assert "`dataloader` skipped (nothing to change on this machine" in said
    assert "on the final configuration" not in said  # the first-pass figure is not passed off as a second look


def test_no_significant_change_says_holds_1_only_where_the_interval_does():
    flat = {"stage": "channels_last", "verdict_vs_previous": "no significant change", "speedup_vs_previous": 1.01,
            "speedup_vs_previous_ci95_low": 0.97, "speedup_vs_previous_ci95_high": 1.05}
    small = {"stage": "compile", "verdict_vs_previous": "no significant change", "speedup_vs_previous": 1.03,
             "speedup_vs_previous_ci95_low": 1.02, "speedup_vs_previous_ci95_high": 1.04}
    text = advice._no_change([flat, small])
    holds, rest = text.split("Measurable but too small to keep")
    assert "`channels_last`" in holds and "`compile`" not in holds
    assert "`compile` 1.03x" in rest and "excludes 1" in rest
    assert "Measurable" not in advice._no_change([flat])
