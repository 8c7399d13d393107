"""Benchmark: the ladder's final configuration against the best loop a person would write by hand.

The hand-written loop is fused Adam, plus bf16 autocast where the CPU has native bf16 (avx512_bf16 or
AMX), on the lab pipeline: the best plain loop measured on these machines. Both run in this one
process, alternating windows round by round, so drift falls on both alike; the ratio's interval is
taken over the rounds. The goal: the final configuration reaches at least 0.95x the hand-written loop.

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


def hand_written(cfg: RunConfig, native_bf16: bool):
    """The baseline's model and data with fused Adam, driven by a bare loop (bf16 autocast if native)."""
    built = build(cfg.with_overrides(fused_optimizer=True, trace=False))
    batches, loss_fn = iter(built.stream.loader), nn.CrossEntropyLoss()
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if native_bf16 else contextlib.nullcontext()

    def window(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            images, labels = next(batches)
            with precision:
                loss = loss_fn(built.model(images), labels)
            loss.backward()
            built.optimizer.step()
            built.optimizer.zero_grad(set_to_none=True)
        return steps * cfg.batch_size / (time.perf_counter() - start)
    return window


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
    loops = {"hand-written": hand_written(baseline, native), "final": harness(final)}
    loops["hand-written"](final.warmup_steps)
    rates = {name: [] for name in loops}
    for index in range(rounds):
        order = list(loops) if index % 2 == 0 else list(reversed(loops))
        for name in order:
            rates[name].append(loops[name](steps))
        print(f"round {index + 1}/{rounds}: hand-written {rates['hand-written'][-1]:.1f}, "
              f"final {rates['final'][-1]:.1f} images/s", flush=True)
    ratio = stats.paired_ratio(rates["hand-written"], rates["final"])
    label = "fused Adam + bf16 autocast" if native else "fused Adam (fp32: bf16 is emulated on this CPU)"
    return {"hand_written": label, "ratio": ratio, "meets_goal": ratio["ratio"] >= GOAL}


def say(result: dict) -> None:
    r = result["ratio"]
    print(f"final configuration vs the best hand-written loop ({result['hand_written']}): {r['ratio']:.2f}x "
          f"[{r['ci95_low']:.2f}, {r['ci95_high']:.2f}] over {r['rounds']} rounds; goal >= {GOAL}: "
          f"{'met' if result['meets_goal'] else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    result = compare(args.run_dir, args.rounds, args.steps)
    say(result)
    return 0 if result["meets_goal"] else 1


if __name__ == "__main__":
    with MachineLock("benchmarks/best_loop.py"):  # one measuring run per machine
        sys.exit(main())
