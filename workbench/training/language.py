"""The contract a causal language model meets, and the loss the workbench trains it with.

Any of these forwards is accepted, as the code people bring writes them:
- `forward(ids)` returning logits (batch, seq_len, vocab), or an object with `.logits` (Hugging Face), or a
  tuple whose first item is the logits;
- `forward(ids, targets)` returning `(logits, loss)` (nanoGPT, minGPT): the model's own loss is used.
The batch is (ids, targets), targets being ids shifted by one (workbench/training/tokens.py); the loss is
the mean next-token cross-entropy.
"""
from __future__ import annotations

import functools
import inspect

import torch
from torch import nn
from torch.nn import functional as F

from workbench.errors import UsageError

# The second forward parameter under which a model takes the targets and computes its own loss.
TARGET_PARAMETERS = ("targets", "target", "y")
CONTRACT = ("forward(ids) -> logits (batch, seq_len, vocab) or an object with .logits, or forward(ids, targets) "
            "-> (logits, loss)")


def unwrapped(model: nn.Module) -> nn.Module:
    """The user's module under torch.compile's and DDP's wrappers (whose forward takes *args)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner


def takes_targets(model: nn.Module) -> bool:
    """Whether forward's second parameter is the targets (nanoGPT's forward(idx, targets=None))."""
    return _forward_takes_targets(type(unwrapped(model)))


@functools.lru_cache(maxsize=None)
def _forward_takes_targets(kind: type) -> bool:
    # Read once per class: the loss asks on every micro-batch of the timed step.
    try:
        parameters = list(inspect.signature(kind.forward).parameters.values())[1:]  # past self
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 and positional[1].name in TARGET_PARAMETERS


def logits_of(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the model returned {type(output).__name__}, with no logits in it")


def own_loss(output) -> torch.Tensor | None:
    """The loss a (logits, loss) forward computed, or None."""
    if isinstance(output, (tuple, list)) and len(output) >= 2 and isinstance(output[1], torch.Tensor) \
            and output[1].dim() == 0:
        return output[1]
    loss = getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) and loss.dim() == 0 else None


def forward(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor):
    return model(ids, targets) if takes_targets(model) else model(ids)


def language_model_loss(model: nn.Module, batch) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch (ids, targets): the model's own where it computes one."""
    ids, targets = batch
    output = forward(model, ids, targets)
    loss = own_loss(output)
    if loss is not None:
        return loss
    logits = logits_of(output)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def next_token_correct(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(correct, counted) next-token predictions: the held-out accuracy of a language model."""
    logits = logits_of(forward(model, ids, targets))
    return int((logits.argmax(-1) == targets).sum()), targets.numel()


def check_first_batch(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor, spec: str) -> int | None:
    """One forward and loss on the first batch: a model and data that do not fit together get one line
    saying what was fed and what the model did, before any stage runs."""
    fed = (f"fed ids {tuple(ids.shape)} int64 (token windows) and targets of the same shape, ids up to "
           f"{int(ids.max())}")
    largest = int(max(ids.max(), targets.max()))
    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if embedding is not None and embedding.num_embeddings <= largest:
        raise UsageError(f"model={spec!r} has a token embedding of {embedding.num_embeddings} rows, but the data holds "
                         f"ids up to {largest}; allowed: a vocabulary of at least {largest + 1} (a factory taking "
                         "vocab_size gets the data's)")
    try:
        with torch.no_grad():
            output = forward(model, ids, targets)
            loss = own_loss(output)
            logits = logits_of(output) if loss is None else None
            vocab = logits_of(output).shape[-1] if loss is not None and _has_logits(output) else None
    except Exception as error:  # the user's code: whatever it raises is their one line
        raise UsageError(f"model={spec!r} cannot train on the first batch: {fed}; it raised {type(error).__name__}: "
                         f"{str(error).strip()[:200]}; allowed: {CONTRACT}") from None
    if logits is None:
        return vocab
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
        raise UsageError(f"model={spec!r} returned logits of shape {tuple(logits.shape)} for {fed}; allowed: "
                         f"{CONTRACT} (one row of logits per position)")
    if logits.shape[-1] <= largest:
        raise UsageError(f"model={spec!r} has {logits.shape[-1]} logits per position, but the data holds ids up to "
                         f"{largest}; allowed: a vocabulary of at least {largest + 1}")
    return logits.shape[-1]


def _has_logits(output) -> bool:
    try:
        return logits_of(output).dim() == 3
    except TypeError:
        return False
