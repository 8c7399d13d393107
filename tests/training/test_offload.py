"""The optimizer state in host memory: the same update as the plain optimizer (checked on a CPU, where
the copies are real tensors too), the device's state counted as none, and the stage offered on CUDA only."""
from __future__ import annotations

import pytest
import torch

from workbench.config import RunConfig, check_device_support
from workbench.device import Capabilities
from workbench.errors import StageSkipped, UsageError
from workbench.measure.clocks import memory_parts_mb
from workbench.memory_model import Parts, predict
from workbench.run import budget, stages
from workbench.run.stages import StageContext
from workbench.training.offload import HostOffloaded

CUDA_BF16 = Capabilities("bf16", "native", True, True, True, True)


def model_and_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    return model, torch.randn(32, 8), torch.randint(0, 3, (32,))


def train(model, optimizer, x, y, steps: int = 3) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_offloaded_steps_update_the_weights_as_the_plain_optimizer_does():
    plain, x, y = model_and_batch()
    offloaded, _, _ = model_and_batch()
    expected = train(plain, torch.optim.Adam(plain.parameters(), lr=1e-2), x, y)
    optimizer = HostOffloaded(offloaded.parameters(), lambda params: torch.optim.Adam(params, lr=1e-2))
    assert train(offloaded, optimizer, x, y) == pytest.approx(expected, abs=0)
    for a, b in zip(plain.parameters(), offloaded.parameters()):
        assert torch.equal(a, b) and b.grad is None
    # the state belongs to the host copies, not to the model's parameters
    held = {id(p) for p in optimizer.optimizer.state}
    assert held == {id(p) for p in optimizer.host} and not held & {id(p) for p in offloaded.parameters()}
    optimizer.param_groups[0]["lr"] = 0.0  # a schedule sets the rate where the step reads it
    before = [p.detach().clone() for p in offloaded.parameters()]
    train(offloaded, optimizer, x, y, steps=1)
    assert all(torch.equal(a, b) for a, b in zip(before, offloaded.parameters()))


def test_the_breakdown_counts_only_the_state_on_the_models_device():
    model, x, y = model_and_batch()
    optimizer = torch.optim.Adam(model.parameters())
    train(model, optimizer, x, y, steps=1)
    assert memory_parts_mb(model, optimizer)["optimizer_state"] > 0
    for state in optimizer.state.values():  # as if it lived elsewhere (host memory, for a CUDA model)
        for key, value in state.items():
            state[key] = value.to("meta")
    assert memory_parts_mb(model, optimizer)["optimizer_state"] == 0


def test_offloading_is_a_cuda_move():
    cfg = RunConfig()
    with pytest.raises(StageSkipped, match="host memory already"):
        stages.optimizer_offload(cfg, StageContext("cpu", CUDA_BF16))
    assert stages.optimizer_offload(cfg, StageContext("cuda", CUDA_BF16)).offload_optimizer
    with pytest.raises(StageSkipped, match="fp16"):
        stages.optimizer_offload(cfg.with_overrides(precision="fp16"), StageContext("cuda", CUDA_BF16))
    with pytest.raises(UsageError, match="offload_optimizer=True .* allowed: on a CUDA device"):
        check_device_support(cfg.with_overrides(offload_optimizer=True), "cpu")
    with pytest.raises(UsageError, match="sharding='zero1'"):
        cfg.with_overrides(offload_optimizer=True, sharding="zero1")


def test_the_budget_predicts_offloading_frees_the_whole_state():
    parts = Parts(weights=98.0, gradients=98.0, optimizer_state=195.0, activations=100.0)
    base = RunConfig(batch_size=32).to_dict()
    prediction = predict(parts, 491.0, base, {**base, "offload_optimizer": True})
    assert prediction.saving_mib == pytest.approx(195.0) and "in host memory" in prediction.basis
    from workbench.memory_model import Basis
    basis = Basis(parts, 491.0, base, {})
    names = [m.name for m in budget.moves(RunConfig(batch_size=32), basis, StageContext("cuda", CUDA_BF16), 300.0, False)]
    assert "offload" in names
    assert "offload" not in [m.name for m in budget.moves(RunConfig(batch_size=32), basis, StageContext("cpu", CUDA_BF16),
                                                         300.0, False)]
