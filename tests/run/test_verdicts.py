"""Verdicts that hold: paired rounds stay calibrated where repeats inside one process do not; the keep
rule needs a clear gain; the trace picks the order; the second look and leave-one-out."""
from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from workbench import stats
from workbench.run import comparing, first_pass, headline, leave_one_out, second_look
from workbench.config import RunConfig
from workbench.device import Capabilities
from workbench.launch import SideReport
from workbench.run.record import StageRecord
from workbench.run.rounds import Comparison
from workbench.run.stages import STAGES, StageContext

STAGE = {s.name: s for s in STAGES}


# --- a machine with slow drift and a per-process offset ----------------------------------------------

class Machine:
    """log throughput = config effect + drift(time) + this process's offset + per-window noise."""

    def __init__(self, rng: np.random.Generator, drift=0.15, offset_sd=0.05, noise_sd=0.01, period_s=600.0):
        self.rng, self.offset_sd, self.noise_sd = rng, offset_sd, noise_sd
        self.phase, self.drift, self.period = rng.uniform(0, 2 * np.pi), drift, period_s

    def process(self) -> float:
        return self.rng.normal(0, self.offset_sd)

    def window(self, effect: float, offset: float, t: float) -> float:
        drift = self.drift * np.sin(2 * np.pi * t / self.period + self.phase)
        return float(np.exp(effect + drift + offset + self.rng.normal(0, self.noise_sd)))


def old_design(machine: Machine, effect: float, repeats=5, window_s=3.0, apart_s=120.0) -> dict:
    """Five repeats in one process, then five in another, minutes later; Welch over the repeats."""
    sides = []
    for start, eff in ((0.0, 0.0), (apart_s, effect)):
        offset = machine.process()
        rates = [machine.window(eff, offset, start + i * window_s) for i in range(repeats)]
        sides.append([[1.0 / r] for r in rates])
    return stats.speedup(sides[1], 1, sides[0], 1)


def new_design(machine: Machine, effect: float, rounds=3, window_s=3.0) -> dict:
    """Fresh processes per round, timed back to back in alternating order; paired t over rounds."""
    a_rates, b_rates, t = [], [], 0.0
    for index in range(rounds):
        order = ("a", "b") if index % 2 == 0 else ("b", "a")
        measured = {}
        for side in order:
            measured[side] = machine.window(effect if side == "b" else 0.0, machine.process(), t)
            t += window_s
        a_rates.append(measured["a"])
        b_rates.append(measured["b"])
        t += 10.0  # start-up of the next round's processes
    return stats.paired_ratio(a_rates, b_rates)


def false_positive_rate(design, trials=1500, seed=0) -> float:
    rng = np.random.default_rng(seed)
    called = 0
    for _ in range(trials):
        ratio = design(Machine(rng), 0.0)
        called += ratio["ci95_low"] > 1 or ratio["ci95_high"] < 1
    return called / trials


def test_identical_configurations_old_design_calls_them_different_new_design_stays_calibrated():
    old, new = false_positive_rate(old_design), false_positive_rate(new_design)
    assert old > 0.3, f"the old design should be fooled by drift and process offsets (got {old:.1%})"
    assert new <= 0.05, f"paired rounds must stay calibrated at 95% (got {new:.1%} false positives)"


def test_paired_rounds_still_see_a_real_effect():
    rng = np.random.default_rng(1)
    found = [new_design(Machine(rng), np.log(1.3), rounds=4)["ci95_low"] > 1 for _ in range(300)]
    assert np.mean(found) > 0.8


# --- the keep rule -------------------------------------------------------------------------------------

def ratio(point, low, high):
    return {"ratio": point, "ci95_low": low, "ci95_high": high}


@pytest.mark.parametrize("interval, min_effect, floor, expected", [
    (ratio(1.20, 1.10, 1.31), 0.03, 0.0, "faster"),
    (ratio(1.05, 1.01, 1.09), 0.03, 0.0, "no significant change"),    # above 1, not above 1 + min_effect
    (ratio(1.04, 0.98, 1.10), 0.03, 0.0, "no significant change"),    # never kept on its point estimate
    (ratio(1.06, 1.04, 1.08), 0.03, 0.07, "no significant change"),   # under the machine's noise floor
    (ratio(0.80, 0.70, 0.91), 0.03, 0.0, "slower"),
    (ratio(1.10, 0.60, 2.00), 0.03, 0.0, "inconclusive"),             # too wide to tell
    (ratio(1.02, 0.90, 1.15), 0.03, 0.01, "inconclusive"),            # nothing, or a gain worth having
    (ratio(1.11, 1.02, 1.20), 0.03, 0.0, "inconclusive"),             # a gain, but maybe under 3%: more rounds
])
def test_keep_rule(interval, min_effect, floor, expected):
    assert stats.judged_verdict(interval, min_effect, stats.NoiseFloor(floor)) == expected


