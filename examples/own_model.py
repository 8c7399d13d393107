"""The ladder from Python on your own model and dataset: `optimize()` measures each stage in paired rounds
and returns every stage's result; the run's files are written too, so `workbench report` works after.

    python examples/own_model.py
    python examples/own_model.py --tiny

Writes reports/example-own-model/ (stages/*.json, then the report) and profiles/example-own-model/.
"""
import argparse

import torch
from torch import nn

from workbench.api import optimize
from workbench.config import RunConfig
from workbench.report.build import build_report


class Shapes(torch.utils.data.Dataset):
    """Your dataset: anything with __len__/__getitem__; `classes` sizes a built-in model's output."""

    classes = ["dark", "light"]

    def __init__(self, size: int) -> None:
        self.labels = torch.randint(0, 2, (512,), generator=torch.Generator().manual_seed(0))
        self.size = size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        label = int(self.labels[index])
        return torch.randn(3, self.size, self.size) * 0.5 + (label - 0.5), label


def my_net(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, num_classes))


parser = argparse.ArgumentParser()
parser.add_argument("--tiny", action="store_true")
parser.add_argument("--run-name", default="example-own-model")
args = parser.parse_args()
small = dict(warmup_steps=1, timed_steps=2, repeats=1, rounds=2, trace=False) if args.tiny else {}
cfg = RunConfig(image_size=16 if args.tiny else 32, batch_size=16, run_name=args.run_name, **small)
results = optimize(cfg, model_factory=my_net, dataset=Shapes(cfg.image_size), stages="fused_optimizer,channels_last",
                   overwrite=True)
for result in results:
    rate = result["metrics"]["throughput"]["median"] if result.get("metrics") else None
    print(f"{result['stage']:16} {result['status']:10} " + (f"{rate:.1f} samples/s" if rate else result["reason"]))
print("report:", build_report(f"reports/{args.run_name}")[2])
