"""The model, its optimizer, and `apply_all`: the one function that fixes the order of model surgery."""
from __future__ import annotations

import importlib
import logging
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision import models

from workbench.config import checkpointed_blocks, optimizer_lr
from workbench.errors import StageSkipped, UsageError


def build_model(name: str, num_classes: int) -> nn.Module:
    """A torchvision classifier by name (random init: no weights download) or a user factory."""
    if ":" in name:
        return _from_factory(name, num_classes)
    available = models.list_models(module=models)
    if name not in available:
        raise UsageError(f"model={name!r} is not a torchvision classification model; allowed: "
                         f"{', '.join(sorted(available)[:12])}, ... or module:function")
    return models.get_model(name, weights=None, num_classes=num_classes)


def check_model_spec(name: str, num_classes: int = 10) -> None:
    """Fail early, with one line, on a model the workers could not build.

    A factory is called once here: one that raises or returns something other than an nn.Module
    would otherwise fail in every stage's worker with less to say.
    """
    if ":" in name:
        try:
            _from_factory(name, num_classes)
        except UsageError:
            raise
        except Exception as error:  # the user's code: whatever it raises is their one line
            raise UsageError(f"model={name!r} could not be built ({type(error).__name__}: "
                             f"{str(error).strip()[:200]}); allowed: a factory returning a torch.nn.Module") from None
    elif name not in models.list_models(module=models):
        build_model(name, 10)  # raises the UsageError that lists what is allowed


def _load_factory(spec: str):
    module_name, function_name = spec.split(":", 1)
    if str(Path.cwd()) not in sys.path:
        # Last, not first: `mymodels:build` is found in the working folder, but no file there can
        # shadow an installed module (the worker's import path leaves the working folder out).
        sys.path.append(str(Path.cwd()))
    try:
        return getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"model={spec!r} cannot be loaded ({error}); allowed: module:function "
                         "importable from the current folder") from None


def _from_factory(spec: str, num_classes: int) -> nn.Module:
    model = _call_factory(_load_factory(spec), num_classes)
    if not isinstance(model, nn.Module):
        raise UsageError(f"model={spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _call_factory(factory, num_classes: int):
    try:
        return factory(num_classes=num_classes)
    except TypeError:
        return factory()  # a factory without a class-count argument


def build_optimizer(name: str, params, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    # fused=None keeps torch's own default (foreach on CUDA, a per-parameter loop on a CPU).
    fused_arg = True if fused else None
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, fused=fused_arg)
    if name in ("adam8bit", "adamw8bit"):
        return _eight_bit(name, params, lr)
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=optimizer_lr(name, lr))
    optimizer_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return optimizer_class(params, lr=lr, fused=fused_arg)


def eight_bit_unavailable() -> str | None:
    """Why bitsandbytes' 8-bit optimizers cannot run here, or None."""
    # Its CPU backend warns at import that a 4-bit matmul kernel package is missing: we use no 4-bit op.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # ImportError, or a broken native library
        return (f"8-bit optimizer states need bitsandbytes ({type(error).__name__}: {error}); install it with "
                "pip install -c constraints.txt -e '.[memory]'")
    return None


def _eight_bit(name: str, params, lr: float) -> torch.optim.Optimizer:
    why = eight_bit_unavailable()
    if why:
        raise StageSkipped(why)
    import bitsandbytes as bnb

    # Adam8bit is Adam's update (no decoupled weight decay), AdamW8bit AdamW's with torch's default decay.
    if name == "adam8bit":
        return bnb.optim.Adam8bit(params, lr=lr, weight_decay=0.0)
    return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=1e-2)