def test_noise_floor_is_one_rounds_spread_or_the_apparent_effect():
    aa = stats.paired_ratio([100, 100, 100, 100], [104, 96, 103, 97])
    assert stats.noise_floor(aa) == pytest.approx(0.0417, abs=1e-3)  # sd of the log ratios, not the CI
    biased = stats.paired_ratio([100, 100, 100], [110, 110.5, 109.5])
    assert stats.noise_floor(biased) == pytest.approx(0.10, abs=1e-3)
    # two noisy rounds do not turn a 5x slowdown into "noise"
    noisy = stats.paired_ratio([3.2, 2.2], [3.9, 2.1])
    assert stats.judged_verdict(ratio(0.22, 0.19, 0.25), 0.03, stats.NoiseFloor.from_aa(noisy)) == "slower"


# --- the order the trace picks ----------------------------------------------------------------------

def finding(rule):
    return {"rule": rule, "severity": "high", "evidence": "", "action": ""}


PENDING = [STAGE[n] for n in ("dataloader", "batched_input", "tf32", "amp", "channels_last", "fused_optimizer",
                              "compile", "accumulation", "checkpointing")]


@pytest.mark.parametrize("findings, order, expected", [
    ([finding("optimizer_step")], "trace", "fused_optimizer"),
    ([finding("data_loading")], "trace", "dataloader"),
    ([finding("launch_bound")], "trace", "compile"),
    ([], "trace", "dataloader"),
    ([finding("optimizer_step")], "fixed", "dataloader"),
])
def test_next_stage_follows_the_trace(findings, order, expected):
    stage, why = first_pass.next_stage(list(PENDING), findings, order)
    assert stage.name == expected
    assert ("optimizer_step" in why) == (expected == "fused_optimizer")


# --- second look and leave-one-out on fake comparisons -----------------------------------------------

def raw(rate: float, side: str = "b") -> SideReport:
    return SideReport(side, "measured", metrics={"step_times_s": [[1.0 / rate] * 4], "samples_per_step": 1})


def comparison(gain: float, rounds=4) -> Comparison:
    jitter = [1.0, 1.01, 0.99, 1.005][:rounds]
    return Comparison([raw(100 * j) for j in jitter], [raw(100 * j * gain * (1 + 0.002 * i)) for i, j in enumerate(jitter)])


CPU_BF16 = Capabilities("bf16", "native", False, False, False, True)


def fake_session(logs, started: float | None = None):
    cfg = RunConfig(data="synthetic")
    return SimpleNamespace(base_cfg=cfg, context=StageContext("cpu", CPU_BF16), log=logs.append, mode="ladder",
                           time_budget_s=480.0, started=time.monotonic() if started is None else started)


def fake_compare(gains: dict):
    def compare(session, a, b, label, a_name, b_name, trace_dir=None, rounds=None, measured=None, floor=None, **kw):
        return comparison(gains[label])
    return compare


def saving(monkeypatch) -> list[dict]:
    """comparing.save without a run folder: the documents it would write, in order."""
    saved = []
    monkeypatch.setattr(comparing, "save", lambda session, doc: saved.append(doc) or StageRecord.of(doc))
    return saved


class Book:
    def __init__(self):
        self.doc = {"second_look": [], "leave_one_out": []}

    def add(self, key, entry):
        self.doc[key].append(entry)


def test_no_second_look_starts_once_the_time_budget_is_spent(monkeypatch):
    logs, book = [], Book()
    session = fake_session(logs, started=time.monotonic() - 500.0)
    state = comparing.LadderState(session.base_cfg)
    finished = [StageRecord.of({"stage": "amp", "status": "rejected", "kind": "speed"})]
    monkeypatch.setattr(comparing, "compare", fake_compare({}))  # any comparison would fail this test
    second_look.second_look(session, finished, state, book)
    entry = book.doc["second_look"][0]
    assert entry["adopted"] is False and "time budget (480 s, --time-budget) was spent" in entry["not_retried"]
    assert any("not retried: the time budget" in line for line in logs)


