"""Any trace: old capitalized categories, PyTorch's own markers, the analyze command, torch-tb-profiler's figure."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import cli
from workbench.trace import analyze, explain

FIXTURES = Path(__file__).parents[1] / "fixtures" / "traces"
OLD_GPU = FIXTURES / "old_gpu" / "host_1.1000.pt.trace.json"
ROOT = Path(__file__).parents[2]


def tb_dataloader_share(path: Path, cache: Path) -> float:
    """torch-tb-profiler 0.4.3's own DataLoader share of the step, on the same file."""
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.event_parser import ProfileRole

    costs = RunProfileData.parse("worker", "1", str(path), str(cache)).avg_costs.costs
    return costs[ProfileRole.DataLoader] / costs[ProfileRole.Total]


def test_old_capitalized_gpu_trace_from_pytorch_markers():
    summary = analyze.summarize(OLD_GPU)
    # Known answer per 10 ms step (see make_old_gpu.py): every part from a different marker.
    assert summary["breakdown_share"] == pytest.approx(
        {"data_loading": 0.20, "host_to_device": 0.05, "forward": 0.22, "backward": 0.25,
         "optimizer_step": 0.12, "other": 0.16})
    markers = summary["markers"]
    assert markers["steps"] == "ProfilerStep#N"
    assert markers["data_loading"].startswith("enumerate(DataLoader)") and "GPU is idle" in markers["data_loading"]
    assert "autograd engine" in markers["backward"] and "inferred" in markers["forward"]


def test_old_capitalized_gpu_timeline():
    device = analyze.summarize(OLD_GPU)["device"]
    assert device["kernels_per_step"] == 2 and device["launches_per_step"] == 2.0  # a memset call is not a kernel launch
    assert device["h2d_copy_ms"] == pytest.approx(0.8) and device["h2d_from_pageable"] is True
    assert device["kernel_ms_by_kind"]["copy"] == pytest.approx(0.9)  # 2 x (400 us memcpy + 50 us memset)
    assert device["fp32_tensorcore_eligible_ms"] == pytest.approx(4.8)  # fp32 sgemm on a V100


def test_old_trace_findings_include_amp_on_tensor_cores():
    rules = {f["rule"] for f in explain.analyze_file(OLD_GPU)["findings"]}
    assert {"fp32_tensor_core_eligible", "data_loading", "device_idle"} <= rules


def test_data_loading_agrees_with_tb_profiler_on_an_old_trace(tmp_path):
    ours = analyze.summarize(OLD_GPU)["breakdown_share"]["data_loading"]
    assert abs(ours - tb_dataloader_share(OLD_GPU, tmp_path)) < 0.03


def test_lightning_and_pytorch_names_map_to_regions():
    from workbench.trace.markers import named_region

    assert named_region("[pl][profile][_TrainingEpochLoop].train_dataloader_next")[0] == "data_loading"
    assert named_region("[pl][profile][Strategy]SingleDeviceStrategy.training_step")[0] == "forward"
    assert named_region("[pl][profile][Strategy]SingleDeviceStrategy.backward")[0] == "backward"
    assert named_region("[LightningModule]Net.optimizer_step")[0] == "optimizer_step"
    assert named_region("[pl][profile][Callback]X.on_before_backward") is None
    assert named_region("Optimizer.zero_grad#AdamW.zero_grad")[0] == "optimizer_step"


def test_analyze_command_json_is_the_summary_plus_findings(capsys):
    assert cli.main(["analyze", str(OLD_GPU), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["breakdown_share"]) == {"data_loading", "host_to_device", "forward", "backward",
                                           "optimizer_step", "other"}
    assert {"rule", "severity", "evidence", "action"} <= set(doc["findings"][0])
    assert doc["markers"]["steps"] == "ProfilerStep#N"


def test_analyze_command_folder_of_ranks(tmp_path, capsys):
    for rank, folder in enumerate(("gpu", "cpu_only")):
        source = next((FIXTURES / folder).glob("*.json"))
        (tmp_path / f"r{rank}.pt.trace.json").write_text(source.read_text())
    assert cli.main(["analyze", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "(rank 0)" in text and "(rank 2)" in text and "findings:" in text


@pytest.mark.parametrize("content", [b"not json", b'{"traceEvents": "nope"}', b"\x1f\x8b\x08broken"])
def test_analyze_command_bad_file_is_one_line_and_exit_2(tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    done = subprocess.run([sys.executable, "-m", "workbench", "analyze", str(bad)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("workbench: error: ")
    assert str(bad) in done.stderr and "allowed" in done.stderr


def test_analyze_command_does_not_import_torch():
    code = (f"import sys; from workbench import cli; cli.main(['analyze', {str(OLD_GPU)!r}]); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True).returncode == 0


def test_a_gpu_tail_over_the_next_fetch_is_counted_like_tb_profiler(tmp_path):
    """Step 1's memset runs until 12 ms, into step 2's fetch (11.1-13.1 ms): step 1 lasts until the
    GPU is done and step 2 starts there; the 0.9 ms of fetch behind the GPU's work is not waiting for
    data (it goes to other), so only 1.1 ms of that fetch counts, in step 2."""
    trace = json.loads(OLD_GPU.read_text())
    memset = next(e for e in trace["traceEvents"] if e["name"] == "Memset (Device)")
    memset["dur"] = 12000 - memset["ts"]
    path = tmp_path / "tail.pt.trace.json"
    path.write_text(json.dumps(trace))
    rows = analyze.step_breakdown(trace)
    assert [(row["step_ms"], row["data_loading_ms"]) for row in rows] == [(11.0, 2.0), (9.0, 1.1)]
    share = analyze.summarize(path)["breakdown_share"]["data_loading"]
    assert share == pytest.approx(3.1 / 20)
    assert abs(share - tb_dataloader_share(path, tmp_path)) < 0.03
