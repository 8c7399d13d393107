"""One training step, with every optimization as an object that is a no-op when disabled.

The step has no feature branches: autocast with enabled=False, a GradScaler with enabled=False,
one micro-batch when there is no accumulation, nullcontext regions when nobody is tracing.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.profiler import record_function

# Region names the trace analysis looks for (workbench.analyze.REGIONS holds the same names).
DATA_REGION, COPY_REGION = "data_loading", "host_to_device"
FORWARD_REGION, BACKWARD_REGION, OPTIMIZER_REGION = "forward", "backward", "optimizer_step"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    # Augmentation that runs on the device after the copy (the batched input pipeline), or None.
    device_transform: Callable[[torch.Tensor], torch.Tensor] | None = None


class TrainStep:
    """Forward, backward and optimizer step over one (possibly accumulated) batch."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, settings: StepSettings) -> None:
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.loss_fn = nn.CrossEntropyLoss()
        device_type = settings.device.type
        dtype = AMP_DTYPES.get(settings.precision, torch.float32)
        self.autocast = lambda: torch.amp.autocast(device_type, dtype=dtype, enabled=settings.precision != "fp32")
        # Loss scaling exists for fp16 only: small fp16 gradients underflow; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(device_type, enabled=settings.precision == "fp16")
        self.annotate = False
        # DDP's no_sync, looked up once: on a compiled wrapper a missing attribute costs an exception.
        self._no_sync = getattr(model, "no_sync", None)

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with region(COPY_REGION, self.annotate):
            fmt = torch.channels_last if self.settings.channels_last else torch.contiguous_format
            transform = self.settings.device_transform
            if transform is None:
                images = images.to(self.settings.device, non_blocking=self.settings.non_blocking, memory_format=fmt)
            else:
                images = transform(images.to(self.settings.device, non_blocking=self.settings.non_blocking))
                images = images.contiguous(memory_format=fmt)
            return images, labels.to(self.settings.device, non_blocking=self.settings.non_blocking)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the batch's mean loss as a detached tensor (no sync)."""
        return self.train_on(*self.to_device(images, labels))

    def train_on(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a batch already on the device (and augmented)."""
        steps = self.settings.accumulation_steps
        total = torch.zeros((), device=self.settings.device)
        chunks = list(zip(images.chunk(steps), labels.chunk(steps)))
        for index, (micro_images, micro_labels) in enumerate(chunks):
            with self._sync_gradients(last=index == len(chunks) - 1):
                total += self._forward_backward(micro_images, micro_labels, steps)
        self._optimizer_step()
        return total

    def _sync_gradients(self, last: bool):
        """Under DDP, all-reduce once per optimizer step (on the last micro-batch), not per micro-batch."""
        return nullcontext() if last or self._no_sync is None else self._no_sync()

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.Tensor:
        with region(FORWARD_REGION, self.annotate), self.autocast():
            # Divide by the micro-batch count so the summed gradients equal the full batch's mean.
            loss = self.loss_fn(self.model(images), labels) / steps
        with region(BACKWARD_REGION, self.annotate):
            self.scaler.scale(loss).backward()
        return loss.detach()

    def _optimizer_step(self) -> None:
        with region(OPTIMIZER_REGION, self.annotate):
            if self.settings.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)


class BatchStream:
    """Endless batches from a DataLoader (a new epoch starts when one ends)."""

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        self.loader, self.iterator, self.epochs = loader, iter(loader), 0

    def next(self, annotate: bool = False):
        with region(DATA_REGION, annotate):
            try:
                return next(self.iterator)
            except StopIteration:
                self.epochs += 1
                if hasattr(self.loader.sampler, "set_epoch"):  # DistributedSampler: a new shuffle per epoch
                    self.loader.sampler.set_epoch(self.epochs)
                self.iterator = iter(self.loader)
                return next(self.iterator)
