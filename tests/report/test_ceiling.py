"""The ceiling line: the final configuration's share of the peak beside the device-resident best."""
from __future__ import annotations

from workbench.report.summary import ceiling_text


def result(stage: str, delivered: float, compute_only: float | None, mfu: float | None, batch: int = 32,
           status: str = "kept") -> dict:
    metrics = {"throughput": {"median": delivered}, "mfu": mfu, "peak_flops_source": "H200 datasheet, bf16 dense"}
    if compute_only is not None:
        metrics["compute_only"] = {"throughput": {"median": compute_only}}
    return {"stage": stage, "status": status, "config": {"batch_size": batch}, "metrics": metrics}


def test_the_ceiling_is_the_best_device_resident_figure_with_its_batch_and_share_of_the_peak():
    final = result("final", 5000.0, 5600.0, 0.05)
    bigger = result("batch_size", 9000.0, 12000.0, 0.09, batch=256)
    text = ceiling_text([result("baseline", 1300.0, 4500.0, 0.013, status="baseline"), bigger, final], final)
    assert "delivers 5000.0 samples/s, 5.0% of the peak (H200 datasheet, bf16 dense)" in text
    assert "does 12000.0 samples/s at batch 256 (batch_size), 12.0% of it" in text   # 0.09 x 12000/9000
    assert "--allow-batch-change" not in text                                         # the batch was searched


def test_without_a_batch_search_the_line_says_how_to_get_one_and_without_figures_there_is_none():
    final = result("final", 5000.0, 5600.0, 0.05)
    assert "--allow-batch-change searches larger batches" in ceiling_text([final], final)
    assert ceiling_text([result("final", 50.0, None, 0.05)], result("final", 50.0, None, 0.05)) is None
    assert ceiling_text([final], result("final", 50.0, 60.0, None)) is None   # no peak known: no share


def test_a_ceiling_over_the_measured_peak_is_said_as_such_not_as_a_share():
    final = result("final", 600.0, 800.0, 0.9)      # 0.9 x 800/600 = 120% of the measured peak
    assert "over the measured peak, which understates this device" in ceiling_text([final], final)


def test_the_ceiling_line_gives_each_figure_its_interval_where_it_has_one():
    final = result("final", 5000.0, 5600.0, 0.05)
    final["metrics"]["throughput"].update(ci95_low=4800.0, ci95_high=5200.0)
    final["metrics"]["compute_only"]["throughput"].update(ci95_low=5500.0, ci95_high=5700.0)
    assert "(95% intervals: delivered [4800.0, 5200.0]; device-resident [5500.0, 5700.0])" in ceiling_text([final], final)


def test_a_ceiling_in_another_precision_names_the_peak_it_is_a_share_of():
    final = result("final", 607.0, 662.0, 0.647)
    final["metrics"]["peak_flops_source"] = "measured fp32 2048^3 matmul on this CPU"
    amp = result("amp", 600.0, 707.0, 0.166, status="rejected")
    amp["metrics"]["peak_flops_source"] = "measured bf16 2048^3 matmul on this CPU"
    text = ceiling_text([final, amp], final)
    assert "does 707.0 samples/s at batch 32 (amp)" in text
    assert "of its own peak (measured bf16 2048^3 matmul on this CPU)" in text
