"""Two processes, one of them a straggler, for `workbench analyze`: each rank trains under DDP (gloo) with
its loop instrumented; rank 1's data loading sleeps 40 ms a batch. Reading both ranks' traces together,
`workbench analyze` names rank 1 the straggler and says the difference is input.

    python examples/straggler.py
    python examples/straggler.py --tiny
    workbench analyze profiles/example-straggler     # the same reading, from the command line

Writes profiles/example-straggler/rank0_*.pt.trace.json.gz and rank1_*.
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from workbench.trace import explain
from workbench.trace.instrument import Instrument


class SlowOnRankOne(torch.utils.data.Dataset):
    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __len__(self) -> int:
        return 4096

    def __getitem__(self, index: int):
        if self.rank == 1 and index % 8 == 0:  # one sleep per batch of 8
            time.sleep(0.04)
        return torch.randn(64), index % 4


def train(rank: int, out: str, steps: int, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = torch.utils.data.DataLoader(SlowOnRankOne(rank), batch_size=8)
    with Instrument(out, device_type="cpu") as inst:
        for step, (x, y) in enumerate(inst.batches(loader)):
            with inst.region("forward"):
                loss = nn.functional.cross_entropy(model(x), y)
            with inst.region("backward"):
                loss.backward()
            with inst.region("optimizer_step"):
                optimizer.step()
                optimizer.zero_grad()
            if step + 1 == steps:
                break
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default="profiles/example-straggler")
    parser.add_argument("--port", default="29517")
    args = parser.parse_args()
    mp.spawn(train, args=(args.out, 8 if args.tiny else 20, args.port), nprocs=2)
    document = explain.document([args.out])
    for finding in document["per_rank"]["findings"]:
        print(f"[{finding['severity']}] {finding['rule']}: {finding['evidence']}")
    print(json.dumps({"ranks": len(document["ranks"]) + 1}))
