"""RunConfig validation (every error names the bad value and what is allowed) and the stage functions."""
from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest

from workbench.run import stages
from workbench.config import (COMPILE_MODES, PRECISIONS, RunConfig, divisors, field_names)
from workbench.device import DeviceFacts, decide
from workbench.errors import StageSkipped, UsageError


# --- RunConfig -------------------------------------------------------------------------------

def test_defaults_are_valid_and_frozen():
    cfg = RunConfig()
    assert cfg.accumulation_steps == 1
    assert cfg.effective_micro_batch == cfg.batch_size
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 64  # type: ignore[misc]


def test_every_field_is_documented():
    for f in dataclasses.fields(RunConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"


@pytest.mark.parametrize("changes, must_name", [
    ({"image_size": 0}, ["image_size=0", "at least 1"]),
    ({"batch_size": -1}, ["batch_size=-1", "at least 1"]),
    ({"micro_batch_size": -2}, ["micro_batch_size=-2", "at least 0"]),
    ({"num_workers": -1}, ["num_workers=-1"]),
    ({"lr": 0.0}, ["lr=0.0"]),
    ({"precision": "fp8"}, ["'fp8'", *PRECISIONS]),
    ({"compile": "fast"}, ["'fast'", *COMPILE_MODES]),
    ({"memory_format": "nhwc"}, ["'nhwc'", "channels_last"]),
    ({"optimizer": "lion"}, ["'lion'", "adamw", "sgd"]),
    ({"device": "tpu"}, ["'tpu'", "cuda", "mps"]),
    ({"checkpointing": "all"}, ["'all'", "blocks"]),
    ({"data": "s3:bucket"}, ["'s3:bucket'", "synthetic", "cifar10", "imagefolder:PATH"]),
    ({"data": "imagefolder:"}, ["imagefolder:", "path"]),
    ({"persistent_workers": True}, ["persistent_workers", "num_workers"]),
    ({"batch_size": 4, "micro_batch_size": 8}, ["micro_batch_size=8", "batch_size=4"]),
])
def test_bad_values_raise_usage_error_naming_value_and_allowed(changes, must_name):
    with pytest.raises(UsageError) as info:
        RunConfig(**changes)
    message = str(info.value)
    for text in must_name:
        assert text in message, f"{text!r} missing from {message!r}"


def test_indivisible_micro_batch_lists_allowed_divisors():
    with pytest.raises(UsageError) as info:
        RunConfig(batch_size=32, micro_batch_size=5)
    message = str(info.value)
    assert "micro_batch_size=5" in message and "batch_size=32" in message
    assert "1, 2, 4, 8, 16, 32" in message


def test_divisors():
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisors(1) == [1]


def test_accumulation_steps_from_micro_batch():
    cfg = RunConfig(batch_size=32, micro_batch_size=8)
    assert cfg.accumulation_steps == 4 and cfg.effective_micro_batch == 8


def test_persistent_workers_valid_with_workers():
    assert RunConfig(num_workers=2, persistent_workers=True).persistent_workers


def test_imagefolder_with_path_is_valid():
    assert RunConfig(data="imagefolder:/some/where").data == "imagefolder:/some/where"


def test_with_overrides_validates_and_rejects_unknown():
    cfg = RunConfig()
    assert cfg.with_overrides(batch_size=64).batch_size == 64
    assert cfg.batch_size == 32  # the original is untouched
    with pytest.raises(UsageError) as info:
        cfg.with_overrides(unknown=1)
    assert "'unknown'" in str(info.value) and "batch_size" in str(info.value)
    with pytest.raises(UsageError, match="'fp8'"):
        cfg.with_overrides(precision="fp8")


def test_to_dict_round_trips():
    cfg = RunConfig(batch_size=16, micro_batch_size=4, precision="bf16")
    assert RunConfig(**cfg.to_dict()) == cfg
    assert list(cfg.to_dict()) == field_names()


# --- stages: each a RunConfig -> RunConfig ------------------------------------------------------

def _ctx(facts: DeviceFacts, best_workers: int = 0) -> stages.StageContext:
    return stages.StageContext(facts.type, decide(facts), best_workers=best_workers)


CPU_NO_BF16 = DeviceFacts("cpu", "test cpu", cpu_flags=("avx2", "fma"), cpu_cores=2)
CPU_BF16 = DeviceFacts("cpu", "test cpu", cpu_flags=("avx2", "avx512_bf16"), cpu_cores=2)
A100 = DeviceFacts("cuda", "A100", capability=(8, 0), device_count=1)
V100 = DeviceFacts("cuda", "V100", capability=(7, 0), device_count=1)
H100 = DeviceFacts("cuda", "H100", capability=(9, 0), device_count=1)


def test_stage_order_is_the_ladder():
    assert stages.STAGE_NAMES == ("baseline", "dataloader", "batched_input", "tf32", "amp", "decode_on_device",
                                  "attention_flash", "attention_efficient", "attention_cudnn", "attention_math",
                                  "channels_last", "fused_optimizer", "host_allocator", "accumulation", "checkpointing",
                                  "chunked_loss", "optimizer_8bit", "adafactor", "zero1", "fsdp", "optimizer_offload", "cuda_graphs",
                                  "compile", "batch_size")


def test_select_all_and_by_name_keeps_baseline_first_and_ladder_order():
    # the trade-offs few runs need (another optimizer, sharding) run only when named
    opt_in = {"optimizer_8bit", "adafactor", "zero1", "fsdp", "optimizer_offload", "attention_math"}
    assert [s.name for s in stages.select(None)] == [n for n in stages.STAGE_NAMES if n not in opt_in]
    assert [s.name for s in stages.select("compile, amp")] == ["baseline", "amp", "compile"]
    assert [s.name for s in stages.select("fsdp,adafactor")] == ["baseline", "adafactor", "fsdp"]


def test_select_unknown_stage_is_usage_error():
    with pytest.raises(UsageError) as info:
        stages.select("amp,turbo")
    assert "'turbo'" in str(info.value) and "channels_last" in str(info.value)


def test_every_stage_is_a_pure_function_of_the_config():
    given = dict(batch_size=8, data="imagefolder:/data/jpegs", allow_batch_change=True)
    cfg = RunConfig(**given)
    applied = set()
    sdpa = {"attention": "sdpa"}
    h100 = dataclasses.replace(_ctx(H100), capability=H100.capability, model_facts=sdpa)
    for ctx in (dataclasses.replace(_ctx(A100, best_workers=2), capability=A100.capability, model_facts=sdpa),
                dataclasses.replace(_ctx(CPU_BF16, best_workers=2), world_size=2), h100):
        for stage in stages.STAGES:
            try:
                out = stage.apply(cfg, ctx)
            except StageSkipped:
                continue
            applied.add(stage.name)
            assert isinstance(out, RunConfig)
            assert cfg == RunConfig(**given)  # input untouched
    # each stage applies on one of the two machines (keeping freed host memory needs glibc)
    from workbench.training import host_memory
    from workbench.training.model import eight_bit_unavailable
    needs_glibc = {"host_allocator"} if host_memory.unavailable_reason() else set()
    needs_bitsandbytes = {"optimizer_8bit"} if eight_bit_unavailable() else set()
    language_model_only = {"chunked_loss"}  # tests/training/test_language.py applies it to a gpt
    assert applied == set(stages.STAGE_NAMES) - needs_glibc - needs_bitsandbytes - language_model_only


def test_baseline_is_identity():
    cfg = RunConfig()
    assert stages.baseline(cfg, _ctx(CPU_NO_BF16)) is cfg


def test_dataloader_uses_best_workers_and_pins_only_where_decided():
    out = stages.dataloader(RunConfig(), _ctx(CPU_NO_BF16, best_workers=3))
    assert (out.num_workers, out.persistent_workers, out.pin_memory) == (3, True, False)
    out = stages.dataloader(RunConfig(), _ctx(A100, best_workers=0))
    assert (out.num_workers, out.persistent_workers, out.pin_memory) == (0, False, True)


def test_input_stages_are_skipped_where_the_loader_cannot_pay_for_them():
    """Amdahl's bound: 11 ms of loading in a 960 ms step is at most 1.012x, under the 1.05x bar."""
    cfg = RunConfig(batch_size=32)
    slow_step = replace(_ctx(CPU_NO_BF16, best_workers=2), loader_s_per_sample=0.011 / 32, step_time_s=0.96)
    for stage in (stages.dataloader, stages.batched_input):
        with pytest.raises(StageSkipped, match=r"11 ms per batch .* 960 ms step is at most 1.012x, under the 1.05x bar"):
            stage(cfg, slow_step)
    fast_step = replace(slow_step, step_time_s=0.1)   # a tenth of the step: up to 1.12x, so measured
    assert stages.dataloader(cfg, fast_step).num_workers == 2
    assert stages.batched_input(cfg, fast_step).input_pipeline == "batched"
    on_gpu = replace(_ctx(A100, best_workers=2), loader_s_per_sample=0.011 / 32, step_time_s=0.96)
    assert stages.dataloader(cfg, on_gpu).pin_memory  # on CUDA the stage also pins the copies: no bound
    unmeasured = _ctx(CPU_NO_BF16, best_workers=2)       # no sweep or no step time: nothing to judge on
    assert stages.dataloader(cfg, unmeasured).num_workers == 2


def test_the_loader_cost_is_the_sweeps_figure_with_no_workers():
    from workbench.run.session import loader_cost
    assert loader_cost({"workers_sweep_ms_per_batch": {"0": 11.36, "2": 7.71}}, 32) == pytest.approx(0.01136 / 32)
    assert loader_cost({}, 32) is None


def test_amp_uses_decided_dtype():
    assert stages.amp(RunConfig(), _ctx(A100)).precision == "bf16"
    assert stages.amp(RunConfig(), _ctx(V100)).precision == "fp16"
    native = stages.amp(RunConfig(), _ctx(CPU_BF16))
    assert native.precision == "bf16" and native.timed_steps == RunConfig().timed_steps


def test_amp_on_cpu_without_native_bf16_is_a_short_probe():
    cfg = RunConfig(timed_steps=20, repeats=3, warmup_steps=5)
    out = stages.amp(cfg, _ctx(CPU_NO_BF16))
    assert out.precision == "bf16"
    assert out.repeats == 1
    assert out.warmup_steps == stages.PROBE_WARMUP_STEPS
    assert out.timed_steps == stages.PROBE_TIMED_STEPS


def test_tf32_skipped_without_capability():
    with pytest.raises(StageSkipped, match="cpu"):
        stages.tf32(RunConfig(), _ctx(CPU_BF16))
    with pytest.raises(StageSkipped):
        stages.tf32(RunConfig(), _ctx(V100))
    assert stages.tf32(RunConfig(), _ctx(A100)).tf32 is True


def test_model_side_stages_set_their_field():
    ctx = _ctx(CPU_NO_BF16)
    assert stages.channels_last(RunConfig(), ctx).memory_format == "channels_last"
    assert stages.checkpointing(RunConfig(), ctx).checkpointing == "blocks"
    assert stages.compile_stage(RunConfig(), ctx).compile == "default"


def test_accumulation_keeps_effective_batch():
    out = stages.accumulation(RunConfig(batch_size=32), _ctx(CPU_NO_BF16))
    assert out.batch_size == 32
    assert out.micro_batch_size == 32 // stages.ACCUMULATION_MICRO_BATCHES
    assert out.accumulation_steps == stages.ACCUMULATION_MICRO_BATCHES


def test_accumulation_skipped_for_odd_batch():
    with pytest.raises(StageSkipped, match="batch_size=7"):
        stages.accumulation(RunConfig(batch_size=7), _ctx(CPU_NO_BF16))


def test_machine_defaults_live_with_the_config():
    from workbench.config import for_machine, machine_defaults

    assert machine_defaults("cuda")["image_size"] == 224 and machine_defaults("cpu")["image_size"] == 32
    cfg, line = for_machine(device="cpu", batch_size=8)
    assert (cfg.image_size, cfg.batch_size) == (32, 8)
    assert line == "defaults for cpu: image_size=32 (override with --image-size)"  # the batch was given: not a default
    assert for_machine(device="cpu", batch_size=8, image_size=96)[1] == ""


def test_clip_grad_norm_reaches_the_step(tmp_path):
    from workbench.measure.executor import build

    with pytest.raises(UsageError, match="clip_grad_norm"):
        RunConfig(clip_grad_norm=-1.0)
    cfg = RunConfig(data="synthetic", model="workbench.experiments.matrix:lab_cnn", image_size=8, batch_size=4,
                    synthetic_per_batch=16, device="cpu", clip_grad_norm=0.5, data_dir=str(tmp_path))
    assert build(cfg, log=lambda message: None).step.settings.clip_grad_norm == 0.5
    assert build(cfg.with_overrides(clip_grad_norm=0.0), log=lambda message: None).step.settings.clip_grad_norm is None


def test_one_meta_pass_counts_the_flops_and_each_blocks_share(tmp_path):
    from workbench.measure.executor import build

    cfg = RunConfig(data="synthetic", model="resnet18", image_size=16, batch_size=4, synthetic_per_batch=16,
                    device="cpu", data_dir=str(tmp_path))
    notes = build(cfg, log=lambda message: None).notes
    assert notes["flops_per_step"] > 0
    shares = notes["block_activation_shares"]
    assert len(shares) == 5 and abs(sum(shares) - 1) < 1e-3  # stem and layer1-4


def test_each_compiled_build_compiles_afresh(tmp_path, monkeypatch):
    """In-process rounds must not reuse an earlier round's compiled code: compile time is its first compile."""
    import torch

    from workbench.measure.executor import build

    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    cfg = RunConfig(data="synthetic", model="workbench.experiments.matrix:lab_cnn", image_size=8, batch_size=4,
                    synthetic_per_batch=16, device="cpu", data_dir=str(tmp_path))
    build(cfg, log=lambda message: None)
    assert resets == []
    build(cfg.with_overrides(compile="default"), log=lambda message: None)  # lazy: nothing compiles yet
    assert resets == [1]


def test_progress_says_a_step_count_only_where_there_is_one(capsys):
    import io

    from workbench.progress import Progress

    stream = io.StringIO()
    progress = Progress("amp", stream=stream)
    progress.update("trace", 3, 5, force=True)
    progress.update("warm-up", 1, None, force=True)
    assert "[amp] trace step 3/5" in stream.getvalue() and "step 1  elapsed" in stream.getvalue()
    assert "None" not in stream.getvalue()
