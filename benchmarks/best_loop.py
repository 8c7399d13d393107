"""Benchmark: the ladder's final configuration against the best loop a person would write by hand.

The hand-written loops are fused Adam in fp32 and, where the CPU has native bf16 (avx512_bf16 or
AMX), fused Adam with bf16 autocast: an expert would try both and keep the faster, because native
bf16 does not pay on every such CPU (it did 1.15-1.19x on one EPYC, nothing on a Zen 5). All run in
this one process, alternating windows round by round, so drift falls on all alike; each ratio's
interval is taken over the rounds. The best hand-written loop is the one the final configuration
compares worst against. The goal: the final configuration reaches at least 0.95x it; "met" when the
whole interval is at or above 0.95, "NOT met" (exit 1) when wholly below, else "undecided".

    .venv/bin/python benchmarks/best_loop.py reports/RUN        # after `workbench run --run-name RUN`
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, installed or not

import torch  # noqa: E402
from torch import nn  # noqa: E402

from workbench import stats  # noqa: E402
from workbench.config import RunConfig
from workbench.training import host_memory
from workbench.machine_lock import MachineLock  # noqa: E402
from workbench.device import decide, probe, resolve_device_type  # noqa: E402
from workbench.progress import Progress  # noqa: E402
from workbench.results import load_stage_results  # noqa: E402
from workbench.measure.executor import build, timed_repeats, warm_up  # noqa: E402

GOAL = 0.95


def configs(run_dir: Path) -> tuple[RunConfig, RunConfig]:
    """The run's baseline and the configuration it ended with (its headline; else the baseline)."""
    by_name = {r["stage"]: r for r in load_stage_results(run_dir)}
    baseline = RunConfig(**by_name["baseline"]["config"])
    return baseline, RunConfig(**(by_name.get("final") or by_name["baseline"])["config"])


def hand_written(cfg: RunConfig, bf16: bool):
    """The baseline's model and data with fused Adam, driven by a bare loop (with bf16 autocast if asked)."""
    built = build(cfg.with_overrides(fused_optimizer=True, trace=False))
    batches, loss_fn = iter(built.stream.loader), nn.CrossEntropyLoss()
    precision = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def window(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            images, labels = next(batches)
            with precision():
                loss = loss_fn(built.model(images), labels)
            loss.backward()
            built.optimizer.step()
            built.optimizer.zero_grad(set_to_none=True)
        return steps * cfg.batch_size / (time.perf_counter() - start)
    return window


HAND_FP32, HAND_BF16 = "fused Adam (fp32)", "fused Adam + bf16 autocast"


def harness(cfg: RunConfig):
    built = build(cfg.with_overrides(trace=False, repeats=1))
    quiet = Progress("final", stream=open("/dev/null", "w"))
    warm_up(built, quiet)

    def window(steps: int) -> float:
        built.cfg = built.cfg.with_overrides(timed_steps=steps)
        times, _, _ = timed_repeats(built, quiet)
        return steps * cfg.batch_size / sum(times[0])
    return window


def compare(run_dir: Path, rounds: int = 6, steps: int = 12) -> dict:
    baseline, final = configs(run_dir)
    if resolve_device_type(final.device) != "cpu":  # the bare loop reads host batches: a CPU comparison only
        raise SystemExit(f"best_loop: error: {run_dir} ran on {final.device}; allowed: a run on the CPU")
    native = decide(probe("cpu")).amp_dtype == "bf16"
    # One process holds every loop: a final that keeps freed host memory sets it for all of them, so
    # the hand-written loops get what any script can have (GLIBC_TUNABLES) and the loops still compare.
    host_memory.use(final.host_allocator)
    loops = {HAND_FP32: hand_written(baseline, bf16=False)}
    if native:
        loops[HAND_BF16] = hand_written(baseline, bf16=True)
    loops["final"] = harness(final)
    for name in loops:
        if name != "final":
            loops[name](final.warmup_steps)
    rates = {name: [] for name in loops}
    for index in range(rounds):
        for name in (list(loops) if index % 2 == 0 else list(reversed(loops))):
            rates[name].append(loops[name](steps))
        print(f"round {index + 1}/{rounds}: " + ", ".join(f"{name} {rates[name][-1]:.1f}" for name in loops)
              + " images/s", flush=True)
    ratios = {name: stats.paired_ratio(rates[name], rates["final"]) for name in loops if name != "final"}
    best = min(ratios, key=lambda name: ratios[name]["ratio"])  # the hand loop the final does worst against
    return {"hand_written": best, "ratio": ratios[best], "all": ratios, "goal": goal_verdict(ratios[best]),
            "bf16": "native" if native else "emulated on this CPU: not tried"}


def goal_verdict(ratio: dict) -> str:
    """'met' when the whole interval is at or above GOAL, 'NOT met' when it is wholly below, else
    'undecided': a point estimate on either side of GOAL is noise (6 rounds here spread +-5-10%)."""
    if ratio["ci95_low"] >= GOAL:
        return "met"
    return "NOT met" if ratio["ci95_high"] < GOAL else "undecided"


def say(result: dict) -> None:
    for name, r in result["all"].items():
        print(f"final configuration vs hand-written {name}: {r['ratio']:.2f}x [{r['ci95_low']:.2f}, "
              f"{r['ci95_high']:.2f}] over {r['rounds']} rounds")
    r = result["ratio"]
    print(f"final configuration vs the best hand-written loop ({result['hand_written']}; bf16 "
          f"{result['bf16']}): {r['ratio']:.2f}x [{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]; goal >= {GOAL}: "
          f"{result['goal']}" + (" (the interval reaches both sides of it)" if result["goal"] == "undecided" else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    result = compare(args.run_dir, args.rounds, args.steps)
    say(result)
    return 1 if result["goal"] == "NOT met" else 0


if __name__ == "__main__":
    with MachineLock("benchmarks/best_loop.py"):  # one measuring run per machine
        sys.exit(main())
