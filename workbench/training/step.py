"""One training step, with every optimization as an object that is a no-op when disabled.

The step has no feature branches: autocast with enabled=False, a GradScaler with enabled=False,
one micro-batch when there is no accumulation, nullcontext regions when nobody is tracing.

Any batch structure trains: a loss_fn(model, batch) -> scalar loss turns a batch (a tensor, a tuple,
a dict, nested) into the loss; the default is the image classifier's cross-entropy on (images, labels).
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.profiler import record_function

# The region names are the trace analysis's: defined once, in the torch-free trace package.
from workbench.trace import regions
from workbench.training import attention

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LossFn = Callable[[nn.Module, Any], torch.Tensor]


def classification_loss(model: nn.Module, batch) -> torch.Tensor:
    """The built-in loss: cross-entropy of the model's logits on an (images, labels) batch."""
    images, labels = batch
    return nn.functional.cross_entropy(model(images), labels)


def _rebuild(like, items: list):
    if isinstance(like, Mapping):
        return type(like)(zip(like.keys(), items)) if type(like) is not dict else dict(zip(like.keys(), items))
    if hasattr(like, "_fields"):  # a namedtuple takes its fields as arguments
        return type(like)(*items)
    return type(like)(items)


def map_tensors(batch, fn: Callable[[torch.Tensor], Any]):
    """fn applied to every tensor of a nested batch (tuples, lists, dicts, namedtuples); the rest kept."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return _rebuild(batch, [map_tensors(v, fn) for v in batch.values()])
    if isinstance(batch, (tuple, list)):
        return _rebuild(batch, [map_tensors(v, fn) for v in batch])
    return batch


def split_batch(batch, parts: int) -> list:
    """A nested batch cut into `parts` micro-batches along dim 0 (non-tensors repeated)."""
    if parts == 1:
        return [batch]
    if isinstance(batch, torch.Tensor):
        return list(batch.chunk(parts))
    children = list(batch.values()) if isinstance(batch, Mapping) else batch
    if not isinstance(batch, (Mapping, tuple, list)):
        return [batch] * parts
    columns = [split_batch(child, parts) for child in children]
    return [_rebuild(batch, [column[i] for column in columns]) for i in range(min(map(len, columns), default=0))]


class UserTask(torch.utils.data.Dataset):
    """A user's dataset and how one of its batches becomes a loss: loss_fn(model, batch) -> scalar.

    It is the dataset the ladder loads (so worker sweeps and fresh loaders see the same items) and
    carries the loss to the step; `classes`, where the dataset has them, pass through.
    """

    def __init__(self, dataset, loss_fn: LossFn | None = None) -> None:
        self.dataset, self.loss_fn = dataset, loss_fn
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


def region(name: str, annotate: bool):
    """A named profiler range while tracing; nothing at all in timed passes."""
    return record_function(name) if annotate else nullcontext()


@dataclass
class StepSettings:
    device: torch.device
    precision: str = "fp32"
    accumulation_steps: int = 1
    channels_last: bool = False
    non_blocking: bool = False
    clip_grad_norm: float | None = None
    # Augmentation that runs on the device after the copy (the batched input pipelines), or None.
    device_transform: Callable[[Any], torch.Tensor] | None = None
    # The transform takes the images as the loader gave them and puts them on the device itself
    # (decode_on_device: decode_jpeg reads the files' bytes from host memory); labels still move.
    transform_moves_images: bool = False
    # The SDPA backend forward and backward run under ("auto": SDPA's own pick). Backward too: a
    # checkpointed block recomputes its attention there, and must pick what the forward picked.
    attention: str = "auto"


class TrainStep:
    """Forward, backward and optimizer step over one (possibly accumulated) batch."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, settings: StepSettings,
                 loss_fn: LossFn | None = None) -> None:
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.loss_fn = loss_fn or classification_loss
        device_type = settings.device.type
        dtype = AMP_DTYPES.get(settings.precision, torch.float32)
        self.autocast = lambda: torch.amp.autocast(device_type, dtype=dtype, enabled=settings.precision != "fp32")
        # Loss scaling exists for fp16 only: small fp16 gradients underflow; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(device_type, enabled=settings.precision == "fp16")
        self.annotate = False
        # DDP's no_sync, looked up once: on a compiled wrapper a missing attribute costs an exception.
        self._no_sync = getattr(model, "no_sync", None)

    def _move(self, tensor: torch.Tensor) -> torch.Tensor:
        # channels_last applies to image batches (4-D floating point) only; tokens and labels stay as they are.
        image = self.settings.channels_last and tensor.dim() == 4 and tensor.is_floating_point()
        fmt = torch.channels_last if image else torch.contiguous_format
        return tensor.to(self.settings.device, non_blocking=self.settings.non_blocking, memory_format=fmt)

    def move(self, batch):
        """Every tensor of a nested batch on the step's device (augmented there by the batched pipeline)."""
        with region(regions.HOST_TO_DEVICE, self.annotate):
            if self.settings.transform_moves_images:
                images, labels = batch
                return self._augment((images, self._move(labels)))
            return self._augment(map_tensors(batch, self._move))

    def _augment(self, batch):
        """The batched input pipelines: (images, labels) decoded where needed, cropped, flipped and
        normalized on the device."""
        transform = self.settings.device_transform
        if transform is None:
            return batch
        images, labels = batch
        fmt = torch.channels_last if self.settings.channels_last else torch.contiguous_format
        return transform(images).contiguous(memory_format=fmt), labels

    def prepare(self, inputs, targets=None):
        """(inputs, targets), or a whole batch `inputs` when targets is None, on the device."""
        return self.move(inputs if targets is None else (inputs, targets))

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.move((images, labels))

    def __call__(self, inputs, targets=None) -> torch.Tensor:
        """One optimizer step on (inputs, targets), or on a whole batch `inputs` when targets is None
        (BatchStream(whole=True) yields (batch, None)); returns the mean loss, detached (no sync)."""
        return self.train_on(self.prepare(inputs, targets))

    def train_on(self, batch) -> torch.Tensor:
        """One optimizer step on a batch already on the device (the compute-only ceiling reuses one)."""
        steps = self.settings.accumulation_steps
        total = torch.zeros((), device=self.settings.device)
        chunks = split_batch(batch, steps)
        for index, micro_batch in enumerate(chunks):
            with self._sync_gradients(last=index == len(chunks) - 1):
                total += self._forward_backward(micro_batch, steps)
        self._optimizer_step()
        return total

    def _sync_gradients(self, last: bool):
        """Under DDP, all-reduce once per optimizer step (on the last micro-batch), not per micro-batch."""
        return nullcontext() if last or self._no_sync is None else self._no_sync()

    def _forward_backward(self, batch, steps: int) -> torch.Tensor:
        with attention.kernel(self.settings.attention):
            with region(regions.FORWARD, self.annotate), self.autocast():
                # Divide by the micro-batch count so the summed gradients equal the full batch's mean.
                loss = self.loss_fn(self.model, batch) / steps
            with region(regions.BACKWARD, self.annotate):
                self.scaler.scale(loss).backward()
        return loss.detach()

    def _optimizer_step(self) -> None:
        with region(regions.OPTIMIZER_STEP, self.annotate):
            if self.settings.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)


class BatchStream:
    """Endless batches from a DataLoader (a new epoch starts when one ends).

    whole=True yields (batch, None): a user's batch of any structure travels to TrainStep in one piece.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, whole: bool = False) -> None:
        self.loader, self.iterator, self.epochs, self.whole = loader, iter(loader), 0, whole

    def next(self, annotate: bool = False):
        batch = self._fetch(annotate)
        return (batch, None) if self.whole else batch

    def _fetch(self, annotate: bool):
        with region(regions.DATA_LOADING, annotate):
            try:
                return next(self.iterator)
            except StopIteration:
                self.epochs += 1
                if hasattr(self.loader.sampler, "set_epoch"):  # DistributedSampler: a new shuffle per epoch
                    self.loader.sampler.set_epoch(self.epochs)
                self.iterator = iter(self.loader)
                return next(self.iterator)
