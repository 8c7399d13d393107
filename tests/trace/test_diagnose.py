"""diagnose.py: which rules fire, with which numbers, on fixtures and on made-up summaries."""
from __future__ import annotations

from pathlib import Path

import pytest

from workbench.trace import analyze, diagnose

FIXTURES = Path(__file__).parents[1] / "fixtures" / "traces"
FINDING_KEYS = {"rule", "severity", "evidence", "value", "threshold", "action"}
GPU_CONTEXT = {"device_type": "cuda", "pin_memory": False, "num_workers": 4, "precision": "fp32",
               "tensor_cores": True, "device_capacity_mb": 81559.0, "compile": "none"}


def _summary(share: dict | None = None, device: dict | None = None, step_time_ms: float = 10.0) -> dict:
    """A summary with the given shares; the rest of the step goes to forward."""
    share = dict(share or {})
    share.setdefault("forward", 1.0 - sum(share.values()))
    return {"step_time_ms": step_time_ms, "breakdown_share": share, "device": device,
            "peak_memory_mb": {"cpu": None, "cuda": None}}


def _device(**overrides) -> dict:
    device = {"steps": 2, "idle_share": 0.1, "busy_share": 0.9, "launches_per_step": 100.0,
              "median_kernel_us": 50.0, "kernel_ms_by_kind": {"conv_matmul": 8.0, "elementwise": 2.0},
              "fp32_tensorcore_eligible_ms": 0.0, "layout_transpose_ms": 0.0,
              "h2d_copy_ms": 0.0, "h2d_from_pageable": None}
    return device | overrides


def _rules(findings: list[dict]) -> list[str]:
    return [finding["rule"] for finding in findings]


def test_gpu_fixture_findings_exact():
    findings = diagnose.diagnose(analyze.summarize(FIXTURES / "gpu"), GPU_CONTEXT)
    assert _rules(findings) == ["device_idle", "fp32_tensor_core_eligible", "data_loading",
                                "pageable_h2d", "layout_conversions", "optimizer_step"]
    assert [f["severity"] for f in findings] == ["high", "high", "medium", "medium", "medium", "low"]
    by_rule = {f["rule"]: f for f in findings}
    assert by_rule["device_idle"]["value"] == pytest.approx(1 - 3.852 / 10.08)
    assert by_rule["fp32_tensor_core_eligible"]["value"] == pytest.approx(1.5 / 3.952)
    assert by_rule["pageable_h2d"]["value"] == pytest.approx(1.0 / 5.04)  # steps last until their GPU work ends
    assert by_rule["layout_conversions"]["value"] == pytest.approx(0.14 / 3.952)
    assert "61.8%" in by_rule["device_idle"]["evidence"]
    assert all(set(f) == FINDING_KEYS for f in findings)
    assert diagnose.predicts(findings) == {"dataloader", "batched_input", "compile", "amp", "channels_last", "fused_optimizer"}


def test_cpu_fixture_with_emulated_bf16():
    context = {"device_type": "cpu", "precision": "bf16", "cpu_native_bf16": False}
    findings = diagnose.diagnose(analyze.summarize(FIXTURES / "cpu_only"), context)
    assert _rules(findings) == ["cpu_bf16_not_native", "data_loading"]
    assert findings[1]["value"] == pytest.approx(0.75 / 9) and "8.3%" in findings[1]["evidence"]
    assert diagnose.rules_out(findings) == {"amp"}
    assert diagnose.predicts(findings) == {"dataloader", "batched_input"}


def test_data_starved_fixture():
    findings = diagnose.diagnose(analyze.summarize(FIXTURES / "data_starved"), {"num_workers": 0})
    assert _rules(findings) == ["data_loading"]
    assert findings[0]["severity"] == "high" and findings[0]["value"] == pytest.approx(0.65)
    assert findings[0]["threshold"] == diagnose.DATA_LOADING_SHARE_MAX
    assert "65.0%" in findings[0]["evidence"] and "num_workers=0" in findings[0]["evidence"]


@pytest.mark.parametrize("share, fires", [(0.05, False), (0.051, True)])
def test_data_loading_threshold(share, fires):
    assert (diagnose.rule_data_loading(_summary({"data_loading": share}), {}) is not None) == fires


def test_pageable_h2d_needs_cuda_and_a_notable_share():
    summary = _summary({"host_to_device": 0.10})
    assert diagnose.rule_pageable_h2d(summary, {"device_type": "cuda", "pin_memory": False})["value"] == 0.10
    assert diagnose.rule_pageable_h2d(summary, {"device_type": "cpu", "pin_memory": False}) is None
    assert diagnose.rule_pageable_h2d(summary, {"device_type": "cuda", "pin_memory": True}) is None
    small = _summary({"host_to_device": 0.02})
    assert diagnose.rule_pageable_h2d(small, {"device_type": "cuda", "pin_memory": False}) is None


def test_pageable_h2d_from_device_copy_time():
    # 1.2 ms of pageable HtoD over 2 steps of 10 ms: 6% of the step, though the host region is short.
    summary = _summary({"host_to_device": 0.01}, _device(h2d_copy_ms=1.2, h2d_from_pageable=True))
    finding = diagnose.rule_pageable_h2d(summary, {})
    assert finding["value"] == pytest.approx(0.06)


def test_device_idle_and_its_severity():
    assert diagnose.rule_device_idle(_summary(device=_device(idle_share=0.25)), {}) is None
    assert diagnose.rule_device_idle(_summary(device=_device(idle_share=0.3)), {})["severity"] == "medium"
    assert diagnose.rule_device_idle(_summary(device=_device(idle_share=0.6)), {})["severity"] == "high"
    assert diagnose.rule_device_idle(_summary(), {}) is None  # CPU-only trace


