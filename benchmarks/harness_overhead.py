"""Benchmark: does the workbench's measured loop cost more than a bare hand-written loop?

Both run the same configuration (machine defaults: ResNet-18, the lab transforms, Adam) in the
same process, alternating rounds so machine noise hits both alike. Prints images/s of each and the
harness overhead. The goal: under 3%.

    make bench                      # or: .venv/bin/python benchmarks/harness_overhead.py --rounds 6
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from workbench.config import RunConfig
from workbench.machine_lock import MachineLock
from workbench.measure.executor import build, timed_repeats, warm_up
from workbench.progress import Progress


def bare_loop(model, optimizer, loader_iter, steps: int) -> float:
    """The loop a person writes by hand; returns images/s."""
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        images, labels = next(loader_iter)
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * images.shape[0] / (time.perf_counter() - start)


def harness_round(built, steps: int) -> float:
    built.cfg = built.cfg.with_overrides(repeats=1, timed_steps=steps)
    times, _, _ = timed_repeats(built, Progress("bench", stream=open("/dev/null", "w")))
    return steps * built.cfg.batch_size / sum(times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    cfg = RunConfig(image_size=args.image_size, batch_size=args.batch_size, device="cpu", trace=False)
    harness = build(cfg)
    bare = build(cfg)  # its own model, optimizer and loader, driven by the bare loop
    bare_iter = iter(bare.stream.loader)
    warm_up(harness, Progress("bench warm-up"))
    bare_loop(bare.model, bare.optimizer, bare_iter, cfg.warmup_steps)
    results = {"bare": [], "harness": []}
    for round_index in range(args.rounds):
        results["bare"].append(bare_loop(bare.model, bare.optimizer, bare_iter, args.steps))
        results["harness"].append(harness_round(harness, args.steps))
        print(f"round {round_index + 1}/{args.rounds}: bare {results['bare'][-1]:.1f} img/s, "
              f"harness {results['harness'][-1]:.1f} img/s", flush=True)
    report(results, cfg)


def report(results: dict, cfg: RunConfig) -> None:
    bare, harness = statistics.median(results["bare"]), statistics.median(results["harness"])
    spread = max(statistics.pstdev(v) / statistics.mean(v) for v in results.values())
    print(f"\nconfig: resnet18, {cfg.image_size} px, batch {cfg.batch_size}, {torch.get_num_threads()} threads")
    print(f"bare hand-written loop: {bare:.1f} images/s (median of {len(results['bare'])} rounds)")
    print(f"workbench harness:      {harness:.1f} images/s")
    print(f"harness overhead: {(bare / harness - 1):+.1%} (round-to-round spread {spread:.1%}; goal < 3%)")


if __name__ == "__main__":
    with MachineLock("benchmarks/harness_overhead.py"):  # one measuring run per machine
        main()
