"""compare_runs: per-stage deltas, sorted by relative change; regressions flagged by threshold."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from workbench.report.compare import compare_runs, format_table

RUNS = Path(__file__).parents[1] / "fixtures" / "runs"
LADDER = RUNS / "cpu-ladder-20251124"


def altered_copy(tmp_path: Path, stage_file: str, change) -> Path:
    """A copy of the ladder fixture with one stage result edited by `change(result)`."""
    run_dir = Path(shutil.copytree(LADDER, tmp_path / "run-b"))
    path = run_dir / "stages" / stage_file
    result = json.loads(path.read_text())
    change(result)
    path.write_text(json.dumps(result))
    return run_dir


def slow_down(factor: float):
    """What a bad commit does to a stage: its paired gain over the configuration before it / factor,
    and with it throughput / factor, step time * factor."""
    def change(result: dict) -> None:
        metrics = result["metrics"]
        for key in ("ratio", "ci95_low", "ci95_high"):
            metrics["speedup_vs_previous"][key] /= factor
        for key in ("median", "ci95_low", "ci95_high"):
            metrics["throughput"][key] /= factor
        metrics["step_time_s"]["median"] *= factor
        metrics["mfu"] /= factor
        if metrics.get("achieved_flops_per_s"):
            metrics["achieved_flops_per_s"] /= factor
        metrics["step_times_s"] = [[t * factor for t in repeat] for repeat in metrics["step_times_s"]]
    return change


def test_identical_runs_do_not_regress():
    rows, regressed = compare_runs(LADDER, LADDER)
    assert not regressed
    assert rows and all(row["relative_change"] == 0 for row in rows if row["relative_change"] is not None)
    assert {row["metric"] for row in rows} == {"throughput", "step_time", "peak_memory", "mfu"}


def test_a_run_slowed_on_purpose_regresses_and_leads_the_table(tmp_path):
    slowed = altered_copy(tmp_path, "07-compile.json", slow_down(1.25))
    rows, regressed = compare_runs(LADDER, slowed)
    assert regressed
    assert {r["stage"] for r in rows[:3]} == {"compile"}  # step time +25%, throughput and MFU -20%
    flagged = [r for r in rows if r["regression"]]
    assert [(r["stage"], r["metric"]) for r in flagged] == [("compile", "throughput")]
    assert flagged[0]["relative_change"] == pytest.approx(-0.2)
    table = format_table(rows)
    assert sum("REGRESSION" in line for line in table.splitlines()) == 1


def test_step_time_metric_flags_the_slower_step(tmp_path):
    slowed = altered_copy(tmp_path, "07-compile.json", slow_down(1.25))
    rows, regressed = compare_runs(LADDER, slowed, metric="step_time")
    assert regressed
    assert {(r["stage"], r["metric"]) for r in rows if r["regression"]} == {("compile", "step_time")}


def test_change_within_threshold_or_the_spread_is_not_a_regression(tmp_path):
    slowed = altered_copy(tmp_path, "07-compile.json", slow_down(1.03))
    assert not compare_runs(LADDER, slowed, threshold=0.05)[1]
    assert not compare_runs(LADDER, slowed, threshold=0.02)[1]  # 3% is inside the two runs' own spread
    assert compare_runs(LADDER, altered_copy(tmp_path / "more", "07-compile.json", slow_down(1.15)), threshold=0.05)[1]


def test_raw_throughput_minutes_apart_is_shown_not_judged(tmp_path):
    """The baseline's own throughput moved 20% (another hour, another machine state): nothing paired
    says the code got slower, so the gate stays quiet and says why."""
    def slower_machine(result: dict) -> None:
        for key in ("median", "ci95_low", "ci95_high"):
            result["metrics"]["throughput"][key] /= 1.25
    moved = altered_copy(tmp_path, "00-baseline.json", slower_machine)
    rows, regressed = compare_runs(LADDER, moved)
    assert not regressed
    row = next(r for r in rows if r["stage"] == "baseline" and r["metric"] == "throughput")
    assert row["relative_change"] == pytest.approx(-0.2) and "not judged" in row["note"]


def simulated_run(rng, effect: float, noise: float, rounds: int = 4) -> dict:
    """One run's paired speedup of a stage: `rounds` paired rounds, each log ratio effect + noise."""
    from workbench import stats

    logs = rng.normal(effect, noise, rounds)
    return {**stats.paired_ratio([100.0] * rounds, list(100 * np.exp(logs))), "against": "baseline"}


