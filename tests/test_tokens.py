"""A non-image model through the ladder: a tiny transformer on dict token batches, its own loss."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from workbench.api import optimize
from workbench.config import RunConfig
from workbench.errors import UsageError
from workbench.training.step import StepSettings, TrainStep, split_batch

VOCAB, WIDTH, LENGTH = 64, 32, 16


class TokenWindows(torch.utils.data.Dataset):
    """Next-token windows over a repeating sequence (no `classes`: not a classifier)."""

    def __len__(self) -> int:
        return 128

    def __getitem__(self, index: int) -> dict:
        ids = (torch.arange(LENGTH + 1) + index) % VOCAB
        return {"ids": ids[:-1], "targets": ids[1:]}


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.block = nn.TransformerEncoderLayer(WIDTH, nhead=2, dim_feedforward=64, batch_first=True, dropout=0.0)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(ids)))


def lm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    logits = model(batch["ids"])
    return nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())


def test_split_batch_keeps_the_structure():
    batch = {"ids": torch.arange(8).view(4, 2), "meta": ("x", torch.arange(4))}
    parts = split_batch(batch, 2)
    assert [p["ids"].tolist() for p in parts] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    assert parts[1]["meta"][0] == "x" and parts[1]["meta"][1].tolist() == [2, 3]


def test_dict_batch_accumulates_like_the_full_batch():
    batch = torch.utils.data.default_collate([TokenWindows()[i] for i in range(8)])
    grads = []
    for k in (1, 4):
        torch.manual_seed(0)
        model = TinyLM()
        step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), StepSettings(torch.device("cpu"),
                         accumulation_steps=k), loss_fn=lm_loss)
        model.head.weight.register_hook(lambda g: grads.append((k, g.clone())))
        step(batch)
    full = grads[0][1]
    accumulated = sum(g for k, g in grads if k == 4)
    assert torch.allclose(full, accumulated, atol=1e-6)


def test_token_model_runs_through_the_ladder(tmp_path):
    cfg = RunConfig(batch_size=8, warmup_steps=1, timed_steps=3, repeats=2, run_name="tokens",
                    reports_dir=str(tmp_path / "reports"), profiles_dir=str(tmp_path / "profiles"))
    results = optimize(cfg, model_factory=lambda num_classes: TinyLM(), dataset=TokenWindows(), loss_fn=lm_loss,
                       stages="fused_optimizer,accumulation", log=lambda m: None)
    baseline = results[0]
    assert baseline["status"] == "baseline" and "TokenWindows" in baseline["data"]
    assert [r["stage"] for r in results if r["stage"] != "final"] == ["baseline", "fused_optimizer", "accumulation"]
    assert all(r["metrics"]["loss_finite"] for r in results if r["metrics"])
    # FLOPs of a real batch (8 windows of 16 tokens) through the user's loss, forward and backward,
    # counted on the meta device, where attention decomposes into countable bmm (the CPU's fused
    # attention kernel is invisible to FlopCounterMode: the dense layers alone are the lower bound).
    batch = torch.utils.data.default_collate([TokenWindows()[i] for i in range(8)])
    counts = []
    for device in ("cpu", "meta"):
        counter = FlopCounterMode(display=False)
        with torch.device(device), counter:
            lm_loss(TinyLM(), {key: value.to(device) for key, value in batch.items()}).backward()
        counts.append(counter.get_total_flops())
    assert counts[0] < baseline["metrics"]["flops_per_step"] == pytest.approx(counts[1])
    summary = json.loads(Path(baseline["trace"]["summary_json"]).read_text())
    assert summary["breakdown_share"]["forward"] > 0 and summary["breakdown_share"]["backward"] > 0


def test_own_optimizer_is_kept_and_fused_by_its_stage_and_files_name_the_model(tmp_path):
    cfg = RunConfig(batch_size=8, warmup_steps=1, timed_steps=1, repeats=1, rounds=1, run_name="own", trace=False,
                    reports_dir=str(tmp_path / "reports"), profiles_dir=str(tmp_path / "profiles"))
    built = []

    def adamw_groups(model: nn.Module) -> torch.optim.Optimizer:  # nanoGPT's configure_optimizers, in short
        decay = [p for p in model.parameters() if p.dim() >= 2]
        rest = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                      lr=3e-4, betas=(0.9, 0.95))
        built.append(optimizer)
        return optimizer

    results = optimize(cfg, model_factory=tiny_lm, dataset=TokenWindows(), loss_fn=lm_loss,
                       optimizer_factory=adamw_groups, stages="fused_optimizer", log=lambda m: None)
    by_stage = {r["stage"]: r for r in results}
    assert by_stage["fused_optimizer"]["status"] not in ("failed", "skipped"), by_stage["fused_optimizer"]["reason"]
    assert all(r["config"]["model"] == f"{__name__}:tiny_lm" for r in results)
    assert "user dataset TokenWindows" in by_stage["baseline"]["data"]
    assert all(isinstance(o, torch.optim.AdamW) for o in built)
    from workbench.measure.executor import fused_copy

    fused = fused_copy(built[0])
    assert fused.defaults["fused"] and [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0]
    assert fused.defaults["betas"] == (0.9, 0.95)


def tiny_lm(num_classes=None) -> nn.Module:
    return TinyLM()


def test_loss_fn_without_a_dataset_is_refused():
    with pytest.raises(UsageError, match="loss_fn needs a dataset"):
        optimize(RunConfig(), loss_fn=lm_loss)
