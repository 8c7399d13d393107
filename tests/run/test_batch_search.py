"""The batch_size stage's search against a memory model (no measurement: the probes are made up)."""
from __future__ import annotations

import pytest

from workbench.config import RunConfig
from workbench.errors import StageSkipped
from workbench.run import batch_search
from workbench.run.batch_search import Probe


def memory_model(fixed_mb: float, per_sample_mb: float, room_mb: float, rate_of=lambda b: 100.0 * b ** 0.5):
    """A device of room_mb: a batch's peak is fixed + per-sample x batch; over the room it is out of
    memory, as the real probe reports it; throughput grows with the batch as rate_of says."""
    seen = []

    def probe(batch: int) -> Probe:
        seen.append(batch)
        peak = fixed_mb + per_sample_mb * batch
        if peak > room_mb:
            return batch_search.verdict_of_fit(batch, "out of memory: CUDA out of memory", None, room_mb, None)
        return batch_search.verdict_of_fit(batch, None, peak, room_mb, rate_of(batch))
    return probe, seen


def test_doubling_stops_at_the_first_size_that_does_not_fit_and_the_largest_fitting_one_is_chosen():
    probe, seen = memory_model(1000, 50, 20000)   # 32: 2600 MiB ... 256: 13800, 512: 26600 (over)
    probes = batch_search.search(32, probe, log=lambda line: None)
    assert seen == [32, 64, 128, 256, 512]
    assert [p.fits for p in probes] == [True, True, True, True, False]
    assert "out of memory" in probes[-1].why
    cfg, record = batch_search.searched(RunConfig(batch_size=32, lr=1e-3), probes)
    assert cfg.batch_size == 256 and cfg.lr == pytest.approx(8e-3)   # linear rule
    assert record["chosen"] == 256 and record["lr_rule"] == "linear" and len(record["probes"]) == 5


def test_a_peak_over_the_memory_share_does_not_fit_even_without_an_error():
    probe, _ = memory_model(1000, 50, 14000)     # 256: 13800 MiB is 98.6% of the room
    probes = batch_search.search(32, probe, log=lambda line: None)
    assert probes[-1].batch == 256 and not probes[-1].fits and "over 90%" in probes[-1].why
    assert batch_search.chosen(probes).batch == 128


def test_doubling_stops_when_it_no_longer_pays():
    flat_after_64 = lambda b: 1000.0 if b >= 64 else 600.0
    probe, seen = memory_model(1000, 1, 10 ** 6, flat_after_64)
    probes = batch_search.search(32, probe, log=lambda line: None)
    assert seen == [32, 64, 128, 256]             # 128 and 256 gained nothing over 64: stop there
    assert batch_search.chosen(probes).batch == 64


def test_one_dip_does_not_end_the_search_and_the_knee_is_chosen():
    """Brief probes on a shared machine: 128 read 20% low in one run. The search goes on past one
    dip, and of 256 and 512 (3% apart: noise) the smaller is chosen, the knee of the curve."""
    rates = {32: 600.0, 64: 700.0, 128: 560.0, 256: 850.0, 512: 876.0}
    probe, seen = memory_model(1000, 1, 10 ** 6, lambda b: rates[b])
    probes = batch_search.search(32, probe, log=lambda line: None)
    assert seen == [32, 64, 128, 256, 512]
    assert batch_search.chosen(probes).batch == 256


def test_the_search_ends_at_its_cap():
    probe, seen = memory_model(0, 0, 10 ** 9, lambda b: float(b))
    batch_search.search(32, probe, log=lambda line: None)
    assert seen[-1] == 32 * batch_search.MOST_FACTOR


def test_no_larger_batch_that_fits_is_a_skip_with_the_sizes_tried():
    probe, _ = memory_model(1000, 50, 3000)       # 64: 4200 MiB does not fit
    probes = batch_search.search(32, probe, log=lambda line: None)
    with pytest.raises(StageSkipped, match="no larger batch than 32 fits.*64 \\(does not fit"):
        batch_search.searched(RunConfig(batch_size=32), probes)


def test_the_probe_is_brief_untraced_and_at_the_scaled_learning_rate():
    cfg = batch_search.probe_config(RunConfig(batch_size=32, lr=1e-4, micro_batch_size=16), 128)
    assert (cfg.batch_size, cfg.micro_batch_size, cfg.rounds, cfg.trace) == (128, 0, 1, False)
    assert cfg.lr == pytest.approx(4e-4)
    assert "x2" in batch_search.lr_text(RunConfig(batch_size=32), RunConfig(batch_size=64, lr=2e-4))


def test_a_probe_says_where_it_ran_and_reads_no_shared_peak():
    alone = batch_search.verdict_of_fit(64, None, 120.0, 10_000.0, 50.0)
    assert alone.why == "fits: 50.0 samples/s, peak 120 MiB (one brief process)"
    shared = batch_search.verdict_of_fit(64, None, None, 10_000.0, 50.0, batch_search.SHARED)
    assert "peak" not in shared.why.split("(")[0] and "in your Python process" in shared.why
