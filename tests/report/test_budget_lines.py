"""The budget's opening lines: beside the choice's chained figure, the headline's paired one."""
from __future__ import annotations

from types import SimpleNamespace

from workbench.report import budget

FINAL = {"stage": "final", "speedup_vs_baseline": 1.757, "speedup_vs_baseline_ci95_low": 1.689,
         "speedup_vs_baseline_ci95_high": 1.827, "verdict": "faster", "speedup_vs_baseline_from": "paired",
         "throughput_samples_per_s": 59.99, "throughput_ci95_low": 58.13, "throughput_ci95_high": 61.99}


def view_with(final: dict | None) -> SimpleNamespace:
    return SimpleNamespace(record=lambda stage: final if stage == "final" else None)


def test_a_fitting_choice_is_followed_by_the_headlines_paired_figure():
    line, = budget._paired_headline(view_with(FINAL), {"fits": True})
    assert "Paired with the baseline (the headline)" in line and "1.76x (95% CI 1.69x–1.83x" in line
    assert "60.0 samples/s" in line


def test_no_paired_line_where_nothing_fits_or_no_headline_ran():
    assert budget._paired_headline(view_with(FINAL), {"fits": False}) == []
    assert budget._paired_headline(view_with(None), {"fits": True}) == []
