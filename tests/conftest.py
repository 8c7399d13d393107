"""Shared fixtures: tiny models and inputs that keep the CPU suite fast."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn


# The suite's measuring runs take their own machine lock (workbench/machine_lock.py): a test never
# waits on a user's run, and the lock's own tests hold it on purpose. Inherited by every subprocess.
os.environ.setdefault("WORKBENCH_LOCK_FILE", str(Path(tempfile.mkdtemp(prefix="workbench-tests-")) / "lock"))


def tiny_convnet(num_classes: int = 10) -> nn.Sequential:
    """A BatchNorm-free conv + linear model (equivalence tests need no per-batch statistics)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes))


@pytest.fixture
def convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return tiny_convnet()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    return images, labels
