"""MFU's denominator: over 100% the peak is wrong, not the step."""
from __future__ import annotations

from workbench.measure import executor


def test_mfu_is_achieved_over_peak():
    figures = executor._flops_metrics(2e9, 0.1, 40e9, "measured fp32 matmul")
    assert figures["mfu"] == 0.5 and figures["achieved_flops_per_s"] == 20e9


def test_an_achieved_rate_over_the_peak_gives_no_mfu_and_says_why():
    figures = executor._flops_metrics(2e9, 0.01, 87e9, "measured fp32 2048^3 matmul on this CPU")
    assert figures["mfu"] is None and "under the 200 GFLOP/s this step achieved" in figures["peak_flops_source"]
