"""The report from fixture runs: files written, numbers matching the CSV, headings, script, latest link."""
from __future__ import annotations

import csv
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.report import build as report
from workbench.report.table import COLUMNS, fmt, impact

FIXTURES = Path(__file__).parents[1] / "fixtures"
LADDER = "cpu-ladder-20251124"
REPO = Path(__file__).resolve().parents[2]


def copy_run(name: str, reports: Path) -> Path:
    """A writable copy of a fixture run under reports/ (the report writes into the run folder)."""
    return Path(shutil.copytree(FIXTURES / "runs" / name, reports / name))


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> tuple[Path, list[Path]]:
    run_dir = copy_run(LADDER, tmp_path_factory.mktemp("reports"))
    return run_dir, report.build_report(run_dir)


@pytest.fixture(scope="module")
def markdown(ladder) -> str:
    return (ladder[0] / "optimization_report.md").read_text()


@pytest.fixture(scope="module")
def csv_rows(ladder) -> list[dict]:
    with open(ladder[0] / "optimization_results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_build_report_writes_every_output(ladder):
    run_dir, written = ladder
    names = {path.name for path in written}
    assert names == {"optimization_results.csv", "optimization_dashboard.png",
                     "optimization_report.md", "optimized_training.py", "memory_breakdown_stages.png"}
    assert all(path.parent == run_dir and path.stat().st_size > 0 for path in written)


def test_csv_has_one_row_per_stage_with_every_column(csv_rows):
    assert [row["stage"] for row in csv_rows] == [
        "baseline", "dataloader", "tf32", "amp", "channels_last", "accumulation", "checkpointing", "compile"]
    assert list(csv_rows[0]) == [name for name, _ in COLUMNS]
    by_stage = {row["stage"]: row for row in csv_rows}
    assert by_stage["compile"]["speedup_vs_baseline"] == "1.54"
    assert by_stage["amp"]["status"] == "rejected" and by_stage["amp"]["throughput_samples_per_s"] == "12.9"
    assert by_stage["checkpointing"]["throughput_samples_per_s"] == ""
    assert by_stage["checkpointing"]["error"].startswith("CheckpointError")
    assert by_stage["baseline"]["data_loading_percent"] == "21.4"
    assert by_stage["accumulation"]["data_loading_percent"] == ""  # no trace summary for it
    assert by_stage["channels_last"]["previous_stage"] == "dataloader"  # amp was rejected


NUMBER = r"(\d+(?:\.\d+)?)"
SPEEDUP = re.compile(NUMBER + r"x\b")
THROUGHPUT = re.compile(NUMBER + r" samples/s")
INTERVAL = re.compile(NUMBER + "–" + NUMBER + " samples/s")


def _csv_tokens(rows: list[dict]) -> set[str]:
    """Every CSV cell, plus the numbers quoted inside text cells (the ladder's own reasons)."""
    text_columns = [name for name, kind in COLUMNS if kind == "text"]
    quoted = {n for row in rows for name in text_columns for n in re.findall(NUMBER, row[name])}
    return {value for row in rows for value in row.values()} | quoted


def test_every_throughput_and_speedup_in_the_markdown_is_in_the_csv(markdown, csv_rows):
    tokens = _csv_tokens(csv_rows)
    found = SPEEDUP.findall(markdown) + THROUGHPUT.findall(markdown)
    found += [n for pair in INTERVAL.findall(markdown) for n in pair]
    assert len(found) > 40
    missing = sorted({n for n in found if n not in tokens} - {"1.30", "1.10"})  # the stated impact rule
    assert missing == []


def test_overview_table_cells_are_csv_values(markdown, csv_rows):
    by_stage = {row["stage"]: row for row in csv_rows}
    table_rows = [line.split("|")[1:-1] for line in markdown.splitlines()
                  if line.startswith("| ") and line.split("|")[1].strip() in by_stage]
    assert len(table_rows) == len(csv_rows)
    for cells in table_rows:
        stage, _, throughput, source, vs_base, *_ = (cell.strip() for cell in cells)
        row = by_stage[stage]
        assert throughput == (row["throughput_samples_per_s"] or "n/a") and source == (row["throughput_from"] or "n/a")
        assert vs_base == (row["speedup_vs_baseline"] + "x" if row["speedup_vs_baseline"] else "n/a")


def test_report_headings_match_the_golden_list(markdown):
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    expected = (FIXTURES / "report_headings.txt").read_text().splitlines()
    assert headings == expected


@pytest.mark.parametrize("placeholder", ["TODO", "TBD", "None", "{", "}", "XXX"])
def test_markdown_has_no_placeholders(markdown, placeholder):
    assert placeholder not in markdown


def test_markdown_has_no_nan(markdown):
    assert not re.search(r"\bnan\b", markdown, re.IGNORECASE)


def test_markdown_states_the_measured_story(markdown):
    assert "141.2 samples/s" in markdown and "217.6 samples/s" in markdown
    assert "1.54x (95% CI 1.48x–1.61x, faster, unpaired)" in markdown
    assert "354.1 s → 229.9 s (95% CI 219.9 s–239.3 s) per epoch at the 1.54x speedup: 124.2 s saved" in markdown
    assert "Leave `amp` off" in markdown and "no native bf16" in markdown
    assert "no trace summary was recorded for this stage" in markdown  # accumulation
    assert "predicted to help by `data_loading`" in markdown


def test_optimized_script_compiles_and_holds_the_kept_settings(ladder, tmp_path):
    script = ladder[0] / "optimized_training.py"
    py_compile.compile(str(script), cfile=str(tmp_path / "script.pyc"), doraise=True)
    text = script.read_text()
    for setting in ('MODEL_NAME = "resnet18"', "IMAGE_SIZE = 32", "BATCH_SIZE = 128", "NUM_WORKERS = 2",
                    "PERSISTENT_WORKERS = True", 'PRECISION = "fp32"', "CHANNELS_LAST = True",
                    'COMPILE_MODE = "default"', "ACCUMULATION_STEPS = 1", "CHECKPOINT_BLOCKS = 0",
                    "LR = 0.0001", 'DEFAULT_DEVICE = "cpu"'):
        assert setting in text
    for needed in ("def _check_integrity", 'encoding="latin1"', "WORKBENCH_SYNTHETIC", "RandomResizedCrop",
                   "torch.amp.GradScaler(device.type", "torch.amp.autocast(", "--max-steps", "--data-dir"):
        assert needed in text
    assert "$" not in text  # every template field was filled


def test_baseline_only_run_reports_without_a_speedup(tmp_path):
    run_dir = copy_run("baseline-only", tmp_path)
    report.build_report(run_dir)
    text = (run_dir / "optimization_report.md").read_text()
    assert "no stage was kept" in text and "Only the baseline has a result" in text
    assert "No findings: no trace summary" in text and "None" not in text
    script = (run_dir / "optimized_training.py").read_text()
    assert "NUM_WORKERS = 0" in script and "COMPILE_MODE = None" in script
    py_compile.compile(str(run_dir / "optimized_training.py"), cfile=str(tmp_path / "b.pyc"), doraise=True)


def _failed_baseline_run(reports: Path) -> Path:
    run_dir = copy_run("baseline-only", reports)
    path = run_dir / "stages" / "00-baseline.json"
    result = json.loads(path.read_text())
    result.update(status="failed", metrics=None, error="out of memory: OutOfMemoryError: CUDA out of memory")
    path.write_text(json.dumps(result))
    return run_dir


def test_failed_baseline_and_empty_run_still_report(tmp_path):
    failed = _failed_baseline_run(tmp_path)
    report.build_report(failed)
    assert "The baseline was not measured (out of memory" in (failed / "optimization_report.md").read_text()
    empty = tmp_path / "empty-run"
    (empty / "stages").mkdir(parents=True)
    (empty / "run.json").write_text(json.dumps({"run": "empty-run", "mode": "ladder"}))
    written = report.build_report(empty)
    assert all(path.exists() for path in written)


def test_latest_points_at_the_newest_report(tmp_path):
    first, second = copy_run(LADDER, tmp_path), copy_run("baseline-only", tmp_path)
    report.point_latest(first)
    report.point_latest(second)
    latest = tmp_path / "latest"
    assert latest.is_symlink() and os.readlink(latest) == "baseline-only"
    assert (latest / "run.json").exists()


def test_reporting_through_the_latest_link_keeps_it_pointing_at_the_run(tmp_path):
    run_dir = copy_run("baseline-only", tmp_path)
    report.point_latest(run_dir)
    report.build_report(tmp_path / "latest")
    assert os.readlink(tmp_path / "latest") == "baseline-only"
    assert (tmp_path / "latest" / "optimization_report.md").exists()


def test_latest_falls_back_to_a_text_file_without_symlinks(tmp_path, monkeypatch):
    run_dir = copy_run("baseline-only", tmp_path)

    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    written = report.point_latest(run_dir)
    assert written == tmp_path / "LATEST" and written.read_text().strip() == "baseline-only"


def test_formatting_is_one_rounding_per_kind():
    assert fmt("rate", 141.249) == "141.2" and fmt("rate", 0.456) == "0.46"
    assert fmt("ratio", 1.5449) == "1.54" and fmt("signed_pct", -25.64) == "-25.6"
    assert fmt("mb", 702.7) == "703" and fmt("rate", None) == "" and fmt("loss", float("nan")) == "nan"


@pytest.mark.parametrize("record, expected", [
    ({"status": "kept", "speedup_vs_previous": 1.30, "verdict_vs_previous": "faster"}, "High"),
    ({"status": "kept", "speedup_vs_previous": 1.34, "verdict_vs_previous": "no significant change"}, "Low"),
    ({"status": "tradeoff", "speedup_vs_previous": 0.95, "verdict_vs_previous": "slower",
      "memory_change_vs_previous_percent": -25.6}, "Medium"),
    ({"status": "rejected", "speedup_vs_previous": 0.08, "verdict_vs_previous": "slower",
      "memory_change_vs_previous_percent": -13.0}, "Low"),
    ({"status": "kept", "speedup_vs_previous": 1.0, "verdict_vs_previous": "no significant change",
      "memory_change_vs_previous_percent": -31.0}, "High"),
    ({"status": "baseline"}, ""), ({"status": "failed"}, ""),
])
def test_impact_rule(record, expected):
    assert impact(record) == expected


def test_report_modules_and_a_build_never_import_torch(tmp_path):
    run_dir = copy_run(LADDER, tmp_path)
    code = ("import sys; from workbench.report import build, compare, plots; "
            f"build.build_report({str(run_dir)!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_an_undecided_stage_is_shown_as_such_everywhere(tmp_path):
    """Undecided is not rejected: its own status in the CSV, the outcome line, the advice and the dashboard."""
    from workbench.report.summary import outcome
    from workbench.results import load_stage_results

    run_dir = copy_run(LADDER, tmp_path)
    stage_file = next((run_dir / "stages").glob("*channels_last.json"))
    doc = json.loads(stage_file.read_text())
    doc["status"] = "undecided"
    doc["metrics"]["speedup_vs_previous"].update(verdict="inconclusive", would_take={"rounds": 9, "text": "about 5 more rounds (9 in all) at this spread"})
    doc["reason"] = "1.04x [0.90, 1.20] vs amp: undecided, about 5 more rounds (9 in all) at this spread"
    stage_file.write_text(json.dumps(doc))
    report.build_report(run_dir)
    with open(run_dir / "optimization_results.csv", newline="") as handle:
        rows = {row["stage"]: row for row in csv.DictReader(handle)}
    assert rows["channels_last"]["status"] == "undecided"
    text = (run_dir / "optimization_report.md").read_text()
    assert "1 undecided" in text and "Undecided: `channels_last`" in text
    assert "1 undecided" in outcome(load_stage_results(run_dir))


def test_input_against_compute_is_said_only_where_the_intervals_decide_it():
    from workbench.report.verdicts import bound_verdict

    rate = lambda median, low, high: {"median": median, "ci95_low": low, "ci95_high": high}
    assert bound_verdict(rate(50, 45, 55), rate(100, 95, 105))[1] == "input-bound"
    assert bound_verdict(rate(98, 95, 101), rate(100, 99, 101))[1] == "compute-bound"
    share, verdict = bound_verdict(rate(107, 80, 130), rate(100, 90, 110))
    assert share == "100% (within noise)" and verdict.startswith("not decided")  # never a share over 100%


def test_each_row_says_which_comparison_its_throughput_comes_from(csv_rows):
    by_stage = {row["stage"]: row for row in csv_rows}
    assert by_stage["baseline"]["throughput_from"].startswith("the A/A")
    assert by_stage["channels_last"]["throughput_from"].startswith("its comparison with ")


def test_a_kept_stage_with_the_final_configuration_shows_the_headline_against_the_baseline():
    from workbench.report.table import HEADLINE_SOURCE, build_records

    def doc(stage, status, config, vs_baseline, vs_previous=None):
        metrics = {"throughput": {"median": 100.0}, "speedup_vs_baseline": vs_baseline,
                   "speedup_vs_previous": vs_previous or vs_baseline}
        return {"stage": stage, "status": status, "config": config, "applied": [], "metrics": metrics}

    own = {"ratio": 1.26, "ci95_low": 1.07, "ci95_high": 1.48, "verdict": "faster", "paired": True}
    headline = {"ratio": 1.27, "ci95_low": 1.22, "ci95_high": 1.31, "verdict": "faster", "paired": True}
    results = [doc("baseline", "baseline", {"fused": False}, {"ratio": 1.0, "ci95_low": 1.0, "ci95_high": 1.0}),
               doc("fused_optimizer", "kept", {"fused": True}, own),
               doc("amp", "rejected", {"fused": True, "amp": True}, own),
               doc("final", "final", {"fused": True}, headline)]
    records = build_records(results, [None] * 4)
    fused = records[1]
    assert (fused["speedup_vs_baseline"], fused["speedup_vs_baseline_ci95_low"]) == (1.27, 1.22)
    assert fused["speedup_vs_baseline_from"] == HEADLINE_SOURCE
    assert fused["speedup_vs_previous"] == 1.26  # the comparison that kept it stays its own
    assert records[2]["speedup_vs_baseline"] == 1.26  # another configuration: untouched


def test_a_stage_adopted_on_its_second_look_is_matched_by_the_configuration_it_joined():
    from workbench.report.table import HEADLINE_SOURCE, build_records

    def doc(stage, status, config, ratio, **extra):
        figure = {"ratio": ratio, "ci95_low": ratio - 0.05, "ci95_high": ratio + 0.05, "verdict": "faster", "paired": True}
        return {"stage": stage, "status": status, "config": config, "applied": [], **extra,
                "metrics": {"throughput": {"median": 100.0}, "speedup_vs_baseline": figure, "speedup_vs_previous": figure}}

    results = [doc("baseline", "baseline", {"amp": False, "fused": False}, 1.0),
               # measured first without fused Adam, adopted later on top of it
               doc("amp", "kept", {"amp": True, "fused": False}, 1.4, adopted_config={"amp": True, "fused": True},
                   first_pass={"status": "rejected", "metrics": {"speedup_vs_previous": {"against": "baseline"}}}),
               doc("fused_optimizer", "kept", {"amp": False, "fused": True}, 1.2),
               doc("final", "final", {"amp": True, "fused": True}, 1.5)]
    records = build_records(results, [None] * 4)
    assert records[1]["speedup_vs_baseline"] == 1.5 and records[1]["speedup_vs_baseline_from"] == HEADLINE_SOURCE
    assert records[2]["speedup_vs_baseline"] == 1.2  # its own configuration is not the final one
    # its throughput is still its first pass's, and the row says so
    assert records[1]["throughput_from"] == "its first pass (its comparison with baseline); adopted later on its second look"


def test_the_optimized_script_keeps_freed_host_memory_when_the_run_did(tmp_path):
    run_dir = copy_run("baseline-only", tmp_path)
    for path in [run_dir / "run.json", *sorted((run_dir / "stages").glob("*.json"))]:
        doc = json.loads(path.read_text())
        if isinstance(doc.get("config"), dict):
            doc["config"]["host_allocator"] = "retain"
            path.write_text(json.dumps(doc))
    report.build_report(run_dir)
    script = run_dir / "optimized_training.py"
    assert "RETAIN_HOST_MEMORY = True" in script.read_text()
    py_compile.compile(str(script), cfile=str(tmp_path / "c.pyc"), doraise=True)


def test_a_stage_leave_one_out_dropped_is_shown_dropped_everywhere(tmp_path):
    run_dir = copy_run(LADDER, tmp_path)
    path = run_dir / "stages" / "04-channels_last.json"
    doc = json.loads(path.read_text())
    doc.update(status="dropped", reason=doc["reason"] + "; leave-one-out on the final configuration: 1.00x "
               "[0.98, 1.03] vs the configuration without it: no significant change, so it is not in the final configuration")
    path.write_text(json.dumps(doc))
    report.build_report(run_dir)
    text = (run_dir / "optimization_report.md").read_text()
    assert "Leave `channels_last` out of the final mix" in text
    rows = {row["stage"]: row for row in csv.DictReader((run_dir / "optimization_results.csv").open())}
    assert rows["channels_last"]["status"] == "dropped"
    # the stage after it was still built on it in the pass
    assert rows["compile"]["previous_stage"] == "channels_last"
