"""Your own training loop, instrumented: three lines around a plain loop write a torch.profiler trace in the
workbench's layout and print the step breakdown and the findings; the loop trains as before.

    python examples/own_loop.py            # ResNet-18 at 32 px, 30 steps
    python examples/own_loop.py --tiny     # the suite's smoke test

Writes profiles/example-own-loop/<worker>.<ts>.pt.trace.json.gz (open it in ui.perfetto.dev or
TensorBoard), then `workbench analyze profiles/example-own-loop` reads it again.
"""
import argparse

import torch
from torch import nn
from torchvision import models

from workbench.trace.instrument import Instrument

parser = argparse.ArgumentParser()
parser.add_argument("--tiny", action="store_true", help="a few steps on 16 px images")
parser.add_argument("--out", default="profiles/example-own-loop")
args = parser.parse_args()
size, steps = (16, 8) if args.tiny else (32, 30)

images = torch.randn(256, 3, size, size)
labels = torch.randint(0, 10, (256,))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8, shuffle=True)
model = models.resnet18(num_classes=10)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

inst = Instrument(args.out)
with inst:
    for step, (x, y) in enumerate(inst.batches(loader)):   # data_loading, one profiler step per batch
        with inst.region("forward"):
            loss = nn.functional.cross_entropy(model(x), y)
        with inst.region("backward"):
            loss.backward()
        with inst.region("optimizer_step"):
            optimizer.step()
            optimizer.zero_grad()
        if step + 1 == steps:
            break
inst.report()   # the breakdown and findings; the trace is in args.out
