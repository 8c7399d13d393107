"""model.py: building models, and proof that each piece of model surgery changes the computation."""
from __future__ import annotations

import copy
import sys
import time

import pytest
import torch
from torch import nn
from torchvision import models

from tests.conftest import tiny_convnet
from workbench.errors import StageSkipped, UsageError
from workbench.training.model import Checkpointed, apply_all, build_model, build_optimizer, wrap_checkpoints
from workbench.training.step import StepSettings, TrainStep

CPU = torch.device("cpu")
RESNET_BLOCKS = ["stem", "layer1", "layer2", "layer3", "layer4"]


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return models.resnet18(num_classes=10)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def activation_bytes_saved(model: nn.Module, inputs: torch.Tensor) -> int:
    """Bytes of distinct non-parameter storages autograd saves for backward during one forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(inputs)
    return sum(saved.values())


def _grads(model: nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(inputs).square().sum().backward()
    return [p.grad.clone() for p in model.parameters()]


# --- build_model and build_optimizer -------------------------------------------------------------

def test_build_torchvision_model_with_class_count():
    model = build_model("resnet18", num_classes=7)
    assert isinstance(model, models.ResNet)
    assert model.fc.out_features == 7


def test_unknown_model_name_is_usage_error():
    with pytest.raises(UsageError) as info:
        build_model("resnet19", 10)
    assert "'resnet19'" in str(info.value) and "module:function" in str(info.value)


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A module in the working folder with factories, imported by name the way a user would."""
    name = f"wb_factories_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text(
        "import torch.nn as nn\n"
        "def with_classes(num_classes): return nn.Linear(4, num_classes)\n"
        "def without_classes(): return nn.Linear(4, 3)\n"
        "def not_a_module(num_classes): return 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


def test_factory_with_and_without_class_count(factory_module):
    assert build_model(f"{factory_module}:with_classes", 5).out_features == 5
    assert build_model(f"{factory_module}:without_classes", 5).out_features == 3


@pytest.mark.parametrize("function", ["missing_function", "not_a_module"])
def test_bad_factory_is_usage_error(factory_module, function):
    with pytest.raises(UsageError, match=f"{factory_module}:{function}"):
        build_model(f"{factory_module}:{function}", 10)


def test_missing_factory_module_is_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(UsageError, match="no_such_module_xyz:build"):
        build_model("no_such_module_xyz:build", 10)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    optimizer = build_optimizer(name, nn.Linear(2, 2).parameters(), lr=0.01)
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["lr"] == 0.01


# --- activation checkpointing --------------------------------------------------------------------

def test_wrap_resnet_returns_its_blocks(resnet):
    assert wrap_checkpoints(resnet) == RESNET_BLOCKS
    assert isinstance(resnet.conv1, Checkpointed)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        assert isinstance(getattr(resnet, name), Checkpointed)
    assert all(isinstance(getattr(resnet, n), nn.Identity) for n in ("bn1", "relu", "maxpool"))


def test_checkpointing_saves_far_fewer_activation_bytes(resnet, images):
    plain = activation_bytes_saved(resnet, images)
    wrap_checkpoints(resnet)
    checkpointed = activation_bytes_saved(resnet, images)
    assert plain > 0
    assert checkpointed < 0.5 * plain, (checkpointed, plain)


def test_checkpointed_resnet_same_output_and_grads_in_eval(resnet, images):
    resnet.eval()  # BatchNorm uses running statistics: checkpointing must not change anything
    wrapped = copy.deepcopy(resnet)
    wrap_checkpoints(wrapped)
    with torch.no_grad():
        assert torch.allclose(resnet(images), wrapped(images), rtol=1e-5, atol=1e-6)
    assert torch.allclose(resnet(images), wrapped(images), rtol=1e-5, atol=1e-6)  # checkpoint path
    for g_plain, g_wrapped in zip(_grads(resnet, images), _grads(wrapped, images)):
        assert torch.allclose(g_plain, g_wrapped, rtol=1e-4, atol=1e-6)


def test_checkpointed_sequential_same_grads_in_train(images):
    torch.manual_seed(0)
    plain = tiny_convnet().train()
    wrapped = copy.deepcopy(plain)
    assert wrap_checkpoints(wrapped) == ["0-2", "3-5", "6"]  # about sqrt(7) segments of consecutive layers
    assert all(isinstance(child, Checkpointed) for child in wrapped.children())
    for g_plain, g_wrapped in zip(_grads(plain, images), _grads(wrapped, images)):
        assert torch.allclose(g_plain, g_wrapped, rtol=1e-5, atol=1e-7)