def test_launch_bound_needs_many_launches_of_short_kernels():
    many_short = _device(launches_per_step=600.0, median_kernel_us=4.0)
    finding = diagnose.rule_launch_bound(_summary(device=many_short), {"compile": "none"})
    assert finding["value"] == 600.0 and "4.0 us" in finding["evidence"]
    assert "torch.compile" in finding["action"]
    compiled = diagnose.rule_launch_bound(_summary(device=many_short), {"compile": "default"})
    assert "reduce-overhead" in compiled["action"]
    assert diagnose.rule_launch_bound(_summary(device=_device(launches_per_step=600.0)), {}) is None
    assert diagnose.rule_launch_bound(_summary(device=_device(median_kernel_us=4.0)), {}) is None


def test_fp32_rule_needs_tensor_cores_and_fp32():
    device = _device(fp32_tensorcore_eligible_ms=5.0)  # 5 of 10 ms of kernel time
    summary = _summary(device=device)
    assert diagnose.rule_fp32_tensor_cores(summary, {"tensor_cores": True})["value"] == 0.5
    assert diagnose.rule_fp32_tensor_cores(summary, {"tensor_cores": False}) is None
    assert diagnose.rule_fp32_tensor_cores(summary, {"tensor_cores": True, "precision": "bf16"}) is None


def test_memory_pressure_prefers_the_measured_peak():
    summary = _summary() | {"peak_memory_mb": {"cpu": None, "cuda": 9000.0}}
    context = {"device_type": "cuda", "device_capacity_mb": 10000.0}
    assert diagnose.rule_memory_pressure(summary, context)["value"] == pytest.approx(0.9)
    assert diagnose.rule_memory_pressure(summary, context | {"peak_memory_mb": 8500.0}) is None
    assert diagnose.rule_memory_pressure(summary, {"device_type": "cuda"}) is None  # capacity unknown
    finding = diagnose.rule_memory_pressure(summary, context)
    assert diagnose.predicts([finding]) == {"accumulation", "checkpointing"}


def test_cpu_bf16_only_when_not_native():
    context = {"device_type": "cpu", "precision": "bf16"}
    assert diagnose.rule_cpu_bf16(_summary(), context | {"cpu_native_bf16": False}) is not None
    assert diagnose.rule_cpu_bf16(_summary(), context | {"cpu_native_bf16": True}) is None
    assert diagnose.rule_cpu_bf16(_summary(), context) is None  # unknown: say nothing


def test_compute_bound_is_info_and_rules_out_the_dataloader():
    summary = _summary({"forward": 0.3, "backward": 0.6, "optimizer_step": 0.05, "data_loading": 0.02})
    findings = diagnose.diagnose(summary, {"device_type": "cpu"})
    assert _rules(findings) == ["compute_bound"]
    assert findings[0]["severity"] == "info" and findings[0]["value"] == pytest.approx(0.95)
    assert diagnose.rules_out(findings) == {"dataloader"} and diagnose.predicts(findings) == set()


def test_optimizer_and_unannotated_time():
    summary = _summary({"optimizer_step": 0.2, "other": 0.2})
    assert _rules(diagnose.diagnose(summary, {})) == ["optimizer_step", "unannotated_time"]


def test_thresholds_are_the_ones_the_brief_names():
    assert diagnose.DATA_LOADING_SHARE_MAX == 0.05
    assert diagnose.MEMORY_PRESSURE_SHARE == 0.85
    assert diagnose.COMPUTE_BOUND_SHARE == 0.90


def test_quiet_summary_has_no_findings():
    summary = _summary({"forward": 0.3, "backward": 0.5, "optimizer_step": 0.05, "other": 0.1,
                        "data_loading": 0.03, "host_to_device": 0.02}, _device())
    assert diagnose.diagnose(summary, GPU_CONTEXT) == []


def test_a_trace_read_with_host_figures_measured_beside_it_can_say_page_faults():
    from pathlib import Path

    from workbench.trace import explain
    trace = next(Path(__file__).parents[1].joinpath("fixtures", "traces", "cpu_only").glob("*.json*"))
    measured = {"host_cpu": {"system_time_share": 0.2, "minor_faults_per_step": 40000.0}}
    assert "page_faults" in [f["rule"] for f in explain.analyze_file(trace, measured)["findings"]]
    assert "page_faults" not in [f["rule"] for f in explain.analyze_file(trace)["findings"]]


def test_workbench_analyze_reads_the_figures_the_run_wrote_beside_the_trace(tmp_path):
    import json
    import shutil
    from pathlib import Path

    from workbench.results import MEASURED_CONTEXT_FILE
    from workbench.trace import explain
    source = next(Path(__file__).parents[1].joinpath("fixtures", "traces", "cpu_only").glob("*.json*"))
    trace = Path(shutil.copy(source, tmp_path / source.name))
    assert "page_faults" not in [f["rule"] for f in explain.analyze_file(trace)["findings"]]
    (tmp_path / MEASURED_CONTEXT_FILE).write_text(json.dumps(
        {"host_cpu": {"system_time_share": 0.087, "minor_faults_per_step": 41600.0}, "host_allocator": "system"}))
    finding = next(f for f in explain.analyze_file(trace)["findings"] if f["rule"] == "page_faults")
    assert "8.7%" in finding["evidence"] and "41,600" in finding["evidence"]
