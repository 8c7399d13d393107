"""Inside a paired round: the two sides' timed windows interleave A B B A, and each side's windows
join into one (its repeats, its highest peaks)."""
from __future__ import annotations

from types import SimpleNamespace

from workbench.config import RunConfig
from workbench.measure import pair
from workbench.measure.executor import Window, joined


def fake_sides(repeats: int) -> dict:
    return {key: SimpleNamespace(cfg=RunConfig(repeats=repeats)) for key in ("a", "b")}


def test_windows_interleave_a_b_b_a_and_join_per_side(monkeypatch):
    timed = []

    def window(built, progress, only=None):
        side = "a" if built is sides["a"] else "b"
        timed.append((side, only))
        return Window([[0.1 * (only + 1)] * 3], [1.0, 2.0], 3.0 + only, 100.0 + only, None)

    sides = fake_sides(repeats=4)
    monkeypatch.setattr(pair, "timed_window", window)
    windows = pair.interleaved(sides, ["b", "a"], {"a": None, "b": None})
    assert timed == [("b", 0), ("a", 0), ("a", 1), ("b", 1), ("b", 2), ("a", 2), ("a", 3), ("b", 3)]
    a = windows["a"]
    assert len(a.step_times) == 4 and a.step_times[1] == [0.2] * 3
    assert a.first_loss == 3.0 and a.host_peak_mb == 103.0  # the first window's loss, the highest peak


def test_one_repeat_each_is_the_plain_a_b_of_a_round(monkeypatch):
    timed = []
    monkeypatch.setattr(pair, "timed_window", lambda built, progress, only=None: timed.append(only) or
                        Window([[0.1]], [1.0], 1.0, 1.0, None))
    pair.interleaved(fake_sides(repeats=1), ["a", "b"], {"a": None, "b": None})
    assert timed == [0, 0]


def test_joined_cuda_peaks_are_the_highest_of_the_windows():
    peaks = [{"allocated_mb": 10.0, "reserved_mb": 20.0, "alloc_retries": 0, "ooms": 0},
             {"allocated_mb": 12.0, "reserved_mb": 18.0, "alloc_retries": 1, "ooms": 0}]
    window = joined([Window([[0.1]], [1.0], 1.0, 5.0, peaks[0]), Window([[0.2]], [2.0], 2.0, 4.0, peaks[1])])
    assert window.cuda_peaks == {"allocated_mb": 12.0, "reserved_mb": 20.0, "alloc_retries": 1, "ooms": 0}
    assert window.losses == [2.0] and window.step_times == [[0.1], [0.2]]
