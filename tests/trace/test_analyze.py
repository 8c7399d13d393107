"""analyze.py on hand-written fixture traces (exact numbers) and on one real CPU trace."""
from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.trace import analyze
from workbench.trace.regions import REGIONS

FIXTURES = Path(__file__).parents[1] / "fixtures" / "traces"
CPU_DIR, GPU_DIR, STARVED_DIR = FIXTURES / "cpu_only", FIXTURES / "gpu", FIXTURES / "data_starved"


def _trace(folder: Path) -> dict:
    return analyze.load_trace(analyze.find_trace_file(folder))


def test_region_names_are_the_loop_annotations():
    assert REGIONS == ("data_loading", "host_to_device", "forward", "backward", "optimizer_step")


def test_analyze_and_diagnose_do_not_import_torch():
    code = "import sys, workbench.trace.analyze, workbench.trace.diagnose; sys.exit('torch' in sys.modules)"
    root = Path(__file__).parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_find_trace_file_picks_the_newest(tmp_path):
    old, new = tmp_path / "w.1.pt.trace.json", tmp_path / "w.2.pt.trace.json.gz"
    old.write_text("{}")
    new.write_bytes(b"")
    os.utime(old, (2_000_000, 2_000_000))
    os.utime(new, (1_000_000, 1_000_000))
    assert analyze.find_trace_file(tmp_path) == old
    assert analyze.find_trace_file(new) == new


def test_find_trace_file_without_trace_says_so(tmp_path):
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="pt.trace.json"):
        analyze.find_trace_file(tmp_path)


def test_gzipped_trace_reads_like_plain(tmp_path):
    plain = analyze.find_trace_file(CPU_DIR)
    (tmp_path / "host_100.1000.pt.trace.json.gz").write_bytes(gzip.compress(plain.read_bytes()))
    assert analyze.load_trace(tmp_path / "host_100.1000.pt.trace.json.gz") == analyze.load_trace(plain)


def test_trace_without_profiler_steps_is_one_window():
    trace = {"traceEvents": [{"ph": "X", "cat": "user_annotation", "name": "forward", "pid": 1, "tid": 1,
                              "ts": 0, "dur": 5}, {"ph": "X", "cat": "cpu_op", "name": "aten::add", "pid": 1,
                                                   "tid": 1, "ts": 5, "dur": 5}]}
    assert analyze.step_breakdown(trace) == [pytest.approx(
        {"step": 0, "step_ms": 0.01, "data_loading_ms": 0, "host_to_device_ms": 0, "forward_ms": 0.005,
         "backward_ms": 0, "optimizer_step_ms": 0, "other_ms": 0.005})]


