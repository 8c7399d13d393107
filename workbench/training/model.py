"""The model, its optimizer, and `apply_all`: the one function that fixes the order of model surgery."""
from __future__ import annotations

import importlib
import inspect
import logging
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision import models

from workbench.config import CPU_TOKEN_DEFAULTS, checkpoint_picks, optimizer_lr
from workbench.training import attention, gpt, language
from workbench.errors import StageSkipped, UsageError

DEFAULT_SEQ_LEN = CPU_TOKEN_DEFAULTS["seq_len"]


def build_model(name: str, num_classes: int, seq_len: int = 0, loss_chunks: int = 1) -> nn.Module:
    """A torchvision classifier by name (random init: no weights download), a built-in GPT, or a user
    factory. For a language model (seq_len > 0) num_classes is the data's vocabulary; loss_chunks > 1
    (the built-in GPT only) computes its loss a slice of the sequence at a time."""
    if ":" in name:
        return _from_factory(name, num_classes, seq_len)
    if gpt.is_builtin(name):
        return gpt.build_gpt(name, num_classes, seq_len or DEFAULT_SEQ_LEN, loss_chunks)
    available = models.list_models(module=models)
    if name not in available:
        raise UsageError(f"model={name!r} is not a torchvision classification model; allowed: "
                         f"{', '.join(sorted(available)[:12])}, ... or module:function")
    return models.get_model(name, weights=None, num_classes=num_classes)


def check_model_spec(name: str, num_classes: int = 10, seq_len: int = 0) -> nn.Module | None:
    """Fail early, with one line, on a model the workers could not build; return a factory's model.

    A factory is called once here: one that raises or returns something other than an nn.Module
    would otherwise fail in every stage's worker with less to say.
    """
    if ":" in name:
        try:
            return _from_factory(name, num_classes, seq_len)
        except UsageError:
            raise
        except Exception as error:  # the user's code: whatever it raises is their one line
            raise UsageError(f"model={name!r} could not be built ({type(error).__name__}: "
                             f"{str(error).strip()[:200]}); allowed: a factory returning a torch.nn.Module") from None
    if not gpt.is_builtin(name) and name not in models.list_models(module=models):
        build_model(name, 10)  # raises the UsageError that lists what is allowed
    return None


def first_batch_facts(name: str, spec) -> dict:
    """Build the model once and feed it two samples of the data (a DataSpec); return what the stages ask
    of it: convolutions, natural blocks, attention. A model and data that do not fit together fail here,
    with one line saying what was fed and what the model wanted, not in every stage's worker."""
    model = check_model_spec(name, spec.num_classes, spec.tokens_per_sample)
    if model is None:
        model = build_model(name, spec.num_classes, spec.tokens_per_sample)
    first = torch.utils.data.default_collate([spec.dataset[i] for i in range(min(2, len(spec.dataset)))])
    vocab = []
    check = (lambda: vocab.append(language.check_first_batch(model, *first, name))) if spec.tokens_per_sample else (
        lambda: _check_image_batch(model, first[0], spec.num_classes, name))
    facts = attention.attention_facts(check)
    if vocab and vocab[0]:
        facts["vocab"] = vocab[0]
    blocks = repeated_blocks(model) if _layout(model)[0] == "children" else None
    return {**facts, "convolutions": any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()),
            "batchnorm": any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
            "natural_blocks": natural_block_count(model),
            **({"blocks_found": f"{blocks[0]}0..{len(blocks[1]) - 1} ({type(blocks[1][0]).__name__})"} if blocks else {})}


def _check_image_batch(model: nn.Module, images: torch.Tensor, num_classes: int, name: str) -> None:
    try:
        with torch.no_grad():
            logits = model(images)
    except Exception as error:  # the user's code: whatever it raises is their one line
        raise UsageError(f"model={name!r} cannot train on the first batch: fed images {tuple(images.shape)} "
                         f"{str(images.dtype).replace('torch.', '')} with class labels; it raised "
                         f"{type(error).__name__}: {str(error).strip()[:200]}; allowed: forward(images) -> logits "
                         "(batch, classes), or for a language model --data tokens or tokens:PATH") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < num_classes:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UsageError(f"model={name!r} returned {shape} for images {tuple(images.shape)}; allowed: logits "
                         f"(batch, classes) with at least the data's {num_classes} classes")


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