def test_second_look_adopts_an_interaction_and_skips_probes(monkeypatch):
    logs, book = [], Book()
    session = fake_session(logs)
    fused = STAGE["fused_optimizer"].apply(session.base_cfg, session.context)
    state = comparing.LadderState(fused, applied=["fused_optimizer"])
    finished = [StageRecord.of(doc) for doc in (
        {"stage": "amp", "status": "rejected", "kind": "speed"},
        {"stage": "channels_last", "status": "rejected", "kind": "speed"},
        {"stage": "compile", "status": "rejected", "kind": "speed", "probe": True},
        {"stage": "checkpointing", "status": "tradeoff", "kind": "memory"})]
    monkeypatch.setattr(comparing, "compare", fake_compare({"second look: amp": 1.15, "second look: channels_last": 0.9}))
    saved = saving(monkeypatch)
    second_look.second_look(session, finished, state, book)
    assert [e["stage"] for e in book.doc["second_look"]] == ["amp", "channels_last"]
    assert [e["adopted"] for e in book.doc["second_look"]] == [True, False]
    assert state.applied == ["fused_optimizer", "amp"] and state.cfg.precision == "bf16"
    # amp's own file now says it was kept, on the comparison that decided it; channels_last's is untouched
    assert [d["stage"] for d in saved] == ["amp"] and saved[0]["status"] == "kept" and finished[0].status == "kept"
    assert saved[0]["metrics"]["speedup_vs_previous"]["against"].startswith("final so far")


def test_a_stage_adopted_on_its_second_look_stands_on_that_comparison_and_the_configuration_it_joined(monkeypatch):
    """Its first pass measured another configuration (without the stages kept since): its figure
    against the baseline is the configuration so far's times the second look's, and later stages chain on it."""
    logs, book = [], Book()
    session = fake_session(logs)
    fused = STAGE["fused_optimizer"].apply(session.base_cfg, session.context)
    paired_fused = {"ratio": 1.25, "ci95_low": 1.2, "ci95_high": 1.3, "log_ratios": [0.22, 0.23, 0.22, 0.225],
                    "rounds": 4, "verdict": "faster", "against": "baseline", "paired": True}
    kept = StageRecord.of({"stage": "fused_optimizer", "status": "kept", "kind": "speed",
                           "metrics": {"speedup_vs_baseline": paired_fused}})
    state = comparing.LadderState(fused, applied=["fused_optimizer"], result=kept)
    first_pass = {"ratio": 1.01, "ci95_low": 0.9, "ci95_high": 1.1, "verdict": "no significant change",
                  "paired": True, "against": "baseline"}
    finished = [StageRecord.of({"stage": "amp", "status": "rejected", "kind": "speed",
                                "metrics": {"speedup_vs_baseline": first_pass}})]
    monkeypatch.setattr(comparing, "compare", fake_compare({"second look: amp": 1.15}))
    saved = saving(monkeypatch)
    second_look.second_look(session, finished, state, book)
    amp = saved[0]
    chained = amp["metrics"]["speedup_vs_baseline"]
    assert chained["chain"] == ["fused_optimizer", "amp"] and chained["paired"]
    assert chained["ratio"] == pytest.approx(1.25 * book.doc["second_look"][0]["ratio"])
    assert amp["adopted_config"] == state.cfg.to_dict() and state.cfg.precision == "bf16"
    assert state.result.stage == "amp"  # what a later adoption chains on
    # a resumed run's pass reads the stage as the pass left it, not the figure of the configuration it joined
    resumed = comparing.first_pass_view(amp)
    assert resumed["status"] == "rejected" and resumed["metrics"]["speedup_vs_baseline"] == first_pass
    assert "adopted_config" not in resumed and "second_look" not in resumed


def _skipped_on_its_gate(monkeypatch, final_host_cpu: dict) -> tuple[Book, list, list]:
    """A pass that skipped host_allocator on the baseline's figures; the final configuration (a larger
    batch, kept) measured final_host_cpu."""
    from workbench.training import host_memory
    monkeypatch.setattr(host_memory, "unavailable_reason", lambda: None)
    logs, book = [], Book()
    session = fake_session(logs)
    final = session.base_cfg.with_overrides(batch_size=256)
    kept = StageRecord.of({"stage": "batch_size", "status": "kept", "kind": "batch",
                           "metrics": {"host_cpu": final_host_cpu}})
    state = comparing.LadderState(final, applied=["batch_size"], result=kept)
    skipped = StageRecord.of({"stage": "host_allocator", "status": "skipped", "kind": "speed",
                              "reason": "the configuration it builds on spends 1.0% of its CPU time in the kernel"})
    looked = []

    def measured(rate: float, side: str) -> SideReport:  # a round's report as a measuring process sends it
        return SideReport(side, "measured", metrics={
            "step_times_s": [[1.0 / rate] * 4], "samples_per_step": 1, "throughput": {"median": rate},
            "epoch_time_s": 50000 / rate, "step_time_s": {"median": 1.0 / rate}, "peak_memory_mb": 300.0,
            "final_loss": 2.0})

    def compare(session, a, b, label, *args, **kw):
        looked.append((label, b.host_allocator))
        return Comparison([measured(100 * j, "a") for j in (1.0, 1.01, 0.99, 1.005)],
                          [measured(115 * j, "b") for j in (1.0, 1.01, 0.99, 1.005)])
    monkeypatch.setattr(comparing, "compare", compare)
    saved = saving(monkeypatch)
    second_look.second_look(session, [skipped], state, book)
    return book, looked, saved