class Checkpointed(nn.Module):
    """Recompute `inner`'s activations in backward instead of keeping them (non-reentrant).

    With BatchNorm in train mode the recompute updates the running statistics a second time
    (pytorch issue 96136): timing and memory are unaffected, the statistics drift slightly.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        if not torch.is_grad_enabled():
            return self.inner(*args)
        return checkpoint(self.inner, *args, use_reentrant=False)


def _wrap_resnet(model: nn.Module, limit: int | None = None) -> list[str]:
    # The stem runs as four separate calls in ResNet.forward, so it becomes one checkpointed
    # Sequential in conv1's place and the other three become identities.
    names = ["stem", "layer1", "layer2", "layer3", "layer4"][:limit]
    if "stem" in names:
        model.conv1 = Checkpointed(nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool))
        model.bn1, model.relu, model.maxpool = nn.Identity(), nn.Identity(), nn.Identity()
    for name in names[1:]:
        setattr(model, name, Checkpointed(getattr(model, name)))
    return names


def _wrap_children(container: nn.Module, prefix: str, limit: int | None = None) -> list[str]:
    """Checkpoint each child: for containers whose children are whole blocks (ViT encoder layers)."""
    names = []
    for name, child in list(container.named_children())[:limit]:
        setattr(container, name, Checkpointed(child))
        names.append(f"{prefix}{name}")
    return names


def _wrap_segments(sequential: nn.Sequential, prefix: str, limit: int | None = None) -> list[str]:
    """Checkpoint about sqrt(n) runs of consecutive children, as checkpoint_sequential does.

    One checkpoint per single layer would keep every layer's input and free nothing (more memory,
    not less); segments keep only the segment boundaries and recompute the inside.
    """
    children = list(sequential.named_children())
    size = max(1, math.ceil(len(children) / math.ceil(math.sqrt(len(children)))))
    segments = [children[i:i + size] for i in range(0, len(children), size)]
    for name, _ in children:
        delattr(sequential, name)
    names = []
    for index, segment in enumerate(segments):
        run = nn.Sequential(*(module for _, module in segment))
        wrapped = limit is None or index < limit
        sequential.add_module(str(index), Checkpointed(run) if wrapped else run)
        if wrapped:
            names.append(f"{prefix}{segment[0][0]}-{segment[-1][0]}" if len(segment) > 1 else f"{prefix}{segment[0][0]}")
    return names


def natural_block_count(model: nn.Module) -> int:
    """How many natural blocks wrap_checkpoints would find (without wrapping anything): what a
    selective checkpointing (blocks:K) chooses among."""
    if isinstance(model, models.ResNet):
        return 5
    if isinstance(model, models.VisionTransformer):
        return len(model.encoder.layers)
    sequential = getattr(model, "features", None) if not isinstance(model, nn.Sequential) else model
    if not isinstance(sequential, nn.Sequential) or not len(sequential):
        return 0
    size = max(1, math.ceil(len(sequential) / math.ceil(math.sqrt(len(sequential)))))
    return math.ceil(len(sequential) / size)


def wrap_checkpoints(model: nn.Module, limit: int | None = None) -> list[str]:
    """Checkpoint the model's natural blocks (the first `limit` of them, in order; None: all); return
    what was wrapped (empty: nothing to wrap)."""
    if isinstance(model, models.ResNet):
        return _wrap_resnet(model, limit)
    if isinstance(model, models.VisionTransformer):
        return _wrap_children(model.encoder.layers, "encoder.layers.", limit)
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return _wrap_segments(features, "features.", limit)
    if isinstance(model, nn.Sequential):
        return _wrap_segments(model, "", limit)
    return []


def natural_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's natural blocks as modules (after any checkpoint wrapping): FSDP shards each on its own."""
    if isinstance(model, models.ResNet):
        return [model.layer1, model.layer2, model.layer3, model.layer4]
    if isinstance(model, models.VisionTransformer):
        return list(model.encoder.layers)
    features = getattr(model, "features", None)
    return list(features) if isinstance(features, nn.Sequential) else []


def apply_all(model: nn.Module, memory_format: str, checkpointing: str, compile_mode: str,
              device: torch.device, distribute=None) -> tuple[nn.Module, dict]:
    """Apply every model-side optimization in the one order that works; return model and notes.

    Order matters: the memory format must be set on the real parameters before anything wraps
    them; checkpoint wrappers go in before compile so dynamo traces through them (compiling first
    and wrapping after would checkpoint opaque compiled code); compile comes last and sees the
    final module.
    """
    notes: dict = {"natural_blocks": natural_block_count(model)}
    model = model.to(device)
    if memory_format == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    if checkpointing != "none":
        wrapped = wrap_checkpoints(model, checkpointed_blocks(checkpointing))
        if not wrapped:
            raise StageSkipped(f"checkpointing=blocks: no natural blocks found in {type(model).__name__}; "
                             "supported: ResNets, ViTs, models with a Sequential 'features', nn.Sequential")
        notes["checkpointed_blocks"] = wrapped
    if distribute is not None:
        model = distribute(model)
    if compile_mode != "none":
        if device.type == "cpu":
            quiet_cuda_home_warning()
        model = torch.compile(model, mode=compile_mode)
    return model, notes


def quiet_cuda_home_warning() -> None:
    """Inductor's C++ build on a CPU looks for CUDA too; a CUDA build of torch on a machine without
    the CUDA runtime then warns "No CUDA runtime is found, using CUDA_HOME=..." once per process,
    that is once per compile round, in the ladder's progress. Nothing on a CPU needs CUDA_HOME."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
