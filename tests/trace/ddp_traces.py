"""A plain hand-written DDP loop that writes one torch.profiler trace per rank, with a stall injected
on rank 1 (not the workbench's training code: a user's loop, as `workbench analyze` meets it).

Run under torchrun, one folder per case:
    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node=2 \
        tests/trace/ddp_traces.py OUT balanced loader backward
writes OUT/<case>/rank<K>.<ts>.pt.trace.json.gz. One launch runs every case in turn, so the
interpreters and the process group start once (the machines have two cores).
"""
from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import ProfilerActivity, profile, record_function, schedule, tensorboard_trace_handler

SLOW_RANK = 1
# The injected stall: far above a tiny model's few ms per step, so the cause is certain, not measured.
STALL_S = 0.060
FEATURES, BATCH = 64, 16
WAIT, WARMUP, ACTIVE = 1, 1, 4
# "backward_region" is "backward" with loss.backward() inside a region named "backward" (a user's
# own record_function): then the waiting ranks' backward regions hold their wait and look as long.
CASES = ("balanced", "loader", "backward", "backward_region")


class Items(torch.utils.data.Dataset):
    """Random samples; on the slow rank in the "loader" case each batch's first item takes STALL_S."""

    def __init__(self, stall: bool) -> None:
        self.stall = stall

    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, index: int):
        if self.stall and index % BATCH == 0:
            time.sleep(STALL_S)
        return torch.randn(FEATURES), index % 4


class SlowBackward(torch.autograd.Function):
    """Identity forward; the backward sleeps, like a slow GPU or a heavy kernel on one rank."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        time.sleep(STALL_S)
        return grad


class Model(nn.Module):
    def __init__(self, slow_backward: bool) -> None:
        super().__init__()
        self.first, self.last = nn.Linear(FEATURES, 128), nn.Linear(128, 4)
        self.slow_backward = slow_backward

    def forward(self, x):
        hidden = torch.relu(self.first(x))
        # Between the layers: the last layer's gradient is ready (its bucket may start reducing)
        # before the stall, the first layer's only after it.
        hidden = SlowBackward.apply(hidden) if self.slow_backward else hidden
        return self.last(hidden)


def run_case(case: str, out: Path, rank: int) -> None:
    torch.manual_seed(0)
    slow = rank == SLOW_RANK
    model = DistributedDataParallel(Model(slow_backward=slow and case.startswith("backward")))
    region = record_function("backward") if case == "backward_region" else nullcontext()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(Items(stall=slow and case == "loader"), batch_size=BATCH)
    trace_ready = tensorboard_trace_handler(str(out / case), worker_name=f"rank{rank}", use_gzip=True)
    with profile(activities=[ProfilerActivity.CPU], on_trace_ready=trace_ready,
                 schedule=schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE, repeat=1)) as prof:
        for step, (x, y) in enumerate(loader):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            with region:
                loss.backward()
            optimizer.step()
            prof.step()
            if step + 1 == WAIT + WARMUP + ACTIVE:
                break


def main(argv: list[str]) -> None:
    out, cases = Path(argv[0]), argv[1:] or list(CASES)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for case in cases:
        run_case(case, out, rank)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
