"""Paired rounds: two configurations measured in the same time window, a fresh process per round.

A round is one fresh process that builds both configurations, warms both up, then times one window
of each, back to back, alternating which goes first from round to round, so slow drift of the
machine falls on both alike (workbench/run/pair.py). The interval is taken over the rounds' ratios: the
round, not a repeat inside one process, is the replicate, so process-to-process variation is in it.
In its last round a side can also run the untimed extras (accuracy, compute-only ceiling, trace).

Where a fresh process is not possible (a model or dataset object from Python) the same rounds run in
this process; under torchrun (--nproc) each side runs alone in its own processes, one after the
other, in the same alternating order.
"""
from __future__ import annotations

import gc
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbench import stats
from workbench.run import harness
from workbench.config import RunConfig
from workbench.results import write_json_atomic


@dataclass(frozen=True)
class Side:
    """One configuration in a comparison: what to measure, under which name, and where its trace goes."""

    cfg: RunConfig
    name: str
    trace_dir: Path | None = None
    extras: bool | str = False    # run the untimed extras in the last round (executor.BRIEF: the trace only)


@dataclass
class Comparison:
    """Both sides' raw results per round, the last (with extras) of each, and the paired ratio b/a."""

    a_rounds: list[dict] = field(default_factory=list)
    b_rounds: list[dict] = field(default_factory=list)
    failure: dict | None = None   # the raw result of a side that did not measure, if any
    failed_side: str | None = None
    interrupted: KeyboardInterrupt | None = None  # stopped after the last round's windows: re-raised once saved

    @property
    def a_final(self) -> dict | None:
        return self.a_rounds[-1] if self.a_rounds else None

    @property
    def b_final(self) -> dict | None:
        return self.b_rounds[-1] if self.b_rounds else None

    def rates(self, side: str) -> list[float]:
        rounds = self.a_rounds if side == "a" else self.b_rounds
        return [round_throughput(raw) for raw in rounds]

    def ratio(self) -> dict | None:
        if self.failure or not self.a_rounds:
            return None
        return stats.paired_ratio(self.rates("a"), self.rates("b"))


def round_throughput(raw: dict) -> float:
    """Samples per second of one process's timed window (all its steps)."""
    metrics = raw["metrics"]
    steps = [t for repeat in metrics["step_times_s"] for t in repeat]
    return metrics["samples_per_step"] * len(steps) / sum(steps)


def pooled(rounds: list[dict]) -> dict:
    """One configuration's result over its rounds: the extras of the round that ran them, every
    round's windows, and a throughput interval over rounds (one figure per fresh process)."""
    with_extras = [raw for raw in rounds if raw.get("extras")] or rounds
    final = json.loads(json.dumps(with_extras[-1]))  # a copy: the rounds stay as measured
    metrics = final["metrics"]
    metrics["step_times_s"] = [t for raw in rounds for t in raw["metrics"]["step_times_s"]]
    rates = [round_throughput(raw) for raw in rounds]
    metrics["round_throughputs"] = rates
    metrics["throughput"] = _rate_interval(rates)
    metrics["step_time_s"] = stats.spread(metrics["step_times_s"])
    metrics["epoch_time_s"] = metrics["epoch_time_s"] * final_throughput(with_extras[-1]) / metrics["throughput"]["median"]
    return final


def final_throughput(raw: dict) -> float:
    return raw["metrics"]["throughput"]["median"]


def _rate_interval(rates: list[float]) -> dict:
    steps = [[1.0 / rate] for rate in rates]  # one "repeat" per round, samples_per_step 1
    interval = stats.throughput(steps, 1) if len(rates) > 1 else {"median": rates[0], "ci95_low": 0.0,
                                                                    "ci95_high": float("inf")}
    return {**interval, "method": f"t-interval over {len(rates)} rounds (one fresh process each)"}