def test_a_stage_skipped_on_a_measured_figure_is_tried_where_the_final_configuration_passes_it(monkeypatch):
    book, looked, saved = _skipped_on_its_gate(monkeypatch, {"system_time_share": 0.1, "minor_faults_per_step": 40000.0})
    assert looked == [("second look: host_allocator", "retain")]
    assert book.doc["second_look"][0]["adopted"] and saved[0]["status"] == "kept"
    assert "spends 1.0%" in saved[0]["reason"] and "adopted" in saved[0]["reason"]
    # the second look was its only measurement: its figures are that one's, and its line says them
    assert saved[0]["metrics"]["throughput"]["median"] > 0 and saved[0]["metrics"]["speedup_vs_previous"]["ratio"] > 1
    assert saved[0]["metrics"]["speedup_vs_previous"]["against"] == "final so far (second look)"
    assert saved[0]["config"]["host_allocator"] == "retain" and saved[0]["config"]["batch_size"] == 256
    from workbench.run import console
    assert "samples/s" in console.one_line(saved[0])


def test_a_stage_still_under_its_gate_on_the_final_configuration_is_left_as_it_was(monkeypatch):
    book, looked, saved = _skipped_on_its_gate(monkeypatch, {"system_time_share": 0.01, "minor_faults_per_step": 12.0})
    assert looked == [] and book.doc["second_look"] == [] and saved == []


def test_a_stage_the_second_look_cannot_apply_is_said_not_retried(monkeypatch):
    logs, book = [], Book()
    session = fake_session(logs)
    session.context = StageContext("cuda", CPU_BF16)  # the host allocator does not apply on a GPU
    state = comparing.LadderState(session.base_cfg)
    finished = [judged("host_allocator", "undecided", 1.09, 0.93, 1.28, "inconclusive")]
    monkeypatch.setattr(comparing, "compare", lambda *args, **kw: pytest.fail("nothing to measure"))
    second_look.second_look(session, finished, state, book)
    entry = book.doc["second_look"][0]
    assert entry["stage"] == "host_allocator" and not entry["adopted"] and "on cuda" in entry["not_retried"]
    assert entry["ratio"] == 1.09  # the first pass's figure, shown as such
    assert any("host_allocator: not retried" in line for line in logs)


def judged(stage: str, status: str, ratio: float, low: float, high: float, verdict: str) -> StageRecord:
    return StageRecord.of({"stage": stage, "status": status, "kind": "speed", "metrics": {
        "speedup_vs_previous": {"ratio": ratio, "ci95_low": low, "ci95_high": high, "verdict": verdict}}})


def test_second_look_gives_up_only_on_a_slowdown_nothing_since_can_offset(monkeypatch):
    logs, book = [], Book()
    session = fake_session(logs)
    fused = STAGE["fused_optimizer"].apply(session.base_cfg, session.context)
    state = comparing.LadderState(fused, applied=["fused_optimizer"])
    finished = [judged("amp", "rejected", 0.97, 0.90, 1.04, "no significant change"),
                judged("channels_last", "rejected", 0.88, 0.80, 0.97, "slower"),
                judged("compile", "rejected", 0.80, 0.72, 0.86, "slower"),
                judged("fused_optimizer", "kept", 1.15, 1.10, 1.20, "faster")]
    looked = []
    monkeypatch.setattr(comparing, "compare", lambda session, a, b, label, *args, **kw: looked.append(label) or comparison(1.0))
    second_look.second_look(session, finished, state, book)
    # amp did not help (a look, always); channels_last at best 0.97x * 1.15 > 1.03; compile 0.86 * 1.15 < 1.03
    assert looked == ["second look: amp", "second look: channels_last"]
    skipped = book.doc["second_look"][-1]
    assert skipped["stage"] == "compile" and not skipped["adopted"] and "0.86x" in skipped["not_retried"]
    assert any("compile: not retried" in line for line in logs)


