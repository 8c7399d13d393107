"""The stages that act on what the trace says once the loader is fixed (issue 17): CUDA graphs for a
launch-bound step, the batch size, JPEG decoding on the device; their skips with reasons on a CPU,
their order, and how a kept batch is rebuilt in leave-one-out."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from workbench.config import RunConfig
from workbench.device import Capabilities
from workbench.errors import StageSkipped
from workbench.run import comparing, first_pass, leave_one_out
from workbench.run.stages import BATCH, MEMORY, STAGES, StageContext

STAGE = {s.name: s for s in STAGES}
CPU = StageContext("cpu", Capabilities(None, "no native bf16", False, False, False, False))
CUDA = StageContext("cuda", Capabilities("bf16", "Hopper", True, True, True, False))


@pytest.mark.parametrize("name, cfg, reason", [
    ("cuda_graphs", RunConfig(), "CUDA graphs .* this device is cpu"),
    ("decode_on_device", RunConfig(data="synthetic"), "needs data=imagefolder:PATH.*synthetic"),
    ("batch_size", RunConfig(), "held at batch_size=32; --allow-batch-change"),
])
def test_stages_that_do_not_apply_say_why(name, cfg, reason):
    with pytest.raises(StageSkipped, match=reason):
        STAGE[name].apply(cfg, CPU)


def test_cuda_graphs_is_reduce_overhead_and_compile_then_has_nothing_left_to_do():
    graphed = STAGE["cuda_graphs"].apply(RunConfig(), CUDA)
    assert graphed.compile == "reduce-overhead"
    with pytest.raises(StageSkipped, match="already compiled"):
        STAGE["compile"].apply(graphed, CUDA)
    with pytest.raises(StageSkipped, match="micro-batches"):
        STAGE["cuda_graphs"].apply(RunConfig(batch_size=32, micro_batch_size=16), CUDA)


def test_decode_on_device_applies_to_an_imagefolder():
    cfg = STAGE["decode_on_device"].apply(RunConfig(data="imagefolder:/data/jpegs"), CPU)
    assert cfg.input_pipeline == "decode_on_device"


def test_a_launch_bound_trace_takes_cuda_graphs_first():
    pending = [STAGE[n] for n in ("amp", "channels_last", "cuda_graphs", "compile")]
    stage, why = first_pass.next_stage(pending, [{"rule": "launch_bound", "severity": "medium"}], "trace")
    assert stage.name == "cuda_graphs" and "launch_bound" in why


def test_the_batch_comes_after_the_speed_stages_and_before_the_memory_stages():
    kinds = [s.kind for s in sorted((s for s in STAGES if s.kind != "reference"),
                                    key=lambda s: (first_pass.PASS_ORDER.index(s.kind), first_pass.STAGE_NAMES.index(s.name)))]
    memory = kinds.count(MEMORY)
    assert memory >= 2 and kinds.index(BATCH) == len(kinds) - memory - 1 and kinds[-memory:] == [MEMORY] * memory


def test_leave_one_out_keeps_the_measured_batch_when_another_stage_is_dropped():
    base = RunConfig(batch_size=32, lr=1e-4, allow_batch_change=True)
    final = base.with_overrides(batch_size=256, lr=8e-4, fused_optimizer=True)
    session = SimpleNamespace(base_cfg=base, context=CPU)
    without_fused = leave_one_out._without(session, ["fused_optimizer", "batch_size"], "fused_optimizer", final)
    assert (without_fused.batch_size, without_fused.lr, without_fused.fused_optimizer) == (256, 8e-4, False)
    without_batch = leave_one_out._without(session, ["fused_optimizer", "batch_size"], "batch_size", final)
    assert (without_batch.batch_size, without_batch.lr, without_batch.fused_optimizer) == (32, 1e-4, True)


def test_a_kept_batch_says_the_rule_it_assumes_and_the_accuracy_beside_it():
    before, after = RunConfig(batch_size=32, lr=1e-4), RunConfig(batch_size=128, lr=4e-4)
    against = SimpleNamespace(doc={"metrics": {"eval_accuracy": 0.31}})
    result = {"status": "kept", "reason": "1.80x [1.60, 2.00] vs fused_optimizer: faster, kept",
              "metrics": {"eval_accuracy": 0.27}}
    said = first_pass._with_batch_search(result, {"chosen": 128}, before, after, against)
    assert said["reason"].startswith("batch 32 -> 128, learning rate 0.0001 -> 0.0004 (linear scaling, x4")
    assert "held-out accuracy 27.0% vs 31.0%" in said["reason"] and said["batch_search"] == {"chosen": 128}


def test_leave_one_out_rebuilds_the_kept_batch_whole_not_in_the_old_micro_batches():
    base = RunConfig(batch_size=32, micro_batch_size=16, lr=1e-4, allow_batch_change=True)
    final = base.with_overrides(batch_size=256, micro_batch_size=0, lr=8e-4, fused_optimizer=True)
    session = SimpleNamespace(base_cfg=base, context=CPU)
    without = leave_one_out._without(session, ["fused_optimizer", "batch_size"], "fused_optimizer", final)
    assert (without.batch_size, without.micro_batch_size) == (256, 0)


def test_a_stage_whose_field_a_later_stage_replaced_leaves_the_list_without_a_measurement(monkeypatch):
    base = RunConfig()
    final = base.with_overrides(compile="reduce-overhead")
    said, added = [], []
    session = SimpleNamespace(base_cfg=base, context=CUDA, log=said.append)
    state = comparing.LadderState(final, applied=["compile", "cuda_graphs"])
    monkeypatch.setattr(comparing, "compare", lambda *a, **k: pytest.fail("nothing to measure"))
    book = SimpleNamespace(add=lambda key, entry: added.append((key, entry)))
    with pytest.raises(pytest.fail.Exception):   # cuda_graphs itself is still measured (without it: compile=default)
        leave_one_out.leave_one_out(session, state, book, [])
    assert state.applied == ["cuda_graphs"] and added[0][1]["stage"] == "compile" and added[0][1]["dropped"]
    assert "replaced what it set" in said[0]


def test_a_resumed_run_reuses_its_batch_search(tmp_path, monkeypatch):
    from workbench import results as results_module

    found = tmp_path / "batch_size.json"
    monkeypatch.setattr(results_module, "stage_files", lambda run_dir, name: [found])
    monkeypatch.setattr(results_module, "read_stage_result",
                        lambda path: {"batch_search": {"start": 32, "chosen": 128, "lr_rule": "linear"}})
    cfg = RunConfig(batch_size=32, lr=1e-4, allow_batch_change=True)
    again = first_pass._searched_before(SimpleNamespace(resume=True, run_dir=tmp_path), cfg)
    assert again[0].batch_size == 128 and again[0].lr == pytest.approx(4e-4) and again[1]["chosen"] == 128
    assert first_pass._searched_before(SimpleNamespace(resume=False, run_dir=tmp_path), cfg) is None
    assert first_pass._searched_before(SimpleNamespace(resume=True, run_dir=tmp_path), cfg.with_overrides(batch_size=64)) is None
