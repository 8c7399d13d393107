"""More than one process, inside each of torchrun's processes: the process group, DistributedDataParallel,
DistributedSampler. (Starting them is the launcher's job: launch/launchers.Torchrun.)

Each process trains on its own shard with `batch_size` samples per step (the DDP convention), so a
step of N processes handles N x batch_size samples. Gloo on a CPU, NCCL on GPUs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_environment() -> DistInfo:
    """What torchrun told this process (a single process when it did not launch us)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)


def setup(device_type: str) -> DistInfo:
    """Join the process group (NCCL for CUDA, gloo otherwise); no-op for a single process."""
    info = from_environment()
    if not info.enabled:
        return info
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    torch.distributed.init_process_group(backend=backend)
    return DistInfo(info.rank, info.local_rank, info.world_size, backend)


def teardown(info: DistInfo) -> None:
    if info.enabled and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def device_for(device_type: str, info: DistInfo) -> torch.device:
    return torch.device("cuda", info.local_rank) if device_type == "cuda" else torch.device(device_type)


def wrap(model: torch.nn.Module, device: torch.device, info: DistInfo) -> torch.nn.Module:
    if not info.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def sampler(dataset, info: DistInfo, seed: int):
    """A shard of the data per process; None for a single process (the loader shuffles itself)."""
    if not info.enabled:
        return None
    return torch.utils.data.DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                               shuffle=True, seed=seed, drop_last=True)