def compare(session, a: Side, b: Side, rounds: int, label: str, more=None, max_rounds: int = 0) -> Comparison:
    """Run `rounds` paired rounds of a against b; stop early when a side fails. While more(comparison)
    says the answer is still open, add rounds up to max_rounds (the extras stay in the planned last)."""
    result, started = Comparison(), time.perf_counter()
    index = 0
    while index < rounds or (more is not None and index < max_rounds and more(result)):
        last = index == rounds - 1
        index += 1
        order = ("a", "b") if index % 2 == 1 else ("b", "a")
        try:
            raws = _one_round(session, a, b, order, last)
        except KeyboardInterrupt as interrupt:  # after both windows were timed, the round still counts
            partial = getattr(interrupt, "partial", None) or {}
            if not all((partial.get(side) or {}).get("status") == "measured" for side in ("a", "b")):
                raise
            raws, result.interrupted = partial, interrupt
        failed = [side for side in ("a", "b") if raws[side].get("status") not in ("measured", "cancelled")]
        if failed or any(raw.get("status") != "measured" for raw in raws.values()):
            side = failed[-1] if failed else "b"  # the candidate's own failure is the one to report
            result.failure, result.failed_side = raws[side], side
            return result
        result.a_rounds.append(raws["a"])
        result.b_rounds.append(raws["b"])
        _say_round(session, label, a, b, result, index - 1, rounds, started)
        if result.interrupted:
            break
    return result


def _say_round(session, label: str, a: Side, b: Side, result: Comparison, index: int, rounds: int, started: float) -> None:
    rate_a, rate_b = result.rates("a")[-1], result.rates("b")[-1]
    which = f"round {index + 1}/{rounds}" if index < rounds else f"extra round {index + 1} (the answer was open)"
    session.log(f"[{label}] {which}: {a.name} {rate_a:.1f}, {b.name} {rate_b:.1f} samples/s "
                f"({rate_b / rate_a:.2f}x), elapsed {time.perf_counter() - started:.0f} s")


def _one_round(session, a: Side, b: Side, order: tuple[str, str], last: bool) -> dict[str, dict]:
    sides = {"a": a, "b": b}
    with tempfile.TemporaryDirectory() as tmp:
        specs = {key: _spec(session, side, Path(tmp) / f"{key}.json", last and side.extras)
                 for key, side in sides.items()}
        if session.nproc > 1:
            return {key: _alone(specs[key], Path(tmp) / f"{key}.spec.json", session.nproc) for key in order}
        pair = {"pair": specs, "order": list(order)}
        if not session.isolate:
            return _in_process(session, pair)
        return _in_fresh_process(pair, Path(tmp) / "pair.json")


def _spec(session, side: Side, out: Path, extras: bool | str) -> dict:
    return {"config": side.cfg.to_dict(), "stage": side.name, "out": str(out), "peaks": session.peaks,
            "trace_dir": str(side.trace_dir) if side.trace_dir and extras else None, "nproc": session.nproc,
            "extras": extras}


def _in_fresh_process(pair: dict, spec_path: Path) -> dict[str, dict]:
    write_json_atomic(spec_path, pair)
    sides = pair["pair"].values()
    try:
        code = harness.launch(spec_path, harness.on_cpu(*(spec["config"] for spec in sides)))
    except KeyboardInterrupt as interrupt:  # the worker saved the round if both windows were in
        interrupt.partial = {key: harness.saved(Path(spec["out"])) for key, spec in pair["pair"].items()}
        raise
    return {key: harness.saved(Path(spec["out"])) or harness.exit_failure(code) for key, spec in pair["pair"].items()}


def _alone(spec: dict, spec_path: Path, nproc: int) -> dict:
    """Under torchrun: the side runs in its own processes, alone, start to end."""
    write_json_atomic(spec_path, spec)
    code = harness.launch(spec_path, on_cpu=False, nproc=nproc)
    return harness.saved(Path(spec["out"])) or harness.exit_failure(code)


def _in_process(session, pair: dict) -> dict[str, dict]:
    """In this process (objects from Python): the same round, without a fresh process."""
    from workbench.run import pair as pairs
    from workbench.run.worker import failed_raw

    try:
        return pairs.run_pair(pair, session.model_factory, session.dataset)
    except (Exception, torch_oom()) as error:  # as in a fresh process: the round fails, the ladder goes on
        return {key: failed_raw(error) for key in pair["pair"]}
    finally:
        gc.collect()  # a failed stage's tensors must not crowd the next one
        _empty_cuda_cache()


def torch_oom() -> type:
    import torch

    return torch.OutOfMemoryError


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