def test_trace_without_host_events_is_rejected():
    trace = {"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 0, "dur": 5}]}
    with pytest.raises(analyze.TraceFormatError, match="not a torch.profiler trace"):
        analyze.step_breakdown(trace)


def test_cpu_breakdown_clips_to_step_and_ignores_nested_and_foreign_regions():
    rows = analyze.step_breakdown(_trace(CPU_DIR))
    # Step 2 has a "forward" nested in "forward" (counted once) and a "forward" on another thread
    # (ignored); step 3's optimizer_step runs 300 us past the step end (clipped).
    assert rows == [
        pytest.approx({"step": 2, "step_ms": 10.0, "data_loading_ms": 1.0, "host_to_device_ms": 0.2,
                       "forward_ms": 3.0, "backward_ms": 4.0, "optimizer_step_ms": 1.0, "other_ms": 0.8}),
        pytest.approx({"step": 3, "step_ms": 8.0, "data_loading_ms": 0.5, "host_to_device_ms": 0.1,
                       "forward_ms": 2.0, "backward_ms": 4.0, "optimizer_step_ms": 1.2, "other_ms": 0.2}),
    ]


def test_legacy_cpu_op_steps_and_a_fetch_across_the_step_boundary():
    rows = analyze.step_breakdown(_trace(STARVED_DIR))
    assert [row["step"] for row in rows] == [5, 6]
    # The fetch from 19.9 ms to 33.9 ms is split at the step boundary: 0.1 ms and 13.9 ms.
    assert [row["data_loading_ms"] for row in rows] == pytest.approx([12.1, 13.9])
    assert [row["other_ms"] for row in rows] == pytest.approx([0.1, 0.1])


def test_cpu_summary_exact():
    summary = analyze.summarize(CPU_DIR)
    assert summary["steps"] == 2 and summary["rank"] == 0
    assert summary["step_time_ms"] == pytest.approx(9.0)
    assert summary["breakdown_ms"] == pytest.approx(
        {"data_loading": 0.75, "host_to_device": 0.15, "forward": 2.5, "backward": 4.0,
         "optimizer_step": 1.1, "other": 0.5})
    assert summary["breakdown_share"]["data_loading"] == pytest.approx(0.75 / 9)
    assert sum(summary["breakdown_share"].values()) == pytest.approx(1.0)
    assert summary["device"] is None
    assert summary["peak_memory_mb"] == {"cpu": 5.0, "cuda": None}


def test_cpu_top_ops_by_self_time():
    ops = analyze.top_ops(_trace(CPU_DIR), n=3)
    # Self time excludes direct children (aten::mm inside the AddmmBackward0 evaluate_function).
    total_self_us = 6000 + 3500 + 1700 + 1300 + 800 + 300 + 250 + 140 + 100 + 50
    assert [(op["name"], op["calls"]) for op in ops] == [("aten::mm", 2), ("aten::addmm", 2), ("aten::add_", 2)]
    assert [op["self_ms"] for op in ops] == pytest.approx([6.0, 3.5, 1.7])
    assert ops[0]["share"] == pytest.approx(6000 / total_self_us)
    assert {op["device"] for op in ops} == {"cpu"}


def test_top_ops_leaves_out_legacy_step_markers():
    names = [op["name"] for op in analyze.top_ops(_trace(STARVED_DIR))]
    assert names == ["aten::stack", "aten::addmm"]


def test_gpu_device_activity_exact():
    device = analyze.device_activity(_trace(GPU_DIR))
    # Window: first step start to the last kernel's end (10.08 ms; the GPU ends after the CPU).
    # Busy: 1.926 ms per step; a 50 us kernel on stream 20 overlaps a stream-7 kernel.
    assert device["window_ms"] == pytest.approx(10.08)
    assert device["busy_ms"] == pytest.approx(3.852)
    assert device["busy_share"] == pytest.approx(3.852 / 10.08)
    assert device["idle_share"] == pytest.approx(1 - 3.852 / 10.08)
    assert device["kernel_ms_by_kind"] == pytest.approx(
        {"conv_matmul": 1.6, "elementwise": 0.82, "reduction": 0.072, "copy": 1.42, "communication": 0.0,
         "other": 0.04})
    assert device["fp32_tensorcore_eligible_ms"] == pytest.approx(1.5)  # tf32 xmma, not the bf16 gemm
    assert device["layout_transpose_ms"] == pytest.approx(0.14)


def test_gpu_launches_and_copies():
    device = analyze.device_activity(_trace(GPU_DIR))
    # 11 launches per step across two threads; cuLaunchKernelEx inside cudaLaunchKernelExC is one.
    assert device["launches_per_step"] == 11.0
    assert device["kernel_count"] == 22 and device["kernels_per_step"] == 11.0
    assert device["median_kernel_us"] == 50.0
    assert device["h2d_copy_ms"] == pytest.approx(1.4)
    assert device["h2d_pageable_ms"] == pytest.approx(1.4)
    assert device["h2d_from_pageable"] is True


def test_gpu_summary_ignores_gpu_side_annotation_mirrors():
    summary = analyze.summarize(GPU_DIR)
    assert summary["rank"] == 2
    # Step 11 lasts until the last kernel it launched ends (110.08 ms, 80 us after the host step), as
    # torch-tb-profiler counts it: a mean step of 5.04 ms, the 40 us extra in "other".
    step = 5.04
    assert summary["step_time_ms"] == pytest.approx(step)
    assert summary["breakdown_share"] == pytest.approx(
        {"data_loading": 0.5 / step, "host_to_device": 1.0 / step, "forward": 1.0 / step, "backward": 1.5 / step,
         "optimizer_step": 0.8 / step, "other": 0.24 / step})
    assert summary["peak_memory_mb"] == {"cpu": 2.0, "cuda": 500.0}


def test_gpu_top_kernels_by_device_time():
    kernels = [op for op in analyze.top_ops(_trace(GPU_DIR), n=2) if op["device"] == "gpu"]
    assert len(kernels) == 2 and kernels[0]["name"].startswith("sm90_xmma_dgrad")
    assert kernels[0]["calls"] == 2
    assert kernels[0]["self_ms"] == pytest.approx(0.6)
    assert kernels[0]["share"] == pytest.approx(600 / 2532)
    assert "multi_tensor_apply_kernel" in kernels[1]["name"]


def test_peak_memory_by_device_type():
    trace = _trace(GPU_DIR)
    assert analyze.peak_memory_mb(trace) == 500.0
    assert analyze.peak_memory_mb(trace, "cpu") == 2.0
    assert analyze.peak_memory_mb(_trace(STARVED_DIR)) is None


@pytest.mark.parametrize("name, kind", [
    ("ampere_sgemm_128x64_nn", "conv_matmul"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "conv_matmul"),
    ("triton_tem_fused_addmm_0", "conv_matmul"),
    ("triton_poi_fused_add_relu_sum_1", "elementwise"),
    ("triton_red_fused_native_layer_norm_2", "reduction"),
    ("void at::native::(anonymous namespace)::softmax_warp_forward<float, float, float, 10, true>", "reduction"),
    ("void at::native::batch_norm_collect_statistics_kernel<float>", "reduction"),
    ("Memcpy DtoD (Device -> Device)", "copy"),
    ("void at::native::index_elementwise_kernel<128, 4>", "elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::convert_fn>", "elementwise"),
    ("void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d", "reduction"),
    ("void at::native::(anonymous namespace)::max_pool_forward_nchw<float, float>", "other"),
])
def test_kernel_kind_heuristic(name, kind):
    assert analyze._kernel_kind({"cat": "kernel", "name": name}) == kind


@pytest.mark.parametrize("name, kind", [
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication"),
    ("ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)", "communication"),
])
def test_nccl_kernels_are_communication_not_reductions(name, kind):
    assert analyze._kernel_kind({"cat": "kernel", "name": name}) == kind


@pytest.mark.parametrize("name, half", [
    ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNT", True),    # Hopper cuBLAS, fp16 inputs
    ("nvjet_bsb_64x128_64x5_1x1_h_bz_NTN", True),           # bf16 inputs
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", False),   # TF32: counted as fp32 on purpose
    ("nvjet_sss_64x64_64x6_1x1_v_bz_NNN", False),            # plain fp32
])
def test_hopper_nvjet_half_precision_names(name, half):
    event = {"cat": "kernel", "name": name}
    assert analyze._kernel_kind(event) == "conv_matmul"
    assert (not analyze.HALF_PRECISION_MARK.search(name.lower())) == (not half)


def test_write_analysis_writes_csv_and_json(tmp_path):
    csv_path, json_path = tmp_path / "out" / "b.csv", tmp_path / "out" / "s.json"
    summary = analyze.write_analysis(CPU_DIR, csv_path, json_path)
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == analyze.BREAKDOWN_COLUMNS == (
        "step", "step_ms", "data_loading_ms", "host_to_device_ms", "forward_ms", "backward_ms",
        "optimizer_step_ms", "other_ms")
    assert [float(row["step_ms"]) for row in rows] == [10.0, 8.0]
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(summary))
    assert summary["trace_file"].endswith("host_100.1000.pt.trace.json")


