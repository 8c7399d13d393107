"""Which events of a trace are collectives: the one recognizer, used by the communication reading
(trace/comm.py) and by the breakdown, which measures how much of "other" a rank spends in them
(trace/analyze.py). No torch import."""
from __future__ import annotations

import re

# Host ops of a collective (gloo, c10d, DDP's all-reduce on its background thread, NCCL's host side).
COLLECTIVE = re.compile(r"all_?reduce|allgather|all_gather|reduce_scatter|broadcast|nccl|gloo|c10d::", re.I)
# On the GPU, the collectives are NCCL's kernels.
NCCL_KERNEL = re.compile(r"nccl", re.I)


def is_collective(name: str, on_gpu: bool) -> bool:
    return bool((NCCL_KERNEL if on_gpu else COLLECTIVE).search(name))
