"""The run's closing lines name the same optimized configuration as the report, in either mode."""
from __future__ import annotations

from pathlib import Path

from workbench.report.summary import final_summary
from workbench.report.table import final_position, load_view

RUNS = Path(__file__).parents[1] / "fixtures" / "runs"


def _result(stage: str, status: str, rate: float, ratio: float, mode: str) -> dict:
    ci = {"ratio": ratio, "ci95_low": ratio * 0.9, "ci95_high": ratio * 1.1, "verdict": "faster"}
    return {"stage": stage, "status": status, "mode": mode, "reason": status, "applied": [stage],
            "metrics": {"throughput": {"median": rate, "ci95_low": rate - 1, "ci95_high": rate + 1},
                        "speedup_vs_baseline": ci, "mfu": None}}


def _run(mode: str) -> list[dict]:
    return [_result("baseline", "baseline", 100.0, 1.0, mode), _result("amp", "kept", 150.0, 1.5, mode),
            _result("compile", "kept", 120.0, 1.2, mode), _result("tf32", "rejected", 90.0, 0.9, mode)]


def test_an_ablation_ends_on_its_best_kept_stage():
    results = _run("ablation")
    assert results[final_position(results, "ablation")]["stage"] == "amp"
    assert "final kept configuration (amp)" in final_summary(results)


def test_a_ladder_ends_on_its_last_carried_stage_or_its_headline():
    results = _run("ladder")
    assert "final kept configuration (compile)" in final_summary(results)
    results.append({**_result("final", "final", 160.0, 1.6, "ladder"), "applied": ["amp", "compile"]})
    assert "final kept configuration (amp + compile)" in final_summary(results)


def test_the_summary_and_the_report_agree_on_a_recorded_run():
    view = load_view(RUNS / "cpu-ladder-20251124")
    position = final_position(view.results, view.run.get("mode", "ladder"))
    assert view.final is view.records[position]
    assert f"({' + '.join(view.results[position]['applied']) or 'baseline'})" in final_summary(view.results)


def test_the_summary_names_the_kind_of_figure_it_shows():
    results = _run("ladder")
    results[2]["metrics"]["speedup_vs_baseline"].update(paired=True, chain=["amp", "compile"])
    assert "chained: amp x compile" in final_summary(results)  # no headline: the last kept stage's figure
    results.append({**_result("final", "final", 160.0, 1.6, "ladder"), "applied": ["amp", "compile"]})
    results[-1]["metrics"]["speedup_vs_baseline"]["paired"] = True
    assert "paired, same time window" in final_summary(results)
    del results[-1], results[2]["metrics"]["speedup_vs_baseline"]["chain"]
    results[2]["metrics"]["speedup_vs_baseline"]["paired"] = False
    assert "unpaired, indicative" in final_summary(results)
