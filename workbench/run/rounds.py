"""Paired rounds: two configurations measured in the same time window, a fresh process per round.

A round is one fresh process that builds both configurations, warms both up, then times their
windows back to back, interleaved, alternating which goes first from round to round, so slow drift
of the machine falls on both alike (workbench/measure/pair.py). The interval is taken over the
rounds' ratios: the round, not a repeat inside one process, is the replicate, so process-to-process
variation is in it. In its last planned round a side can also run the untimed extras (accuracy,
compute-only ceiling, trace).

Where the round runs is the launcher's business (workbench/launch): a forked child on a CPU, a fresh
interpreter on a GPU, this process for objects from Python; under torchrun (--nproc, or several nodes)
each side runs alone in its own processes, one after the other, in the same alternating order (so
does each side of a pair that differs in a setting of the whole process: the host allocator); on
several nodes every round is announced to the other nodes first (run/nodes.py). `loop` is the one
round loop, shared with the experiments (workbench/experiments/lab.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from workbench import stats
from workbench.config import PROCESS_SETTINGS, RunConfig
from workbench.device import resolve_device_type
from workbench.launch import Launcher, Outcome, RoundSpec, SideReport, SideSpec, choose
from workbench.launch.launchers import Torchrun
from workbench.run.nodes import AcrossNodes


@dataclass(frozen=True)
class Side:
    """One configuration in a comparison: what to measure, under which name, and where its trace goes."""

    cfg: RunConfig
    name: str
    trace_dir: Path | None = None
    extras: str = "none"    # the untimed extras in the last planned round: none, full or brief (trace only)


@dataclass
class Comparison:
    """Both sides' reports per round, and the paired ratio b/a."""

    a_rounds: list[SideReport] = field(default_factory=list)
    b_rounds: list[SideReport] = field(default_factory=list)
    failure: SideReport | None = None   # the report of a side that did not measure, if any
    failed_side: str | None = None
    interrupted: KeyboardInterrupt | None = None  # stopped after the last round's windows: re-raised once saved
    seconds: list[float] = field(default_factory=list)  # each round's wall time, start to both reports in

    @property
    def a_final(self) -> SideReport | None:
        return self.a_rounds[-1] if self.a_rounds else None

    @property
    def b_final(self) -> SideReport | None:
        return self.b_rounds[-1] if self.b_rounds else None

    def rates(self, side: str) -> list[float]:
        return [round_throughput(report) for report in (self.a_rounds if side == "a" else self.b_rounds)]

    def ratio(self) -> dict | None:
        if self.failure or not self.a_rounds:
            return None
        return stats.paired_ratio(self.rates("a"), self.rates("b"))


def round_throughput(report: SideReport) -> float:
    """Samples per second of one process's timed window (all its steps)."""
    metrics = report.metrics
    steps = [t for repeat in metrics["step_times_s"] for t in repeat]
    return metrics["samples_per_step"] * len(steps) / sum(steps)


def pooled(rounds: list[SideReport]) -> SideReport:
    """One configuration's result over its rounds: the extras of the round that ran them, every
    round's windows, and a throughput interval over rounds (one figure per fresh process)."""
    with_extras = [report for report in rounds if report.extras] or rounds
    last = with_extras[-1]
    metrics = dict(last.metrics)
    metrics["step_times_s"] = [t for report in rounds for t in report.metrics["step_times_s"]]
    rates = [round_throughput(report) for report in rounds]
    metrics["round_throughputs"] = rates
    metrics["throughput"] = _rate_interval(rates)
    if metrics.get("tokens_per_sample"):  # a language model's rate, over the same rounds
        metrics["tokens_per_s"] = stats.scaled_rate(metrics["throughput"], metrics["tokens_per_sample"])
    metrics["step_time_s"] = stats.spread(metrics["step_times_s"])
    metrics["epoch_time_s"] = last.metrics["epoch_time_s"] * last.metrics["throughput"]["median"] / metrics["throughput"]["median"]
    return replace(last, metrics=metrics)


def _rate_interval(rates: list[float]) -> dict:
    steps = [[1.0 / rate] for rate in rates]  # one "repeat" per round, samples_per_step 1
    interval = stats.throughput(steps, 1) if len(rates) > 1 else {"median": rates[0], "ci95_low": 0.0,
                                                                    "ci95_high": float("inf")}
    return {**interval, "method": f"t-interval over {len(rates)} rounds (one fresh process each)"}


def loop(planned: int, one_round: Callable[[int, bool], bool], more: Callable[[], bool] | None = None,
         most: int = 0) -> int:
    """The round loop: one_round(index, last_planned) for each planned round while it says go on;
    then, while more() says the answer is still open, extra rounds up to `most`. Rounds run."""
    index = 0
    while index < planned or (more is not None and index < most and more()):
        if not one_round(index, index == planned - 1):
            return index + 1
        index += 1
    return index


def compare(session, a: Side, b: Side, rounds: int, label: str, more=None, max_rounds: int = 0) -> Comparison:
    """Run `rounds` paired rounds of a against b; stop early when a side fails. While more(comparison)
    says the answer is still open, add rounds up to max_rounds (the extras stay in the planned last)."""
    result = Comparison()
    one_round = _round_runner(session, a, b, label, result, rounds, offset=0)
    loop(rounds, one_round, (lambda: more(result)) if more is not None else None, max_rounds)
    return result