def test_leave_one_out_drops_a_stage_that_no_longer_pays(monkeypatch):
    logs, book = [], Book()
    session = fake_session(logs)
    cfg = session.base_cfg
    for name in ("channels_last", "fused_optimizer"):
        cfg = STAGE[name].apply(cfg, session.context)
    state = comparing.LadderState(cfg, applied=["channels_last", "fused_optimizer"])
    monkeypatch.setattr(comparing, "compare", fake_compare({"leave-one-out: channels_last": 1.0,
                                                          "leave-one-out: fused_optimizer": 1.25}))
    finished = [StageRecord.of({"stage": name, "status": "kept", "kind": "speed", "reason": "faster, kept",
                                "metrics": {"speedup_vs_previous": {"ratio": 1.1}}})
                for name in ("channels_last", "fused_optimizer")]
    saved = saving(monkeypatch)
    leave_one_out.leave_one_out(session, state, book, finished)
    entries = {e["stage"]: e for e in book.doc["leave_one_out"]}
    assert entries["channels_last"]["dropped"] and not entries["fused_optimizer"].get("dropped")
    assert state.applied == ["fused_optimizer"] and state.cfg.memory_format == "contiguous"
    # its own file says so: no figure calls it kept while the final configuration lacks it
    assert [d["stage"] for d in saved] == ["channels_last"] and finished[0].status == "dropped"
    assert "leave-one-out on the final configuration" in saved[0]["reason"]
    assert comparing.first_pass_view(saved[0])["status"] == "kept"  # what a resumed pass builds on


def test_a_comparison_already_made_is_reused_not_measured_again(monkeypatch):
    calls, logs = [], []
    monkeypatch.setattr(comparing.paired_rounds, "compare", lambda *args: calls.append(args) or comparison(1.2))
    session = fake_session(logs)
    a, b, measured = session.base_cfg, session.base_cfg.with_overrides(fused_optimizer=True), {}
    first = comparing.compare(session, a, b, "fused_optimizer", "baseline", "fused_optimizer", measured=measured)
    again = comparing.compare(session, a, b, "leave-one-out: fused_optimizer", "without", "final", measured=measured)
    assert again is first and len(calls) == 1 and "already made" in logs[-1]


@pytest.mark.parametrize("field, value, words", [
    ("rounds", 0, "rounds=0 is too small"),
    ("min_effect", -0.1, "min_effect=-0.1 is out of range"),
    ("min_effect", 1.5, "allowed: 0 <= min_effect < 1"),
    ("order", "random", "order='random' is not allowed; choose one of: trace, fixed"),
])
def test_bad_verdict_options_are_one_line_errors(field, value, words):
    from workbench.errors import UsageError

    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        RunConfig(**{field: value})


