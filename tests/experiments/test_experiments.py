"""The lab's experiments on tiny settings: rows, JSON files, plots, failures and interruptions.

Most experiments run in this process (isolate=False) on 16 px images and 8-image batches; one test
measures a configuration in a fresh process, as `workbench experiment` does.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.device import decide, probe

from workbench.config import RunConfig
from workbench.training.data import write_synthetic_cifar
from workbench.errors import UsageError
from workbench.experiments import EXPERIMENTS, lab, names, rows, run_all, run_experiment
from workbench.experiments.lab import budgeted
from workbench.launch import Outcome, RoundSpec, SideReport, SideSpec, choose

ROW_KEYS = {"label", "overrides", "status", "reason", "throughput", "step_time_s", "epoch_time_s", "peak_memory_mb",
            "peak_memory_kind", "final_loss", "speedup", "warmup_s", "extra"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthetic_cifar(root, per_batch=64)
    return root


@pytest.fixture
def cfg(data_dir) -> RunConfig:
    return RunConfig(image_size=16, batch_size=8, warmup_steps=1, timed_steps=2, repeats=1, data="synthetic",
                     data_dir=str(data_dir), synthetic_per_batch=64, trace=False)


@pytest.fixture(autouse=True)
def one_round(monkeypatch):
    """One measuring round where the experiment would interleave two (the precision test keeps two)."""
    from workbench.experiments import clipping, loader

    monkeypatch.setattr(loader, "ROUNDS", 1)
    monkeypatch.setattr(clipping, "ROUNDS", 1)


def quiet(message: str) -> None:
    pass


def written(out: Path, name: str) -> dict:
    doc = json.loads((out / "experiments" / f"{name}.json").read_text())
    for row in doc["rows"]:
        assert ROW_KEYS <= set(row), row["label"]
    for plot in doc["plots"]:
        assert (out / plot).stat().st_size > 1000
    return doc


def fake_raw(step_s: float, memory_mb: float = 100.0, **metrics) -> dict:
    """A measuring process's result without measuring anything (for the experiment logic around it)."""
    return {"status": "measured", "metrics": {
        "samples_per_step": 8, "step_times_s": [[step_s, step_s * 1.01, step_s * 0.99]],
        "throughput": {"median": 8 / step_s}, "epoch_time_s": 640 * step_s / 8, "peak_memory_mb": memory_mb,
        "peak_memory_kind": "fake", "warmup_s": 1.0, "final_loss": 2.0, "loss_finite": True, **metrics}}


class FakeLauncher:
    """A launcher that measures nothing: the side's report is fake(side); a Ctrl-C in it is an Outcome."""

    name = "fake"

    def __init__(self, fake):
        self.fake = fake

    def run(self, request: RoundSpec, timeout_s=None, env=None) -> Outcome:
        key = request.order[0]
        try:
            raw = self.fake(request.sides[key])
        except KeyboardInterrupt as stop:
            return Outcome({}, None, 1.0, stop)
        return Outcome({key: SideReport(key, raw["status"], "final", raw.get("metrics"), raw.get("error"))}, 0, 1.0)


# --- rows and budget (pure) ------------------------------------------------------------------------

def test_rows_merge_rounds_and_compare_with_the_reference():
    reference = [fake_raw(0.2), fake_raw(0.21)]
    faster = [fake_raw(0.1, memory_mb=50.0), fake_raw(0.1, memory_mb=70.0)]
    row = rows.build_row("fast", {"x": 1}, "", faster, reference, is_reference=False)
    assert row["status"] == "ok" and row["rounds"] == 2
    assert row["peak_memory_mb"] == 70.0  # the worst round
    assert row["speedup"]["ratio"] == pytest.approx(2.05, rel=0.02)
    assert row["speedup"]["verdict"] == "faster"
    assert rows.build_row("ref", {}, "", reference, reference, True)["speedup"]["verdict"] == "reference"