def _from_factory(spec: str, num_classes: int, seq_len: int = 0) -> nn.Module:
    model = _call_factory(_load_factory(spec), num_classes, seq_len)
    if not isinstance(model, nn.Module):
        raise UsageError(f"model={spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _call_factory(factory, num_classes: int, seq_len: int = 0):
    """factory(num_classes=...), or for a language model factory(vocab_size=...), where it takes that
    argument; factory() otherwise (a model that fixes its own output size)."""
    size = {"vocab_size": num_classes} if seq_len else {"num_classes": num_classes}
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes = next(iter(size)) in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    return factory(**size) if takes else factory()


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

    Keyword arguments pass through (a transformer layer's mask), and attributes the wrapper lacks are
    looked up on `inner` (nn.TransformerEncoder reads its first layer's `self_attn`).
    With BatchNorm in train mode the recompute updates the running statistics a second time
    (pytorch issue 96136): timing and memory are unaffected, the statistics drift slightly.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.inner(*args, **kwargs)
        return checkpoint(self.inner, *args, use_reentrant=False, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Read through __dict__: while a copy or unpickling builds the object, there is no inner yet.
            inner = self.__dict__.get("_modules", {}).get("inner")
            if inner is None:
                raise
            return getattr(inner, name)


def _wrap_resnet(model: nn.Module, picks: list[int]) -> list[str]:
    # The stem runs as four separate calls in ResNet.forward, so it becomes one checkpointed
    # Sequential in conv1's place and the other three become identities.
    names = [name for index, name in enumerate(["stem", "layer1", "layer2", "layer3", "layer4"]) if index in picks]
    if "stem" in names:
        model.conv1 = Checkpointed(nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool))
        model.bn1, model.relu, model.maxpool = nn.Identity(), nn.Identity(), nn.Identity()
    for name in names:
        if name != "stem":
            setattr(model, name, Checkpointed(getattr(model, name)))
    return names


def _wrap_children(container: nn.Module, prefix: str, picks: list[int]) -> list[str]:
    """Checkpoint each picked child: for containers whose children are whole blocks (transformer layers)."""
    names = []
    for index, (name, child) in enumerate(list(container.named_children())):
        if index in picks:
            setattr(container, name, Checkpointed(child))
            names.append(f"{prefix}{name}")
    return names


def _segment_size(count: int) -> int:
    return max(1, math.ceil(count / math.ceil(math.sqrt(count))))


def _wrap_segments(sequential: nn.Sequential, prefix: str, picks: list[int]) -> list[str]:
    """Checkpoint about sqrt(n) runs of consecutive children, as checkpoint_sequential does.

    One checkpoint per single layer would keep every layer's input and free nothing (more memory,
    not less); segments keep only the segment boundaries and recompute the inside.
    """
    children = list(sequential.named_children())
    size = _segment_size(len(children))
    segments = [children[i:i + size] for i in range(0, len(children), size)]
    for name, _ in children:
        delattr(sequential, name)
    names = []
    for index, segment in enumerate(segments):
        run = nn.Sequential(*(module for _, module in segment))
        wrapped = index in picks
        sequential.add_module(str(index), Checkpointed(run) if wrapped else run)
        if wrapped:
            names.append(f"{prefix}{segment[0][0]}-{segment[-1][0]}" if len(segment) > 1 else f"{prefix}{segment[0][0]}")
    return names


def repeated_blocks(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The model's list of repeated blocks, wherever it lives: the ModuleList or Sequential of two or
    more children of one class holding the most parameters (nanoGPT's transformer.h, Hugging Face's
    model.layers, nn.TransformerEncoder.layers). Its name (with a trailing dot) and the container."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        kinds = {type(child.inner) if isinstance(child, Checkpointed) else type(child) for child in module}
        if len(kinds) != 1 or next(iter(kinds)) in LEAF_KINDS:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (f"{name}." if name else "", module), size
    return best


# Containers of these are layers in a row (an MLP's Linears), not blocks worth a checkpoint each.
LEAF_KINDS = (nn.Linear, nn.Conv2d, nn.ReLU, nn.GELU, nn.Dropout, nn.LayerNorm, nn.BatchNorm2d, nn.Identity)


def _layout(model: nn.Module) -> tuple[str, object, str, int]:
    """How a model's natural blocks are found: (kind, container, prefix, count)."""
    if isinstance(model, models.ResNet):
        return "resnet", model, "", 5
    if isinstance(model, models.VisionTransformer):
        return "children", model.encoder.layers, "encoder.layers.", len(model.encoder.layers)
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and len(features):
        return "segments", features, "features.", math.ceil(len(features) / _segment_size(len(features)))
    if isinstance(model, nn.Sequential) and len(model):
        return "segments", model, "", math.ceil(len(model) / _segment_size(len(model)))
    found = repeated_blocks(model)
    if found:
        return "children", found[1], found[0], len(found[1])
    return "none", None, "", 0


def natural_block_count(model: nn.Module) -> int:
    """How many natural blocks wrap_checkpoints would find (without wrapping anything): what a
    selective checkpointing (blocks:K, every:K) chooses among."""
    return _layout(model)[3]


def wrap_checkpoints(model: nn.Module, mode: str = "blocks") -> list[str]:
    """Checkpoint the model's natural blocks that the mode picks (blocks: all; blocks:K: the first K;
    every:K: every K-th); return what was wrapped (empty: nothing to wrap)."""
    kind, container, prefix, count = _layout(model)
    picks = checkpoint_picks(mode, count)
    if kind == "resnet":
        return _wrap_resnet(model, picks)
    if kind == "children":
        return _wrap_children(container, prefix, picks)
    if kind == "segments":
        return _wrap_segments(container, prefix, picks)
    return []


def _block_parts(model: nn.Module) -> list[list[nn.Module]]:
    """Each natural block as the modules that run in it (before any wrapping), in wrap_checkpoints' order."""
    kind, container, _, count = _layout(model)
    if kind == "resnet":
        return [[model.conv1, model.bn1, model.relu, model.maxpool],
                *([getattr(model, name)] for name in ("layer1", "layer2", "layer3", "layer4"))]
    children = list(container.children()) if container is not None else []
    if kind == "segments":
        size = _segment_size(len(children))
        return [children[i:i + size] for i in range(0, len(children), size)]
    return [[child] for child in children]


def block_activation_shares(model: nn.Module, run_forward) -> list[float] | None:
    """Each natural block's share of the activations the blocks keep for backward (the bytes its layers
    output in one forward: run_forward()), for predicting a selective checkpointing's saving; None without
    blocks. A CNN's first blocks keep most: counting blocks evenly would predict blocks:K's saving low."""
    parts = _block_parts(model)
    if not parts:
        return None
    sizes = [0] * len(parts)

    def counter(index: int):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                sizes[index] += output.numel() * output.element_size()
        return hook

    handles = [leaf.register_forward_hook(counter(index)) for index, modules in enumerate(parts)
               for module in modules for leaf in module.modules() if not list(leaf.children())]
    try:
        run_forward()
    finally:
        for handle in handles:
            handle.remove()
    total = sum(sizes)
    return [size / total for size in sizes] if total else None


def block_parameter_shares(model: nn.Module) -> list[float] | None:
    """Each natural block's share of the trainable parameters (what is left is outside the blocks: a
    head, embeddings); with the activation shares, the memory model walks backward block by block,
    whose gradients appear as it goes. None without blocks. Counts shapes only: meta models too."""
    parts = _block_parts(model)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not parts or not total:
        return None
    # A parameter shared by several modules (tied weights) is counted once, in the first block holding it.
    seen: set[int] = set()
    sizes = []
    for modules in parts:
        own = [p for m in modules for p in m.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in own)
        sizes.append(sum({id(p): p.numel() for p in own}.values()))
    return [size / total for size in sizes]


def natural_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's natural blocks as modules (after any checkpoint wrapping): FSDP shards each on its own."""
    if isinstance(model, models.ResNet):
        return [model.layer1, model.layer2, model.layer3, model.layer4]
    kind, container, _, _ = _layout(model)
    if kind == "children":
        return list(container)
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
        wrapped = wrap_checkpoints(model, checkpointing)
        if not wrapped:
            raise StageSkipped(f"checkpointing={checkpointing}: no natural blocks found in {type(model).__name__}; "
                               "supported: ResNets, ViTs, models with a Sequential 'features', nn.Sequential, and "
                               "any model with a ModuleList or Sequential of repeated blocks (transformer layers)")
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