@pytest.mark.parametrize("noise", [0.04, 0.08])
def test_two_runs_of_one_revision_pass_the_gate_in_19_of_20_comparisons(noise):
    """Eight stages a run, each 4 paired rounds with `noise` round-to-round spread on the log ratio:
    a whole comparison of two runs of one revision raises no regression in at least 95% of cases."""
    from workbench.report.compare import gain_change

    rng = np.random.default_rng(3)
    def any_regression() -> bool:
        return any(gain_change(simulated_run(rng, 0.14, noise), simulated_run(rng, 0.14, noise), 0.03)["ci95_high"] < 0.97
                   for _ in range(8))
    assert np.mean([any_regression() for _ in range(300)]) <= 0.05


def test_a_real_10_percent_regression_is_caught_where_the_rounds_can_see_it():
    from workbench.report.compare import gain_change

    rng = np.random.default_rng(4)
    caught = [gain_change(simulated_run(rng, 0.14, 0.04, 8), simulated_run(rng, 0.14 + np.log(0.9), 0.04, 8),
                          0.03)["ci95_high"] < 0.97 for _ in range(400)]
    assert np.mean(caught) >= 0.9


def test_judged_rows_are_controlled_as_a_family_not_one_by_one():
    """24 stages of two runs of one revision, each 4 paired rounds at 5% noise: judged one by one at 95%,
    some row is flagged faster or slower in most comparisons (24 chances); with the family's level the
    chance of any flagged row stays near 5%, and the compare line says how many false rows to expect."""
    from workbench import stats
    from workbench.report.compare import family_text, gain_change

    rng = np.random.default_rng(5)

    def any_flag(level: float) -> bool:
        verdicts = [gain_change(simulated_run(rng, 0.1, 0.05), simulated_run(rng, 0.1, 0.05), 0.0, level, 24)["verdict"]
                    for _ in range(24)]
        return any(v in ("faster", "slower") for v in verdicts)

    one_by_one = np.mean([any_flag(0.95) for _ in range(200)])
    as_family = np.mean([any_flag(stats.family_level(24)) for _ in range(200)])
    assert one_by_one > 0.3 and as_family <= 0.08
    assert "expect at most 0.05 false rows" in family_text(24) and "99.79%" in family_text(24)


def test_the_t_quantile_at_any_level_is_students():
    from workbench import stats

    assert stats.t_quantile_at(3, 0.95) == pytest.approx(3.182, abs=1e-3)
    assert stats.t_quantile_at(10, 0.99) == pytest.approx(3.169, abs=1e-3)
    assert stats.t_quantile_at(1, 0.95) == pytest.approx(12.706, abs=1e-3)


def test_faster_run_is_not_a_regression(tmp_path):
    faster = altered_copy(tmp_path, "07-compile.json", slow_down(0.8))
    rows, regressed = compare_runs(LADDER, faster)
    assert not regressed and rows[0]["relative_change"] > 0.2


def test_peak_memory_up_regresses_only_for_the_memory_metric(tmp_path):
    def more_memory(result: dict) -> None:
        result["metrics"]["peak_memory_mb"] *= 1.10
    grown = altered_copy(tmp_path, "00-baseline.json", more_memory)
    assert compare_runs(LADDER, grown, metric="peak_memory")[1]
    assert not compare_runs(LADDER, grown, metric="throughput")[1]


def test_stage_failing_in_the_new_run_is_a_regression(tmp_path):
    def fail(result: dict) -> None:
        result.update(status="failed", metrics=None, error="RuntimeError: boom")
    broken = altered_copy(tmp_path, "04-channels_last.json", fail)
    rows, regressed = compare_runs(LADDER, broken)
    assert regressed
    assert rows[0]["stage"] == "channels_last" and rows[0]["note"] == "status kept -> failed"