def test_rows_of_skipped_and_failed_configurations_keep_every_key():
    skipped = rows.build_row("pin", {}, "CUDA only", [], None, False)
    failed = rows.build_row("boom", {}, "", [{"status": "failed", "error": "RuntimeError: x"}], None, False)
    assert (skipped["status"], skipped["reason"]) == ("skipped", "CUDA only")
    assert (failed["status"], failed["reason"]) == ("failed", "RuntimeError: x")
    assert ROW_KEYS <= set(skipped) and failed["throughput"] is None


def test_budget_applies_only_to_fields_left_at_their_defaults():
    chosen = budgeted(RunConfig(timed_steps=7), timed_steps=10, repeats=2, warmup_steps=3)
    assert (chosen.timed_steps, chosen.repeats, chosen.warmup_steps, chosen.trace) == (7, 2, 3, False)


def test_registry_and_unknown_name(cfg, tmp_path):
    assert set(names()) == {*EXPERIMENTS, "all"}
    assert {"workers", "pipeline", "precision", "memory", "matrix", "compile", "clipping",
            "memory_breakdown"} == set(EXPERIMENTS)
    with pytest.raises(UsageError, match="allowed: workers"):
        run_experiment("nope", cfg, tmp_path)


# --- experiments, measured in this process -----------------------------------------------------

