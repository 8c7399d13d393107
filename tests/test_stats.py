"""stats.py: spread, throughput, speedup and the verdict, on step times with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from workbench import stats


def _noisy(mean: float, repeats: int = 3, steps: int = 20, seed: int = 0, rel: float = 0.05) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [list(mean * (1 + rel * rng.standard_normal(steps))) for _ in range(repeats)]


def test_spread_quartiles_exact_on_known_list():
    result = stats.spread([[1.0, 2.0], [3.0, 4.0, 5.0]])
    assert result == {"median": 3.0, "q1": 2.0, "q3": 4.0, "iqr": 2.0, "mean": 3.0, "n": 5}


def test_spread_pools_all_repeats():
    result = stats.spread([[10.0] * 3, [20.0] * 1])
    assert result["n"] == 4
    assert result["median"] == 10.0
    assert result["mean"] == pytest.approx(12.5)


def test_throughput_of_identical_repeats_is_samples_over_step_time():
    times = [[0.25] * 8 for _ in range(3)]
    result = stats.throughput(times, samples_per_step=32)
    assert result["median"] == pytest.approx(32 / 0.25)
    assert result["ci95_low"] == pytest.approx(128.0)
    assert result["ci95_high"] == pytest.approx(128.0)


def test_repeat_throughputs_one_per_repeat():
    assert stats.repeat_throughputs([[0.5, 0.5], [1.0, 1.0]], 10) == pytest.approx([20.0, 10.0])


def test_throughput_interval_brackets_median_and_is_deterministic():
    times = _noisy(0.1)
    a, b = stats.throughput(times, 16, seed=3), stats.throughput(times, 16, seed=3)
    assert a == b
    assert a["ci95_low"] < a["median"] < a["ci95_high"]


def test_throughput_interval_widens_with_spread_between_repeats():
    steady = [[0.1] * 10, [0.1] * 10, [0.1] * 10]
    drifting = [[0.08] * 10, [0.1] * 10, [0.12] * 10]
    width = lambda r: r["ci95_high"] - r["ci95_low"]  # noqa: E731
    assert width(stats.throughput(drifting, 16)) > width(stats.throughput(steady, 16)) + 1.0


def test_speedup_of_identical_samples_is_no_significant_change():
    times = _noisy(0.1)
    result = stats.speedup(times, 32, times, 32)
    assert result["ratio"] == pytest.approx(1.0)
    assert result["ci95_low"] < 1.0 < result["ci95_high"]
    assert result["verdict"] == "no significant change"


def test_speedup_clearly_twice_as_fast():
    old = _noisy(0.2, seed=1)
    new = _noisy(0.1, seed=2)
    result = stats.speedup(new, 32, old, 32)
    assert result["ratio"] == pytest.approx(2.0, rel=0.05)
    assert result["ci95_low"] > 1.0
    assert result["verdict"] == "faster"


def test_speedup_clearly_slower():
    result = stats.speedup(_noisy(0.3, seed=1), 32, _noisy(0.1, seed=2), 32)
    assert result["ratio"] == pytest.approx(1 / 3, rel=0.05)
    assert result["verdict"] == "slower"


def test_speedup_counts_samples_not_steps():
    # Same step time, twice the samples per step: twice the throughput.
    times = [[0.1] * 10 for _ in range(3)]
    result = stats.speedup(times, 64, times, 32)
    assert result["ratio"] == pytest.approx(2.0)
    assert result["verdict"] == "faster"


@pytest.mark.parametrize("low, high, expected", [
    (1.01, 1.2, "faster"), (0.8, 0.99, "slower"), (0.9, 1.1, "no significant change"),
    (1.0, 1.2, "no significant change"), (0.8, 1.0, "no significant change"),
])
def test_verdict(low, high, expected):
    assert stats.verdict(low, high) == expected


def test_the_noise_floor_is_taken_at_the_comparisons_precision():
    """A noisy A/A (10.4% one round to the next) must not turn away a 9% gain whose four rounds agree:
    over 4 rounds the floor is 5.2%. One round's effect is held to the whole floor."""
    from workbench import stats

    gain = {"ratio": 1.09, "ci95_low": 1.06, "ci95_high": 1.13, "rounds": 4}
    assert stats.floor_at(0.104, 4) == pytest.approx(0.052)
    assert stats.judged_verdict(gain, 0.05, stats.NoiseFloor(0.104)) == "faster"
    assert stats.judged_verdict({**gain, "ratio": 1.04, "ci95_low": 1.01, "ci95_high": 1.07}, 0.0, stats.NoiseFloor(0.104)) != "faster"
    assert stats.floor_at(0.104, 1) == 0.104