def test_stages_missing_from_one_run_are_noted_not_flagged():
    rows, regressed = compare_runs(LADDER, RUNS / "baseline-only")
    assert not regressed
    assert {r["note"] for r in rows if r["stage"] == "compile"} == {"only in A"}


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="allowed: throughput"):
        compare_runs(LADDER, LADDER, metric="accuracy")


def test_format_table_is_aligned_and_rounded_like_the_report():
    rows, _ = compare_runs(LADDER, LADDER)
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["stage", "metric", "run", "A", "run", "B", "change", "flag"]
    assert any("217.6 samples/s" in line for line in lines)
    assert format_table([]) == "no stage has a figure in either run"


def test_cli_exit_status_flags_a_slowed_run(tmp_path, capsys):
    from workbench.cli import main

    slowed = altered_copy(tmp_path, "07-compile.json", slow_down(1.25))
    assert main(["compare", str(LADDER), str(slowed)]) == 1
    assert "REGRESSION" in capsys.readouterr().err
    assert main(["compare", str(LADDER), str(LADDER)]) == 0
    assert main(["compare", str(LADDER), str(slowed), "--threshold", "0.5"]) == 0


def test_cli_json_and_exit_status_for_corrupt_and_missing_runs(tmp_path, capsys):
    from workbench.cli import main

    assert main(["compare", str(LADDER), str(LADDER), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["regressed"] is False and doc["rows"][0]["speedup"]["verdict"] == "no significant change"
    corrupt = Path(shutil.copytree(LADDER, tmp_path / "corrupt"))
    (corrupt / "stages" / "03-amp.json").write_text('{"stage": "amp", "metrics": ')
    assert main(["compare", str(LADDER), str(corrupt)]) == 3
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err
    assert main(["compare", str(LADDER), str(tmp_path / "nowhere")]) == 2
    assert main(["compare", str(LADDER), str(LADDER), "--threshold", "-1"]) == 2


def test_remeasure_measures_both_final_configurations_paired_and_gates_on_them(monkeypatch, capsys):
    """--remeasure: A's and B's configurations in paired rounds here and now (the rounds are faked:
    B 12% slower in every round), one verdict, exit 1 for a regression and 0 otherwise."""
    from workbench.cli import main
    from workbench.launch import SideReport
    from workbench.run import remeasure
    from workbench.run.rounds import Comparison

    def rounds_of(ratio):
        def compare(bench, a, b, count, label):
            side = lambda key, rate: SideReport(key, "measured", metrics={"step_times_s": [[1 / rate] * 4], "samples_per_step": 1})
            jitter = (1.0, 1.01, 0.99, 1.005)[:count]
            return Comparison([side("a", 100 * j) for j in jitter], [side("b", 100 * j * ratio) for j in jitter])
        return compare
    monkeypatch.setattr(remeasure.paired_rounds, "compare", rounds_of(0.88))
    assert main(["compare", str(LADDER), str(LADDER), "--remeasure", "--rounds", "4"]) == 1
    out = capsys.readouterr()
    assert "B/A 0.88x" in out.out and "paired, same time window" in out.err
    monkeypatch.setattr(remeasure.paired_rounds, "compare", rounds_of(1.0))
    assert main(["compare", str(LADDER), str(LADDER), "--remeasure"]) == 0
    assert main(["compare", str(LADDER), str(LADDER), "--remeasure", "--rounds", "1"]) == 2


def test_runs_on_different_machines_say_so_and_older_runs_are_not_called_different(tmp_path, capsys):
    from workbench.cli import main
    from workbench.report.compare import machine_differences

    other = Path(shutil.copytree(LADDER, tmp_path / "other"))
    run = json.loads((other / "run.json").read_text())
    run["environment"]["cpu_generation"] = "AuthenticAMD family 26 model 2 stepping 1"
    run["environment"]["torch"] = "9.9.9"
    (other / "run.json").write_text(json.dumps(run))
    differences = machine_differences(LADDER, other)
    # The fixture predates cpu_generation: silence is not a difference; torch's version is.
    assert len(differences) == 1 and differences[0].startswith("torch: A ") and "B 9.9.9" in differences[0]
    assert machine_differences(LADDER, LADDER) == []
    main(["compare", str(LADDER), str(other)])
    assert "not run on the same machine and software" in capsys.readouterr().out
