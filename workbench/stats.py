"""Statistics over step times: medians, spread, and 95% intervals (numpy only, no torch).

Two levels of replication. Across processes: a comparison's verdict comes from paired rounds (each
round a fresh process, RunConfig.rounds, default 4) through `paired_ratio`, a t-interval over the
rounds' log ratios; the round is the replicate, since a process's own offset is shared by all its
steps. Inside one process: step times come as one list per repeat (RunConfig.repeats, default 2;
steps inside a repeat share the machine's state of the moment, so they are not independent). With
two or more repeats (the default) `throughput` and `speedup` use t-intervals on the log of each
repeat's throughput (Welch's for ratios); with a single repeat they fall back to a bootstrap over
its steps and say less with it. Defaults live in workbench/config.py, not here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
# Two-sided 97.5% quantiles of Student's t by degrees of freedom (a small table: no scipy needed).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}
Z_975 = 1.960


def t_quantile(df: float) -> float:
    """The 97.5% t quantile, rounding the degrees of freedom down (the conservative side)."""
    if df >= 120:
        return Z_975
    eligible = [k for k in T_975 if k <= max(df, 1)]
    return T_975[max(eligible)]


def spread(step_times: list[list[float]]) -> dict:
    """Median, quartiles, IQR and mean of all timed steps (seconds)."""
    flat = np.concatenate([np.asarray(r, dtype=float) for r in step_times])
    q1, median, q3 = np.percentile(flat, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "mean": float(flat.mean()), "n": int(flat.size)}


def repeat_throughputs(step_times: list[list[float]], samples_per_step: int) -> list[float]:
    """Samples / summed step time, for each repeat."""
    return [samples_per_step * len(r) / float(np.sum(r)) for r in step_times]


def _log_mean_and_variance(rates: list[float]) -> tuple[float, float, int]:
    logs = np.log(np.asarray(rates, dtype=float))
    return float(logs.mean()), float(logs.var(ddof=1)) if logs.size > 1 else 0.0, int(logs.size)


def _bootstrap_rates(step_times: list[list[float]], samples_per_step: int, rng: np.random.Generator) -> np.ndarray:
    """Throughput of bootstrap resamples of the steps (the single-repeat fallback)."""
    flat = np.concatenate([np.asarray(r, dtype=float) for r in step_times])
    picks = rng.integers(0, flat.size, size=(BOOTSTRAP_SAMPLES, flat.size))
    return samples_per_step / flat[picks].mean(axis=1)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return float(low), float(high)


def throughput(step_times: list[list[float]], samples_per_step: int, seed: int = 0) -> dict:
    """Median over repeats of samples / summed step time, with a 95% interval."""
    rates = repeat_throughputs(step_times, samples_per_step)
    median = float(np.median(rates))
    if len(rates) < 2:
        low, high = _percentiles(_bootstrap_rates(step_times, samples_per_step, np.random.default_rng(seed)))
        return {"median": median, "ci95_low": low, "ci95_high": high, "method": "bootstrap over steps (1 repeat)"}
    mean, variance, n = _log_mean_and_variance(rates)
    half = t_quantile(n - 1) * math.sqrt(variance / n)
    return {"median": median, "ci95_low": math.exp(mean - half), "ci95_high": math.exp(mean + half),
            "method": f"t-interval over {n} repeats"}


def welch_logs(new_logs: list[float], old_logs: list[float]) -> tuple[float, float, float]:
    """Welch on two samples already on the log scale (two runs' per-round log ratios): the difference
    of their means, its standard error and the degrees of freedom."""
    stat = lambda xs: (float(np.mean(xs)), float(np.var(xs, ddof=1)), len(xs))
    return _welch(stat(new_logs), stat(old_logs))


def _welch(new: tuple[float, float, int], old: tuple[float, float, int]) -> tuple[float, float, float]:
    """Difference of log means, its standard error, and Welch-Satterthwaite degrees of freedom."""
    (m1, v1, n1), (m2, v2, n2) = new, old
    a, b = v1 / n1, v2 / n2
    se = math.sqrt(a + b)
    df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1)) if a + b > 0 else float(n1 + n2 - 2)
    return m1 - m2, se, df


def speedup(new_times: list[list[float]], new_samples: int, old_times: list[list[float]],
            old_samples: int, seed: int = 0) -> dict:
    """Throughput ratio new/old with a 95% interval; the verdict says whether it holds 1."""
    new_rates, old_rates = repeat_throughputs(new_times, new_samples), repeat_throughputs(old_times, old_samples)
    if len(new_rates) < 2 or len(old_rates) < 2:
        return _bootstrap_speedup(new_times, new_samples, old_times, old_samples, seed)
    diff, se, df = _welch(_log_mean_and_variance(new_rates), _log_mean_and_variance(old_rates))
    half = t_quantile(df) * se
    low, high = math.exp(diff - half), math.exp(diff + half)
    return {"ratio": math.exp(diff), "ci95_low": low, "ci95_high": high, "verdict": verdict(low, high),
            "method": f"Welch t-interval on log throughput ({len(new_rates)} vs {len(old_rates)} repeats)"}


def _bootstrap_speedup(new_times, new_samples, old_times, old_samples, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ratios = _bootstrap_rates(new_times, new_samples, rng) / _bootstrap_rates(old_times, old_samples, rng)
    point = (new_samples / np.mean(np.concatenate(new_times))) / (old_samples / np.mean(np.concatenate(old_times)))
    low, high = _percentiles(ratios)
    return {"ratio": float(point), "ci95_low": low, "ci95_high": high, "verdict": verdict(low, high),
            "method": "bootstrap over steps (a side has 1 repeat)"}


def verdict(low: float, high: float) -> str:
    if low > 1.0:
        return "faster"
    if high < 1.0:
        return "slower"
    return "no significant change"


# --- paired comparisons over rounds ----------------------------------------------------------------
# A round is one fresh process per configuration, run back to back in alternating order, so drift
# and each process's own offset land in the round's ratio. The interval is a paired t-interval over
# the rounds' log ratios: the round, not a repeat inside one process, is the unit of replication.
INCONCLUSIVE_HALF_WIDTH = 0.25   # an interval wider than x/÷ 1.25 cannot tell a stage's effect from noise
PLAUSIBLE_GAIN = 0.10            # ... nor can one that holds both 1 and a 10% gain (a stage's typical effect)


def paired_ratio(a_rates: list[float], b_rates: list[float]) -> dict:
    """Throughput ratio b/a over paired rounds, with a 95% t-interval on the log ratios."""
    if len(a_rates) != len(b_rates) or not a_rates:
        raise ValueError(f"paired rounds need equal, non-empty lists (got {len(a_rates)} and {len(b_rates)})")
    logs = np.log(np.asarray(b_rates, dtype=float)) - np.log(np.asarray(a_rates, dtype=float))
    mean, n = float(logs.mean()), int(logs.size)
    if n < 2:
        return {"ratio": math.exp(mean), "ci95_low": 0.0, "ci95_high": math.inf, "rounds": n,
                "log_ratios": logs.tolist(), "method": "one round: no interval"}
    half = t_quantile(n - 1) * float(logs.std(ddof=1)) / math.sqrt(n)
    return {"ratio": math.exp(mean), "ci95_low": math.exp(mean - half), "ci95_high": math.exp(mean + half),
            "rounds": n, "log_ratios": logs.tolist(),
            "method": f"paired t-interval over {n} rounds (fresh processes, alternating order)"}


def projected(ratio: dict, rounds: int) -> dict:
    """The interval `ratio` would have after `rounds` rounds if the rounds to come kept its mean and
    spread: what more rounds can be expected to settle (a futility check, not a verdict). Optimistic
    on purpose (a normal quantile, as if the spread were known), so that a real effect is given up on
    only when even that could not settle it: simulated, a 12% effect in 4% round-to-round noise is
    still found 97% of the time (98% with every extra round run), at 3.65 rounds instead of 3.8
    (3 planned, up to 6)."""
    logs = np.asarray(ratio.get("log_ratios") or [], dtype=float)
    if logs.size < 2 or rounds < 2:
        return ratio
    mean, half = float(logs.mean()), Z_975 * float(logs.std(ddof=1)) / math.sqrt(rounds)
    return {**ratio, "ci95_low": math.exp(mean - half), "ci95_high": math.exp(mean + half), "rounds": rounds}


def rounds_for_half_width(ratio: dict, target: float, most: int) -> int:
    """The fewest rounds in all (up to `most`) whose t-interval would be no wider than +-target (log
    scale) if the rounds to come kept this comparison's spread; `most` when none would. Unlike
    `projected`, not optimistic: it sizes a measurement, it does not judge whether to give up."""
    logs = np.asarray(ratio.get("log_ratios") or [], dtype=float)
    if logs.size < 2:
        return most
    sd = float(logs.std(ddof=1))
    return next((n for n in range(logs.size + 1, most + 1) if t_quantile(n - 1) * sd / math.sqrt(n) <= target), most)


def half_width(ratio: dict) -> float:
    """Half the interval's width on the log scale (0.05 is about +-5%)."""
    if not ratio["ci95_low"] or not math.isfinite(ratio["ci95_high"]):
        return math.inf
    return (math.log(ratio["ci95_high"]) - math.log(ratio["ci95_low"])) / 2


def noise_floor(aa: dict) -> float:
    """The machine's spread from an A/A comparison (baseline against itself), as a relative change:
    the larger of one round's typical deviation (the standard deviation of the rounds' log ratios)
    and the comparison's apparent effect. Not the interval's half-width: with few rounds that
    carries a large t quantile and would call a 5x slowdown 'noise'."""
    logs = np.asarray(aa.get("log_ratios") or [math.log(aa["ratio"])], dtype=float)
    spread = float(logs.std(ddof=1)) if logs.size > 1 else 0.0
    return max(math.exp(spread) - 1, abs(aa["ratio"] - 1))


def round_spread(ratio: dict) -> float | None:
    """One round's spread of a paired comparison: the standard deviation of its rounds' log ratios
    (None with fewer than two rounds)."""
    logs = np.asarray(ratio.get("log_ratios") or [], dtype=float)
    return float(logs.std(ddof=1)) if logs.size > 1 else None


def floor_at(floor: float, rounds: int) -> float:
    """The noise floor at a comparison's precision. The A/A gives one round's spread; a mean over n
    rounds moves by about that over sqrt(n). Undivided, it made the verdict hang on the A/A's own
    luck: one run's 4-round A/A came out at 10.4% (the run before, 2.8%) and turned away a 9% gain
    whose own four rounds agreed within 2%."""
    return floor / math.sqrt(max(1, rounds or 1))


@dataclass(frozen=True)
class NoiseFloor:
    """The A/A's noise floor, fitted to each comparison it judges.

    The A/A runs where the baseline is: on a loader-bound baseline its rounds spread 18% (one H200
    run), while a compute-bound pair later in the ladder spread a quarter of that, and the A/A's
    floor hid a 12% TF32 gain there. The floor has two parts (noise_floor: the larger of them): one
    round's spread, and the A/A's apparent effect, an offset between identical configurations. A
    comparison is held to the spread scaled by its own round-to-round spread against the A/A's (never
    above it: a noisier pair already has a wider interval), or to the offset, which does not shrink
    with the pair's noise, whichever is larger; then divided by the square root of its rounds
    (floor_at). A comparison with one round, or an A/A without a spread, keeps the A/A's floor.
    """

    value: float = 0.0              # noise_floor(aa): one round's A/A spread or its offset, the larger
    spread: float | None = None     # round_spread(aa): the A/A's log-ratio standard deviation
    offset: float = 0.0             # |aa ratio - 1|: the A/A's apparent effect

    @classmethod
    def from_aa(cls, aa: dict | None) -> "NoiseFloor":
        """From an A/A comparison (stats.paired_ratio), or its record in verdicts.json."""
        if not aa:
            return cls()
        value = aa["noise_floor"] if "noise_floor" in aa else noise_floor(aa)
        return cls(value, round_spread(aa), abs(aa["ratio"] - 1))

    def scale(self, ratio: dict) -> float:
        """How much of the A/A's spread applies to this comparison: its spread over the A/A's, at most 1."""
        own = round_spread(ratio)
        if own is None or not self.spread:
            return 1.0
        return min(1.0, own / self.spread)

    def fitted(self, ratio: dict) -> float:
        """The floor for this comparison, before the square root of its rounds (floor_at)."""
        if not self.spread:
            return self.value
        return max((math.exp(self.spread) - 1) * self.scale(ratio), self.offset)

    def at(self, ratio: dict) -> float:
        """The floor an effect of this comparison must clear: fitted, at its number of rounds."""
        return floor_at(self.fitted(ratio), ratio.get("rounds") or 1)


NO_FLOOR = NoiseFloor()


def judged_verdict(ratio: dict, min_effect: float, floor: NoiseFloor = NO_FLOOR) -> str:
    """faster, slower, no significant change, or inconclusive.

    faster: the whole interval above 1 + min_effect, and the effect above the noise floor (the A/A's
    one-round spread fitted to this comparison's own spread, at its number of rounds: NoiseFloor.at);
    slower: the whole interval below 1 (and the effect above that floor); inconclusive: too wide to
    tell, wider than INCONCLUSIVE_HALF_WIDTH or reaching both below 1 + min_effect and above a
    PLAUSIBLE_GAIN; otherwise no significant change (the interval rules out any gain worth having).
    """
    low, high, point = ratio["ci95_low"], ratio["ci95_high"], ratio["ratio"]
    floor_now = floor.at(ratio)
    if low > 1 + min_effect and point - 1 > floor_now:
        return "faster"
    if high < 1 and 1 - point > floor_now:
        return "slower"
    # Open: the interval reaches both below the keep threshold and up to a gain worth having.
    if half_width(ratio) > INCONCLUSIVE_HALF_WIDTH or (low < 1 + min_effect and high > 1 + max(PLAUSIBLE_GAIN, min_effect)):
        return "inconclusive"
    return "no significant change"


def still_open(ratio: dict, min_effect: float, floor: NoiseFloor, most_rounds: int) -> bool:
    """Whether one more round is worth its time: the answer is inconclusive, and `most_rounds` rounds
    with the same mean and spread (projected: optimistic) could settle it."""
    if judged_verdict(ratio, min_effect, floor) != "inconclusive":
        return False
    return judged_verdict(projected(ratio, most_rounds), min_effect, floor) != "inconclusive"


INCONCLUSIVE_TEXT = "inconclusive: too noisy, rerun on a quiet machine"
# How far "what it would take" looks: more rounds than this at one spread is a quieter machine's job.
MOST_ROUNDS_ASKED = 24


def rounds_to_decide(ratio: dict, min_effect: float, floor: NoiseFloor = NO_FLOOR, most: int = MOST_ROUNDS_ASKED) -> int | None:
    """The fewest rounds in all that would decide an inconclusive comparison if the rounds to come
    kept its mean and spread (projected: optimistic); None when even `most` would not."""
    for rounds in range(max(2, (ratio.get("rounds") or 1) + 1), most + 1):
        if judged_verdict(projected(ratio, rounds), min_effect, floor) != "inconclusive":
            return rounds
    return None


def would_take(ratio: dict, min_effect: float, floor: NoiseFloor = NO_FLOOR) -> dict:
    """What deciding an inconclusive comparison would take, in words and rounds."""
    rounds, had = rounds_to_decide(ratio, min_effect, floor), ratio.get("rounds") or 1
    if rounds is None or len(ratio.get("log_ratios") or []) < 2:
        return {"rounds": None, "text": f"more rounds at this spread would not decide it (even {MOST_ROUNDS_ASKED}): "
                                        "a quieter machine"}
    return {"rounds": rounds, "text": f"about {rounds - had} more rounds ({rounds} in all) at this spread"}


def welch_rates(new_rates: list[float], old_rates: list[float]) -> dict:
    """Unpaired ratio of two sets of round throughputs (two runs, or two stages minutes apart)."""
    if len(new_rates) < 2 or len(old_rates) < 2:
        ratio = float(np.exp(np.mean(np.log(new_rates)) - np.mean(np.log(old_rates))))
        return {"ratio": ratio, "ci95_low": 0.0, "ci95_high": math.inf, "method": "one round a side: no interval"}
    diff, se, df = _welch(_log_mean_and_variance(new_rates), _log_mean_and_variance(old_rates))
    half = t_quantile(df) * se
    return {"ratio": math.exp(diff), "ci95_low": math.exp(diff - half), "ci95_high": math.exp(diff + half),
            "method": f"Welch t-interval on log throughput ({len(new_rates)} vs {len(old_rates)} rounds, unpaired)"}


def scaled_rate(throughput: dict, factor: float) -> dict:
    """A throughput's median and interval times a factor (samples/s to tokens/s: x seq_len)."""
    return {key: throughput[key] * factor for key in ("median", "ci95_low", "ci95_high")}


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta I_x(a, b), by its continued fraction (Lentz's method)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - _incomplete_beta(1 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)) / a
    tiny, c, d = 1e-300, 1.0, 0.0
    fraction = 0.0
    for step in range(400):
        m = step // 2
        if step == 0:
            numerator = 1.0
        elif step % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        fraction = (fraction or 1.0) * c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return front * (fraction - 1.0)


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function."""
    tail = 0.5 * _incomplete_beta(df / (df + t * t), df / 2, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_quantile_at(df: float, level: float) -> float:
    """The two-sided `level` quantile of Student's t (the 1 - (1 - level)/2 point), any df and level:
    for intervals wider than 95% (a family of comparisons judged at once). Bisection on t_cdf; the degrees
    of freedom are rounded down (the conservative side), as t_quantile's are."""
    df = max(1, math.floor(df))
    target = 1 - (1 - level) / 2
    low, high = 0.0, 1.0
    while t_cdf(high, df) < target:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < target else (low, middle)
    return (low + high) / 2


def family_level(count: int, level: float = CONFIDENCE) -> float:
    """Bonferroni: each of `count` intervals at this level keeps the chance of any false verdict among
    them under 1 - level."""
    return 1 - (1 - level) / max(count, 1)
