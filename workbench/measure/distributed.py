"""More than one process, inside each of torchrun's processes: the process group, DistributedDataParallel,
DistributedSampler. (Starting them is the launcher's job: launch/launchers.Torchrun.)

Each process trains on its own shard with `batch_size` samples per step (the DDP convention), so a
step of N processes handles N x batch_size samples. Gloo on a CPU, NCCL on GPUs.

On several nodes (launch/nodes.py) node k holds ranks k*nproc.., so rank 0, the one that reports, is on
node 0; the other nodes' trace files reach node 0's trace folder through the process group
(`gather_files`), so the run folder has every rank's trace without a shared filesystem.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from workbench.results import write_atomic


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = "none"
    node_rank: int = 0      # torchrun's GROUP_RANK: the node (the static rendezvous keeps --node-rank)
    nnodes: int = 1

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
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    return DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size,
                    node_rank=int(os.environ.get("GROUP_RANK", "0")), nnodes=max(1, world_size // per_node))


def setup(device_type: str) -> DistInfo:
    """Join the process group (NCCL for CUDA, gloo otherwise); no-op for a single process."""
    info = from_environment()
    if not info.enabled:
        return info
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    torch.distributed.init_process_group(backend=backend)
    return replace(info, backend=backend)


def teardown(info: DistInfo) -> None:
    if info.enabled and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def device_for(device_type: str, info: DistInfo) -> torch.device:
    return torch.device("cuda", info.local_rank) if device_type == "cuda" else torch.device(device_type)


def wrap(model: torch.nn.Module, device: torch.device, info: DistInfo, sharding: str = "none",
         blocks: list[torch.nn.Module] | None = None) -> torch.nn.Module:
    """DDP, or FSDP2 (sharding="fsdp"): each block sharded on its own, so only one block's weights are
    gathered at a time, then the root (what is left: stem, head). ZeRO-1 keeps DDP: it shards the
    optimizer (optimizer_for)."""
    if not info.enabled:
        return model
    if sharding == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks or []:
            fully_shard(block)
        fully_shard(model)
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def optimizer_for(build, params, info: DistInfo, sharding: str) -> torch.optim.Optimizer:
    """The optimizer `build(params)` makes, or under ZeRO-1 a ZeroRedundancyOptimizer holding one shard
    of its state per process (the same update: each process steps its shard, then they broadcast)."""
    if not (info.enabled and sharding == "zero1"):
        return build(params)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    probe = build([torch.nn.Parameter(torch.zeros(1))])  # its class and settings, for each shard's own
    settings = {key: value for key, value in probe.defaults.items() if key not in ("differentiable",)}
    return ZeroRedundancyOptimizer(list(params), optimizer_class=type(probe), **settings)


def sampler(dataset, info: DistInfo, seed: int):
    """A shard of the data per process; None for a single process (the loader shuffles itself)."""
    if not info.enabled:
        return None
    return torch.utils.data.DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                               shuffle=True, seed=seed, drop_last=True)


def gather_files(folder: Path, info: DistInfo, into: Path) -> list[Path]:
    """Every other node's files in `folder` sent to rank 0 and written under `into` (node 0's folder);
    the paths written there. A collective: every rank calls it. The bytes travel pickled through
    gather_object over gloo (NCCL would stage them on the GPU); the peers are this run's own ranks."""
    mine = [(path.name, path.read_bytes()) for path in sorted(folder.iterdir()) if path.is_file()] if info.node_rank else []
    group = None if info.backend == "gloo" else torch.distributed.new_group(backend="gloo")
    gathered: list | None = [None] * info.world_size if info.is_main else None
    torch.distributed.gather_object(mine, gathered, dst=0, group=group)
    written = []
    for files in gathered or []:
        for name, data in files:
            written.append(write_atomic(into / Path(name).name, lambda handle, data=data: handle.write(data), binary=True))
    return written