def test_checkpointed_sequential_of_blocks_saves_fewer_bytes(images):
    torch.manual_seed(0)
    flat = tiny_convnet()
    plain = nn.Sequential(flat[:4], flat[4:])
    wrapped = copy.deepcopy(plain)
    assert wrap_checkpoints(wrapped) == ["0", "1"]
    assert activation_bytes_saved(wrapped, images) < 0.75 * activation_bytes_saved(plain, images)


def test_checkpointed_flat_sequential_saves_fewer_bytes(images):
    torch.manual_seed(0)
    plain = tiny_convnet()
    wrapped = copy.deepcopy(plain)
    wrap_checkpoints(wrapped)
    assert activation_bytes_saved(wrapped, images) < activation_bytes_saved(plain, images)


def test_checkpointed_recomputes_in_backward():
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.calls = nn.Linear(4, 4), 0

        def forward(self, x):
            self.calls += 1
            return self.linear(x).relu()

    inner = Counting()
    Checkpointed(inner)(torch.randn(2, 4, requires_grad=True)).sum().backward()
    assert inner.calls == 2  # forward, then the recompute in backward
    with torch.no_grad():
        Checkpointed(inner)(torch.randn(2, 4))
    assert inner.calls == 3  # no_grad: a plain call, nothing to recompute


def test_wrap_features_and_vit():
    class WithFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
            self.head = nn.Linear(4, 2)

    assert wrap_checkpoints(WithFeatures()) == ["features.0", "features.1"]
    vit = models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                   hidden_dim=8, mlp_dim=16, num_classes=3)
    assert wrap_checkpoints(vit) == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    vit(torch.randn(1, 3, 16, 16)).sum().backward()


def test_nothing_to_wrap_is_stage_skipped():
    assert wrap_checkpoints(nn.Linear(3, 3)) == []
    with pytest.raises(StageSkipped, match="Linear"):
        apply_all(nn.Linear(3, 3), "contiguous", "blocks", "none", CPU)


# --- apply_all: memory format, then checkpoints, then compile ----------------------------------

def _conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]


def test_apply_all_channels_last_converts_conv_weights(resnet):
    assert not any(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(resnet))
    model, notes = apply_all(resnet, "channels_last", "none", "none", CPU)
    assert notes == {"natural_blocks": 5}  # what a selective checkpointing (blocks:K) chooses among
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(model))


def test_apply_all_contiguous_leaves_weights(resnet):
    model, _ = apply_all(resnet, "contiguous", "none", "none", CPU)
    assert all(w.is_contiguous() for w in _conv_weights(model))


def test_apply_all_order_format_then_checkpoints_then_compile(resnet):
    model, notes = apply_all(resnet, "channels_last", "blocks", "default", CPU)
    assert notes["checkpointed_blocks"] == RESNET_BLOCKS
    assert isinstance(model, torch._dynamo.eval_frame.OptimizedModule)  # compile is outermost
    inner = model._orig_mod
    assert isinstance(inner.layer1, Checkpointed)                     # wrappers inside compile
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(inner))


def test_channels_last_step_end_to_end(resnet, images):
    model, _ = apply_all(resnet, "channels_last", "none", "none", CPU)
    seen = []
    model.conv1.register_forward_hook(lambda module, inputs, output: seen.append(output))
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.01),
                     StepSettings(device=CPU, channels_last=True))
    loss = step(images, torch.tensor([1, 2]))
    assert torch.isfinite(loss)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_compile_builds_a_graph_and_matches_eager():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    compiled, _ = apply_all(copy.deepcopy(eager), "contiguous", "none", "default", CPU)
    inputs = torch.randn(4, 8)
    try:
        out = compiled(inputs)
        assert counters["stats"]["unique_graphs"] > 0
        assert torch.allclose(out, eager(inputs), rtol=1e-4, atol=1e-5)
    finally:
        torch._dynamo.reset()


def test_selective_checkpointing_wraps_the_first_blocks_only():
    import torchvision
    from workbench.config import RunConfig, checkpointed_blocks
    from workbench.errors import UsageError
    from workbench.training.model import Checkpointed, natural_block_count, wrap_checkpoints

    model = torchvision.models.resnet18(num_classes=10)
    assert natural_block_count(model) == 5
    assert wrap_checkpoints(model, "blocks:2") == ["stem", "layer1"]
    assert isinstance(model.conv1, Checkpointed) and isinstance(model.layer1, Checkpointed)
    assert not isinstance(model.layer2, Checkpointed)
    assert checkpointed_blocks("blocks:3") == 3 and checkpointed_blocks("blocks") is None and checkpointed_blocks("none") == 0
    for bad in ("blocks:0", "blocks:x", "some"):
        with pytest.raises(UsageError, match="blocks:K"):
            RunConfig(checkpointing=bad)
    import torch
    images = torch.randn(2, 3, 32, 32)
    torch.nn.functional.cross_entropy(model(images), torch.tensor([1, 2])).backward()  # still trains