def extend(session, earlier: Comparison, a: Side, b: Side, label: str, more, max_rounds: int,
           why: str) -> Comparison:
    """More rounds of a comparison already made (the same two configurations), appended to a copy of
    it while more(comparison) says so, up to max_rounds in all. The order keeps alternating from where
    it was; no round runs the extras again (the earlier last planned round did). An extra round that
    fails ends the extension, not the comparison: the rounds before it stand; so do they when a stop
    (Ctrl-C) comes mid-round, which the comparison then carries for its caller to re-raise once saved."""
    result = replace(earlier, a_rounds=list(earlier.a_rounds), b_rounds=list(earlier.b_rounds),
                     seconds=list(earlier.seconds))
    done = len(result.a_rounds)
    one_round = _round_runner(session, a, b, label, result, done, offset=done, why=why)
    try:
        loop(0, one_round, lambda: more(result), max_rounds - done)
    except KeyboardInterrupt as stop:  # mid-round: the comparison as it stood is saved, then the stop goes on
        return replace(result, failure=None, failed_side=None, interrupted=stop)
    if result.failure is not None:
        session.log(f"   an extra round did not measure ({result.failure.error or result.failure.status}): "
                    f"the {len(result.a_rounds)} rounds before it stand")
        result = replace(result, failure=None, failed_side=None)
    return result


def _round_runner(session, a: Side, b: Side, label: str, result: Comparison, planned: int,
                  offset: int, why: str = "the answer was open") -> Callable[[int, bool], bool]:
    """One round of a against b into `result` (index counted from `offset`); False to stop."""
    started, launcher = time.perf_counter(), launcher_for(session, a.cfg, b.cfg)

    def one_round(index: int, last: bool) -> bool:
        index += offset
        begun = time.perf_counter()
        order = ("a", "b") if index % 2 == 0 else ("b", "a")
        reports, stopped = _one_round(session, launcher, a, b, order, last and not offset)
        if stopped is not None and not all(reports[side].measured for side in ("a", "b")):
            raise stopped  # stopped before both windows were in: nothing of this round counts
        failed = [side for side in ("a", "b") if reports[side].status not in ("measured", "cancelled")]
        if failed or any(not report.measured for report in reports.values()):
            side = failed[-1] if failed else "b"  # the candidate's own failure is the one to report
            result.failure, result.failed_side = reports[side], side
            return False
        result.a_rounds.append(reports["a"])
        result.b_rounds.append(reports["b"])
        result.seconds.append(time.perf_counter() - begun)
        result.interrupted = stopped
        _say_round(session, label, a, b, result, index, planned, started, why)
        return stopped is None
    return one_round


def launcher_for(session, *configs: RunConfig) -> Launcher:
    """Where this session's rounds run: objects from Python stay here; otherwise by device and processes."""
    link = across_nodes(session)
    if link is not None:
        return AcrossNodes(link, Torchrun(nproc=session.nproc, nodes=session.nodes))
    on_cpu = all(resolve_device_type(cfg.device) == "cpu" for cfg in configs)
    objects = {"model_factory": session.model_factory, "dataset": session.dataset,
               "optimizer_factory": getattr(session, "optimizer_factory", None)} if not session.isolate else None
    return choose(on_cpu, session.nproc, objects)


def measure_alone(session, side: Side) -> SideReport:
    """One configuration alone in its own process (or torchrun's group), not a pair: a reference or a
    probe, never a verdict. A stop is re-raised: nothing of it is kept."""
    outcome = launcher_for(session, side.cfg).run(RoundSpec({"b": side_spec(session, side, False)}, ("b",)))
    if outcome.stopped is not None:
        raise outcome.stopped
    return outcome.report("b")


def across_nodes(session):
    """Node 0's control store when this session's rounds run on several nodes (a Bench outside any
    run, or a session replaced for a one-node reference, has none)."""
    return getattr(session, "link", None)


def _say_round(session, label: str, a: Side, b: Side, result: Comparison, index: int, rounds: int, started: float,
               why: str) -> None:
    rate_a, rate_b = result.rates("a")[-1], result.rates("b")[-1]
    which = f"round {index + 1}/{rounds}" if index < rounds else f"extra round {index + 1} ({why})"
    session.log(f"[{label}] {which}: {a.name} {rate_a:.1f}, {b.name} {rate_b:.1f} samples/s "
                f"({rate_b / rate_a:.2f}x), elapsed {time.perf_counter() - started:.0f} s")


def _one_round(session, launcher: Launcher, a: Side, b: Side, order: tuple[str, str],
               last: bool) -> tuple[dict[str, SideReport], KeyboardInterrupt | None]:
    """Both sides' reports of one round, and the interrupt that stopped it, if one did."""
    specs = {key: side_spec(session, side, last) for key, side in (("a", a), ("b", b))}
    # Under torchrun each side runs alone, start to end; so does each side of a pair that differs in a
    # setting of the whole process (the host allocator): back to back, in the round's order.
    if session.nproc > 1 or across_nodes(session) is not None or needs_own_process(a.cfg, b.cfg):
        reports, stopped = {}, None
        for key in order:
            outcome = launcher.run(RoundSpec({key: specs[key]}, (key,)))
            reports[key], stopped = outcome.report(key), outcome.stopped
            if stopped is not None:
                break
        return {key: reports.get(key) or SideReport.failed(key, "not measured: the run was stopped") for key in specs}, stopped
    outcome: Outcome = launcher.run(RoundSpec(specs, order))
    return {key: outcome.report(key) for key in specs}, outcome.stopped


def needs_own_process(a: RunConfig, b: RunConfig) -> bool:
    """Whether two configurations differ in a setting of the whole process, so cannot share one."""
    return any(getattr(a, name) != getattr(b, name) for name in PROCESS_SETTINGS)


def side_spec(session, side: Side, last: bool) -> SideSpec:
    extras = side.extras if last else "none"
    trace_dir = str(side.trace_dir) if side.trace_dir and extras != "none" else None
    return SideSpec(side.name, side.cfg.to_dict(), session.peaks, trace_dir, extras)