# ---- one real trace from torch.profiler on CPU ---------------------------------------------------

def _record_real_trace(trace_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile, record_function, schedule, tensorboard_trace_handler

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(128, 16), torch.randint(0, 4, (128,)))
    batches = iter(torch.utils.data.DataLoader(data, batch_size=16))
    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=2),
                 profile_memory=True, record_shapes=True,
                 on_trace_ready=tensorboard_trace_handler(str(trace_dir), use_gzip=True)) as prof:
        for _ in range(4):
            with record_function("data_loading"):
                inputs, targets = next(batches)
            with record_function("host_to_device"):
                inputs, targets = inputs.to("cpu"), targets.to("cpu")
            with record_function("forward"):
                loss = torch.nn.functional.cross_entropy(model(inputs), targets)
            with record_function("backward"):
                loss.backward()
            with record_function("optimizer_step"):
                optimizer.step()
                optimizer.zero_grad()
            prof.step()


@pytest.fixture(scope="module")
def real_trace_dir(tmp_path_factory) -> Path:
    trace_dir = tmp_path_factory.mktemp("real_trace")
    _record_real_trace(trace_dir)
    return trace_dir


def test_real_trace_summary_adds_up(real_trace_dir):
    summary = analyze.summarize(real_trace_dir)
    assert summary["trace_file"].endswith(".pt.trace.json.gz")
    assert summary["steps"] == 2
    assert sum(summary["breakdown_share"].values()) == pytest.approx(1.0, abs=1e-6)
    assert summary["device"] is None and summary["peak_memory_mb"]["cpu"] > 0
    assert any(op["name"] == "aten::addmm" for op in summary["top_ops"])


def test_real_trace_steps_match_profiler_steps(real_trace_dir):
    trace = _trace(real_trace_dir)
    steps = [e for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")]
    assert {e["cat"] for e in steps} <= analyze.HOST_CATEGORIES
    rows = analyze.step_breakdown(trace)
    assert sum(row["step_ms"] for row in rows) == pytest.approx(sum(e["dur"] for e in steps) / 1000)
    for row in rows:
        parts = sum(row[f"{region}_ms"] for region in REGIONS) + row["other_ms"]
        assert parts == pytest.approx(row["step_ms"], abs=1e-9)
        # prof.step() opens the next step before the loop fetches, so every step holds its fetch.
        assert row["data_loading_ms"] > 0 and row["backward_ms"] > 0


def test_real_trace_write_analysis(real_trace_dir, tmp_path):
    summary = analyze.write_analysis(real_trace_dir, tmp_path / "b.csv", tmp_path / "s.json")
    assert (tmp_path / "b.csv").read_text().splitlines()[0] == ",".join(analyze.BREAKDOWN_COLUMNS)
    assert len((tmp_path / "b.csv").read_text().splitlines()) == 1 + summary["steps"]