def test_bad_verdict_options_on_the_command_line_exit_2(capsys):
    from workbench.cli import main

    assert main(["run", "--order", "random"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "order='random'" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf"])
def test_a_bad_time_budget_is_one_line_before_anything_is_written(value, capsys, tmp_path, monkeypatch):
    from workbench.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--time-budget", value, "--data", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert "time_budget_s=" in err and "a positive number of seconds" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_open_answer_gets_more_rounds_and_the_extras_stay_in_the_planned_last(monkeypatch):
    from workbench.run import rounds as paired

    ratios = iter([1.10, 1.22, 1.08, 1.18, 1.16, 1.17])  # open at three rounds, settled with more
    calls = []

    def one_round(session, launcher, a, b, order, last):
        calls.append((order, last))
        gain = next(ratios)
        return {"a": raw(100.0, "a"), "b": raw(100.0 * gain)}, None

    monkeypatch.setattr(paired, "_one_round", one_round)
    monkeypatch.setattr(paired, "launcher_for", lambda *args: None)
    session = SimpleNamespace(log=lambda message: None)
    more = comparing._still_open(stats.NO_FLOOR, 0.03, 6)
    side = paired.Side(RunConfig(), "x")
    result = paired.compare(session, side, side, 3, "test", more, 6)
    lasts = [last for _, last in calls]
    assert 3 < len(result.a_rounds) <= 6 and lasts[:3] == [False, False, True] and not any(lasts[3:])
    assert [order for order, _ in calls][:2] == [("a", "b"), ("b", "a")]  # alternating
    assert stats.judged_verdict(result.ratio(), 0.03) == "faster"
    ratios = iter([1.2, 1.2, 1.2])
    settled = paired.compare(session, side, side, 3, "test", lambda c: False, 6)
    assert len(settled.a_rounds) == 3


def test_no_extra_rounds_when_even_the_most_rounds_would_leave_it_open(monkeypatch):
    """A 4% effect in 10% noise: six rounds at that spread would still straddle 1, so the answer
    stays inconclusive after the planned three and the time goes to the next stage."""
    from workbench.run import rounds as paired

    ratios = iter([1.15, 0.94, 1.05, 1.20, 1.20, 1.20])

    def one_round(session, launcher, a, b, order, last):
        return {"a": raw(100.0, "a"), "b": raw(100.0 * next(ratios))}, None

    monkeypatch.setattr(paired, "_one_round", one_round)
    monkeypatch.setattr(paired, "launcher_for", lambda *args: None)
    said = []
    session = SimpleNamespace(log=said.append, base_cfg=RunConfig())
    side = paired.Side(RunConfig(), "x")
    result = paired.compare(session, side, side, 3, "test", comparing._still_open(stats.NO_FLOOR, 0.03, 6), 6)
    assert len(result.a_rounds) == 3
    assert stats.judged_verdict(result.ratio(), 0.03) == "inconclusive"
    ahead = stats.projected(result.ratio(), 6)
    assert ahead["ci95_low"] < 1 < ahead["ci95_high"] and ahead["ratio"] == result.ratio()["ratio"]
    comparing._say_if_futile(session, result, stats.NO_FLOOR, 6)
    assert any("no extra rounds" in line for line in said)


def _rounds_until_settled(logs: list[float], more, most: int) -> list[float]:
    """The rounds a comparison runs when `more` decides about each extra one (3 planned)."""
    taken = logs[:3]
    while len(taken) < most:
        ratio = stats.paired_ratio([1.0] * len(taken), [math.exp(x) for x in taken])
        open_now = SimpleNamespace(a_rounds=taken, failure=None, interrupted=None, ratio=lambda r=ratio: r)
        if not more(open_now):
            break
        taken = logs[:len(taken) + 1]
    return taken


def test_the_futility_check_saves_rounds_without_losing_a_real_effect():
    """Simulated: a real 12% gain in 4% round-to-round noise is found about as often as when every
    open answer gets all its extra rounds, in fewer rounds; a null effect in 8% noise costs fewer rounds."""
    rng = np.random.default_rng(7)

    def trial(effect: float, sigma: float, more) -> tuple[str, int]:
        taken = _rounds_until_settled(list(rng.normal(math.log(effect), sigma, 6)), more, 6)
        ratio = stats.paired_ratio([1.0] * len(taken), [math.exp(x) for x in taken])
        return stats.judged_verdict(ratio, 0.03), len(taken)

    every_round = lambda c: stats.judged_verdict(c.ratio(), 0.03) == "inconclusive"
    futile = comparing._still_open(stats.NO_FLOOR, 0.03, 6)
    for effect, sigma in ((1.12, 0.04), (1.0, 0.08)):
        old = [trial(effect, sigma, every_round) for _ in range(400)]
        new = [trial(effect, sigma, futile) for _ in range(400)]
        found = lambda runs: sum(v == "faster" for v, _ in runs) / len(runs)
        rounds = lambda runs: np.mean([n for _, n in runs])
        assert rounds(new) < rounds(old)
        if effect > 1:
            assert found(new) >= found(old) - 0.03 and found(new) > 0.9
        else:
            assert found(new) <= 0.05


# --- rounds where they pay: undecided stages settled first by reach, within the time budget ----------

def test_undecided_stages_get_their_second_look_first_the_widest_reach_first_and_afresh(monkeypatch):
    logs, book, looked = [], Book(), []
    session = fake_session(logs)
    state = comparing.LadderState(session.base_cfg, applied=[])
    finished = [judged("batched_input", "rejected", 1.02, 0.99, 1.04, "no significant change"),
                StageRecord.of({"stage": "channels_last", "status": "undecided", "kind": "speed", "metrics": {
                    "speedup_vs_previous": {"ratio": 1.01, "ci95_low": 0.95, "ci95_high": 1.08, "verdict": "inconclusive"}}}),
                StageRecord.of({"stage": "amp", "status": "undecided", "kind": "speed", "metrics": {
                    "speedup_vs_previous": {"ratio": 1.10, "ci95_low": 0.92, "ci95_high": 1.33, "verdict": "inconclusive"}}})]

    def compare(session, a, b, label, *args, **kw):
        looked.append((label, kw.get("fresh", False), kw.get("extra")))
        return comparison(1.0)
    monkeypatch.setattr(comparing, "compare", compare)
    saved = saving(monkeypatch)
    second_look.second_look(session, finished, state, book)
    # both undecided stages were decided "no significant change" on their second look: rejected now
    assert {d["stage"]: d["status"] for d in saved} == {"amp": "rejected", "channels_last": "rejected"}
    assert looked == [("second look: amp", True, comparing.SETTLING_ROUNDS_FACTOR),
                      ("second look: channels_last", True, comparing.SETTLING_ROUNDS_FACTOR),
                      ("second look: batched_input", False, comparing.EXTRA_ROUNDS_FACTOR)]


def test_extra_rounds_stop_where_the_time_budget_ends():
    said = []
    session = SimpleNamespace(time_budget_s=100.0, started=time.monotonic() - 99.0, log=said.append)
    taken = SimpleNamespace(a_rounds=[1, 2, 3, 4])
    more = comparing._within_budget(session, lambda c: True, begun=time.monotonic() - 8.0)  # 2 s a round, 1 s left
    assert not more(taken) and "time budget (100 s" in said[-1]
    roomy = SimpleNamespace(time_budget_s=100.0, started=time.monotonic(), log=said.append)
    assert comparing._within_budget(roomy, lambda c: True, begun=time.monotonic() - 8.0)(taken)
    assert not comparing._within_budget(roomy, lambda c: False, begun=time.monotonic())(taken)  # settled: no more


def simulated_round(rng, effect: float, noise: float = 0.12, burst_p: float = 0.15, burst: float = 0.35) -> tuple[float, float]:
    """One paired round's throughputs: round-to-round noise on the log ratio, slow drift common to
    both sides (it cancels in the ratio), and now and then a burst that hits one side's window."""
    drift = rng.normal(0, 0.2)
    hit = rng.random() < burst_p
    a = 100 * math.exp(drift - (burst if hit and rng.random() < 0.5 else 0.0))
    b = 100 * math.exp(drift + effect + rng.normal(0, noise) - (burst if hit and rng.random() < 0.5 else 0.0))
    return a, b


def decided(rng, effect: float, planned: int, most: int, floor: stats.NoiseFloor) -> tuple[str, int]:
    """A comparison under the ladder's own round rule (comparing._still_open, projected to `most`)."""
    a, b = [], []
    more = comparing._still_open(floor, 0.05, most)
    def ratio():
        return stats.paired_ratio(a, b)
    def one_round(index, last):
        x, y = simulated_round(rng, effect)
        a.append(x), b.append(y)
        return True
    view = SimpleNamespace(a_rounds=a, failure=None, interrupted=None, ratio=ratio)
    from workbench.run import rounds as paired
    taken = paired.loop(planned, one_round, lambda: more(view), most)
    return stats.judged_verdict(ratio(), 0.05, floor), taken


def found_rates(effect: float, trials: int = 400, seed: int = 7) -> tuple[float, float, float]:
    """How often a stage with `effect` is kept: today's rule (4 rounds, up to 8 when they could settle
    it, no fresh look) against the new one (4 in the pass; undecided, a fresh second look of up to
    SETTLING_ROUNDS_FACTOR times 4)."""
    rng = np.random.default_rng(seed)
    floor = stats.NoiseFloor(0.12)  # the A/A's one-round spread on such a machine
    old = new = rounds_new = 0
    for _ in range(trials):
        verdict, _ = decided(rng, effect, 4, 8, floor)
        old += verdict == "faster"
        first, taken = decided(rng, effect, 4, 4, floor)
        if first == "inconclusive":
            first, more_taken = decided(rng, effect, 4, 4 * comparing.SETTLING_ROUNDS_FACTOR, floor)
            taken += more_taken
        new += first == "faster"
        rounds_new += taken
    return old / trials, new / trials, rounds_new / trials


def test_a_15_percent_effect_in_12_percent_noise_is_found_more_often_than_today():
    old, new, mean_rounds = found_rates(math.log(1.15))
    assert new > old + 0.1, (old, new)
    assert mean_rounds < 14


def test_settling_rounds_keep_false_faster_verdicts_at_5_percent_or_below():
    _, new, _ = found_rates(0.0, trials=600, seed=11)
    assert new <= 0.05, new


# --- narrowing the headline --------------------------------------------------------------------------

def scripted_rounds(monkeypatch, gains, calls, fail_at=None, stop_at=None):
    """rounds._one_round replaced: round i's b/a is gains[i]; round `fail_at` fails on side b; a Ctrl-C
    comes in round `stop_at` before its windows are in."""
    from workbench.run import rounds as paired

    def one_round(session, launcher, a, b, order, last):
        index = len(calls)
        calls.append((order, last))
        if index == fail_at:
            return {"a": raw(100.0, "a"), "b": SideReport.failed("b", "out of memory")}, None
        if index == stop_at:
            return {"a": raw(100.0, "a"), "b": SideReport.failed("b", "not measured: the run was stopped")}, KeyboardInterrupt()
        return {"a": raw(100.0, "a"), "b": raw(100.0 * gains[index])}, None

    monkeypatch.setattr(paired, "_one_round", one_round)
    monkeypatch.setattr(paired, "launcher_for", lambda *args: None)


def test_the_headline_is_narrowed_with_extra_rounds_while_the_budget_lasts(monkeypatch):
    from workbench.run import rounds as paired

    gains = [1.45, 1.20, 1.38, 1.25] + [1.30, 1.34, 1.29, 1.33, 1.31, 1.30, 1.32, 1.31]
    calls, said = [], []
    scripted_rounds(monkeypatch, gains, calls)
    session = SimpleNamespace(log=said.append, base_cfg=RunConfig(rounds=4), time_budget_s=480.0,
                              started=time.monotonic())
    side = paired.Side(RunConfig(), "x")
    first = paired.compare(session, side, side, 4, "headline")
    assert stats.half_width(first.ratio()) > headline.HEADLINE_HALF_WIDTH
    narrowed = headline._narrowed(session, first, RunConfig(rounds=4))
    assert 4 < len(narrowed.a_rounds) <= 12 and len(first.a_rounds) == 4  # the earlier comparison is untouched
    assert stats.half_width(narrowed.ratio()) < stats.half_width(first.ratio())
    assert not any(last for _, last in calls[4:])  # the extras ran once, in the planned last round
    assert [order for order, _ in calls[3:6]] == [("b", "a"), ("a", "b"), ("b", "a")]  # alternation goes on
    assert "narrowing it with extra rounds" in " ".join(said)
    # No time left: the headline stays as measured.
    calls.clear()
    late = SimpleNamespace(log=said.append, time_budget_s=480.0, started=time.monotonic() - 480.0)
    assert headline._narrowed(late, first, RunConfig(rounds=4)) is first and calls == []


def test_a_narrow_headline_gets_no_extra_rounds_and_a_failed_extra_round_keeps_the_rest(monkeypatch):
    from workbench.run import rounds as paired

    calls, said = [], []
    session = SimpleNamespace(log=said.append, base_cfg=RunConfig(rounds=4), time_budget_s=480.0,
                              started=time.monotonic())
    side = paired.Side(RunConfig(), "x")
    scripted_rounds(monkeypatch, [1.30, 1.31, 1.30, 1.31], calls)
    tight = paired.compare(session, side, side, 4, "headline")
    assert headline._narrowed(session, tight, RunConfig(rounds=4)) is tight and len(calls) == 4
    calls.clear()
    scripted_rounds(monkeypatch, [1.45, 1.20, 1.38, 1.25, 1.30], calls, fail_at=5)
    wide = paired.compare(session, side, side, 4, "headline")
    kept = headline._narrowed(session, wide, RunConfig(rounds=4))
    assert len(kept.a_rounds) == 5 and kept.failure is None
    assert "the 5 rounds before it stand" in said[-1]


def test_a_stop_while_narrowing_keeps_the_headline_as_it_stood(monkeypatch):
    from workbench.run import rounds as paired

    calls, said = [], []
    session = SimpleNamespace(log=said.append, base_cfg=RunConfig(rounds=4), time_budget_s=480.0,
                              started=time.monotonic())
    side = paired.Side(RunConfig(), "x")
    scripted_rounds(monkeypatch, [1.45, 1.20, 1.38, 1.25, 1.30, 1.31], calls, stop_at=6)
    wide = paired.compare(session, side, side, 4, "headline")
    stopped = headline._narrowed(session, wide, RunConfig(rounds=4))
    assert len(stopped.a_rounds) == 6 and isinstance(stopped.interrupted, KeyboardInterrupt)
    assert stopped.failure is None  # saved as measured (comparing.saved_then_stop), then the stop goes on


def test_the_headline_gets_the_rounds_its_planned_spread_asks_for_not_until_it_looks_narrow(monkeypatch):
    from workbench.run import rounds as paired

    calls, said = [], []
    session = SimpleNamespace(log=said.append, base_cfg=RunConfig(rounds=4), time_budget_s=480.0,
                              started=time.monotonic())
    side = paired.Side(RunConfig(), "x")
    scripted_rounds(monkeypatch, [1.45, 1.20, 1.38, 1.25] + [1.30] * 8, calls)
    wide = paired.compare(session, side, side, 4, "headline")
    needed = stats.rounds_for_half_width(wide.ratio(), headline.HEADLINE_HALF_WIDTH, 12)
    narrowed = headline._narrowed(session, wide, RunConfig(rounds=4))
    # Identical extra rounds narrow the interval at once; the count was fixed before them all the same.
    assert len(narrowed.a_rounds) == needed > 5


def test_the_rounds_for_a_width_use_the_t_quantile_of_the_rounds_to_come():
    ratio = stats.paired_ratio([100.0] * 4, [130.0, 125.0, 137.0, 128.0])
    sd = float(np.std(np.log([1.30, 1.25, 1.37, 1.28]), ddof=1))
    n = stats.rounds_for_half_width(ratio, 0.03, 24)
    assert stats.t_quantile(n - 1) * sd / math.sqrt(n) <= 0.03 < stats.t_quantile(n - 2) * sd / math.sqrt(n - 1)
    assert stats.rounds_for_half_width(ratio, 0.0001, 24) == 24
