"""results.py owns the layout: stage files keyed by name, runs in the old numbered layout read too,
and one atomic write for every output."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from workbench import results
from workbench.run import comparing

RUNS = Path(__file__).parent / "fixtures" / "runs"


def _result(stage: str, index: int, status: str = "kept") -> dict:
    return {"schema": results.SCHEMA_VERSION, "stage": stage, "index": index, "status": status, "metrics": None,
            "reason": status}


def test_stage_files_are_keyed_by_name():
    run = Path("reports/r")
    assert results.stage_result_path(run, "amp") == run / "stages" / "amp.json"
    assert results.breakdown_path(run, "amp") == run / "stages" / "amp.breakdown.csv"
    assert results.trace_summary_path(run, "amp") == run / "stages" / "amp.trace_summary.json"
    assert results.stage_trace_dir(Path("profiles/r"), "final") == Path("profiles/r/final")
    assert results.experiment_path(run, "workers") == run / "experiments" / "workers.json"


def test_the_old_numbered_layout_is_read_in_order():
    loaded = results.load_stage_results(RUNS / "cpu-ladder-20251124")
    assert [r["stage"] for r in loaded][:3] == ["baseline", "dataloader", "tf32"]
    assert [r["index"] for r in loaded] == sorted(r["index"] for r in loaded)


def test_both_layouts_in_one_run_read_in_the_order_taken(tmp_path):
    stages = tmp_path / "stages"
    results.write_json_atomic(stages / "00-baseline.json", _result("baseline", 0, "baseline"))
    results.write_json_atomic(stages / "99-final.json", _result("final", 99, "final"))   # the old headline
    results.write_json_atomic(stages / "02-amp.json", _result("amp", 2, "rejected"))
    results.write_json_atomic(stages / "amp.json", _result("amp", 1))                     # measured again, by name
    results.write_json_atomic(stages / "compile.json", _result("compile", 3))
    results.write_json_atomic(stages / "compile.trace_summary.json", {"steps": 3})
    loaded = results.load_stage_results(tmp_path)
    assert [(r["stage"], r["status"]) for r in loaded] == [
        ("baseline", "baseline"), ("amp", "kept"), ("compile", "kept"), ("final", "final")]
    assert results.stage_files(tmp_path, "amp") == [stages / "amp.json", stages / "02-amp.json"]
    assert results.stage_files(tmp_path, "compile", results.TRACE_SUMMARY_SUFFIX) == [stages / "compile.trace_summary.json"]


def test_saving_a_stage_replaces_its_old_numbered_file(tmp_path):
    old = tmp_path / "stages" / "03-amp.json"
    results.write_json_atomic(old, _result("amp", 3))
    comparing.save(SimpleNamespace(run_dir=tmp_path, log=lambda message: None), _result("amp", 5))
    assert not old.exists()
    assert json.loads(results.stage_result_path(tmp_path, "amp").read_text())["index"] == 5


def test_a_report_of_an_old_run_still_finds_its_trace_summaries(tmp_path):
    from workbench.report.table import load_view

    run = shutil.copytree(RUNS / "cpu-ladder-20251124", tmp_path / "old")
    view = load_view(run)
    assert view.summary("baseline") is not None and view.summary("tf32") is None


@pytest.mark.parametrize("binary", [False, True])
def test_one_atomic_write_leaves_the_old_file_when_it_fails(tmp_path, binary):
    path = tmp_path / "out.txt"
    results.write_text_atomic(path, "old\n")

    def half_then_fail(handle):
        handle.write(b"half" if binary else "half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        results.write_atomic(path, half_then_fail, binary=binary)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