def test_workers_drops_counts_above_the_usable_cores(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr("workbench.training.loader_sweep.candidates", lambda cores: [0, 2])
    doc = EXPERIMENTS["workers"](cfg, tmp_path, log=quiet, isolate=False)
    assert doc == written(tmp_path, "workers")
    status = {r["label"]: r["status"] for r in doc["rows"]}
    assert status == {"workers=0": "ok", "workers=2": "ok", "workers=4": "skipped", "workers=8": "skipped"}
    assert doc["summary"]["dropped"] == [4, 8] and doc["summary"]["best"] in ("workers=0", "workers=2")
    assert doc["rows"][0]["epoch_time_s"] > 0 and doc["plots"] == ["num_workers_comparison.png"]


def test_pipeline_skips_pin_memory_off_cuda_and_reuses_the_workers_result(cfg, tmp_path):
    (tmp_path / "experiments").mkdir()
    earlier = {"status": "complete", "base_config": budgeted(cfg).to_dict(), "rows": [
        {"status": "ok", "overrides": {"num_workers": 2}, "throughput": {"median": 10.0}}]}
    (tmp_path / "experiments" / "workers.json").write_text(json.dumps(earlier))
    doc = EXPERIMENTS["pipeline"](cfg, tmp_path, log=quiet, isolate=False)
    labels = [r["label"] for r in doc["rows"]]
    assert labels == ["baseline", "workers=2", "+ pin_memory", "+ persistent_workers"]
    assert doc["rows"][2]["status"] == "skipped" and "pin_memory" in doc["rows"][2]["reason"]
    assert doc["rows"][3]["overrides"]["persistent_workers"] is True
    assert "workers.json" in doc["decisions"]["workers"]
    assert written(tmp_path, "pipeline")["plots"] == ["dataloader_optimization.png"]


def test_precision_compares_fp32_with_the_devices_amp(cfg, tmp_path):
    doc = EXPERIMENTS["precision"](cfg, tmp_path, log=quiet, isolate=False)
    fp32, amp = doc["rows"]
    assert fp32["speedup"]["verdict"] == "reference" and amp["overrides"]["precision"] in ("bf16", "fp16")
    assert fp32["rounds"] == 2 and len(fp32["repeat_throughputs"]) == 2  # two interleaved rounds
    assert amp["status"] == "ok" and {"speedup", "memory_saved_fraction"} <= set(doc["summary"])
    assert written(tmp_path, "precision")["plots"] == ["amp_comparison.png"]


def test_memory_keeps_the_effective_batch(cfg, tmp_path):
    doc = EXPERIMENTS["memory"](cfg.with_overrides(batch_size=16), tmp_path, log=quiet, isolate=False)
    micro = {r["label"]: r["extra"].get("micro_batch") for r in doc["rows"]}
    assert micro == {"accumulation=1": 16, "accumulation=2": 8, "accumulation=4": 4, "accumulation=8": 2,
                     "checkpointing": 16}
    assert all(r["extra"]["effective_batch"] == 16 for r in doc["rows"])
    assert doc["rows"][-1]["overrides"]["checkpointing"] == "blocks"
    assert written(tmp_path, "memory")["plots"] == ["accumulation_comparison.png", "checkpointing_comparison.png"]


def test_matrix_trains_the_lab_cnn_and_validates(cfg, tmp_path):
    doc = EXPERIMENTS["matrix"](cfg, tmp_path, log=quiet, isolate=False, batch=16)
    assert [r["label"] for r in doc["rows"]] == ["STD", "MP", "GA16-8", "GA16-4", "Comb16-8", "Comb16-4"]
    native_amp = decide(probe("cpu")).amp_dtype is not None
    for row in doc["rows"]:
        if not native_amp and row["label"].startswith(("MP", "Comb")):
            assert row["status"] == "skipped" and "native" in row["reason"]  # emulated bf16: not measured
            continue
        assert row["status"] == "ok", row["reason"]
        assert 0.0 <= row["extra"]["val_accuracy"] <= 1.0 and row["extra"]["val_samples"] == 64
        assert row["extra"]["optimizer_steps"] == 3
    assert doc["base_config"]["model"].endswith("matrix:lab_cnn") and doc["base_config"]["optimizer"] == "adamw"
    assert any("scaled" in note for note in doc["notes"])
    assert written(tmp_path, "matrix")["plots"] == ["matrix_accuracy.png", "matrix_memory.png"]


def test_clipping_records_norms_before_and_after(cfg, tmp_path):
    doc = EXPERIMENTS["clipping"](cfg, tmp_path, log=quiet, isolate=False)
    by_label = {r["label"]: r["extra"] for r in doc["rows"]}
    assert by_label["none"]["grad_norm_after"] == by_label["none"]["grad_norm_before"]
    assert by_label["none"]["clipped_fraction"] == 0.0
    for threshold in (0.5, 1, 2):
        extra = by_label[f"norm {threshold}"]
        assert extra["grad_norm_after"]["max"] <= threshold * 1.001
        assert 0.0 <= extra["clipped_fraction"] <= 1.0
    # A freshly initialised ResNet's gradient norm is far above 0.5: every step is clipped.
    assert by_label["norm 0.5"]["clipped_fraction"] == 1.0
    assert by_label["value 0.1"]["grad_norm_after"]["max"] <= by_label["value 0.1"]["grad_norm_before"]["max"]
    assert written(tmp_path, "clipping")["plots"] == ["clipping_comparison.png"]


def test_memory_breakdown_parts_come_from_the_tensors(cfg, tmp_path):
    doc = EXPERIMENTS["memory_breakdown"](cfg, tmp_path, log=quiet, isolate=False)
    parts = doc["summary"]["breakdown_mb"]["baseline"]
    assert parts["optimizer_state"] == pytest.approx(2 * parts["weights"], rel=1e-3)  # Adam: two fp32 states (+ step counters)
    assert parts["gradients"] == pytest.approx(parts["weights"])
    assert written(tmp_path, "memory_breakdown")["plots"] == ["memory_breakdown.png"]


# --- failures, interruptions, isolation ---------------------------------------------------------

def test_compile_records_a_failed_mode_and_goes_on(cfg, tmp_path, monkeypatch):
    def fake(spec):
        mode = spec.config["compile"]
        if mode == "reduce-overhead":
            return {"status": "failed", "error": "BackendCompilerFailed: no"}
        return fake_raw(0.1 if mode == "none" else 0.05)

    monkeypatch.setattr(lab.Lab, "launcher", lambda self: FakeLauncher(fake))
    doc = EXPERIMENTS["compile"](cfg, tmp_path, log=quiet, isolate=False)
    status = {r["label"]: r["status"] for r in doc["rows"]}
    assert status == {"eager": "ok", "default": "ok", "reduce-overhead": "failed", "max-autotune": "ok"}
    assert doc["summary"]["per_mode"]["reduce-overhead"]["reason"].startswith("BackendCompilerFailed")
    assert doc["summary"]["faster_than_eager"] == ["default", "max-autotune"]
    assert doc["summary"]["per_mode"]["default"]["break_even_steps"] is not None
    assert written(tmp_path, "compile")["plots"] == ["compile_comparison.png"]


def test_an_interrupted_experiment_keeps_what_it_finished(cfg, tmp_path, monkeypatch):
    calls = []

    def fake(spec):
        calls.append(spec.stage)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_raw(0.1)

    monkeypatch.setattr(lab.Lab, "launcher", lambda self: FakeLauncher(fake))
    with pytest.raises(KeyboardInterrupt):
        EXPERIMENTS["precision"](cfg, tmp_path, log=quiet, isolate=False)
    doc = json.loads((tmp_path / "experiments" / "precision.json").read_text())
    assert doc["status"] == "interrupted"
    assert [r["status"] for r in doc["rows"]] == ["ok", "pending"]


def test_all_goes_on_past_a_failed_experiment(cfg, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("broken experiment")

    def fine(*args, **kwargs):
        return {"status": "complete", "plots": [], "summary": {"conclusion": "fine"}}

    monkeypatch.setattr("workbench.experiments.EXPERIMENTS", {"a": broken, "b": fine})
    index = run_all(cfg, tmp_path, log=quiet, isolate=False)
    assert index["experiments"]["a"]["status"] == "failed" and "broken" in index["experiments"]["a"]["error"]
    assert index["experiments"]["b"]["status"] == "complete"
    assert json.loads((tmp_path / "experiments" / "all.json").read_text())["experiments"].keys() == {"a", "b"}


def test_a_configuration_measured_in_a_fresh_process(cfg):
    side = SideSpec("test/fresh", cfg.with_overrides(model="workbench.experiments.matrix:lab_cnn").to_dict(),
                    measure="workbench.experiments.matrix:measure")
    request = RoundSpec({"only": side}, ("only",))
    report = choose(on_cpu=True).run(request, timeout_s=120).report("only")
    assert report.status == "measured", report.error
    assert report.metrics["peak_memory_mb"] > 0 and report.metrics["peak_memory_kind"]
    assert report.metrics["validation"]["split"] == "test"  # the experiment's own function ran
    stopped = choose(on_cpu=True).run(request, timeout_s=0.5).report("only")
    assert stopped.status == "failed" and "timed out" in stopped.error


def test_cpu_peak_memory_comes_from_the_tensors_not_resident_growth(tmp_path):
    """The memory experiments' CPU peak: weights + optimizer state + a profiled step's peak (5 MiB in
    the fixture trace), as the ladder reads it; resident growth stays for reference only."""
    trace = Path(__file__).resolve().parents[1] / "fixtures" / "traces" / "cpu_only" / "host_100.1000.pt.trace.json"
    raw = {"status": "measured", "trace_file": str(trace), "metrics": {
        "peak_memory_mb": 47.0, "peak_memory_kind": "host RSS growth", "peak_memory": {"rss_peak_mb": 300.0},
        "memory_breakdown_mb": {"weights": 10.0, "gradients": 10.0, "optimizer_state": 20.0, "activations_and_other": 7.0}}}
    read = lab.with_tensor_peak(raw, tmp_path)
    assert read["metrics"]["peak_memory_mb"] == pytest.approx(35.0)  # 10 + 20 + 5
    assert read["metrics"]["peak_memory_kind"].startswith("CPU tensor memory")
    assert read["metrics"]["peak_memory"]["rss_peak_mb"] == 300.0 and read["trace_file"] is None
    broken = {**raw, "trace_file": str(tmp_path / "missing.json"), "metrics": dict(raw["metrics"])}
    kept = lab.with_tensor_peak(broken, tmp_path)
    assert kept["metrics"]["peak_memory_mb"] == 47.0 and "tensor_peak_error" in kept["metrics"]
