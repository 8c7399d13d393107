"""GPU check: a short ladder on a CUDA device, and the things that must hold there.

    make gpu-check                       # fresh machine: creates .venv
    make gpu-check PY=python3            # an environment that already has torch >= 2.11
    python3 benchmarks/gpu_check.py --timed-steps 10

The ladder includes the input pipeline (workers, then batched on-device augmentation), so the GPU
stages are not judged behind a data-bound loop; AMP's own effect is also checked on device-resident
data (each stage's compute-only ceiling), which no input pipeline can hide. Prints a PASS/FAIL table:
  - AMP is faster than fp32 NCHW (TF32 off) on device-resident data; whether the ladder kept it is
    reported (after TF32 a small batch can be launch-bound, and bf16 then adds little);
  - AMP + channels_last beats fp32 NCHW on device-resident data (only asked when AMP was kept);
  - checkpointing lowers peak allocated memory against the configuration before it;
  - torch.compile's output matches eager in true fp32 (TF32 off), within a relative tolerance;
  - every stage's trace holds CUDA kernels;
  - the final configuration against the baseline (the lab expects 2-3x; the target on an H200 is 3x
    with the interval's low end above 2.5x);
  - no speed stage left undecided where its effect is 10% or more (the fitted noise floor's job);
  - the whole check within its time target (8 minutes on one H200: it and one more run fit a
    15-minute loan);
  - with --allow-batch-change, the final configuration's throughput against the 10,000 images/s target.
The ceiling line (the final configuration's share of the peak beside the device-resident best) closes it.
Exit status 0 when every check passes, 1 when one fails, 2 when there is no CUDA device.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, installed or not

import torch  # noqa: E402

from workbench.api import optimize  # noqa: E402
from workbench.config import RunConfig  # noqa: E402
from workbench.device import decide, probe  # noqa: E402
from workbench.report.summary import ceiling_text  # noqa: E402

STAGES = "dataloader,batched_input,tf32,amp,channels_last,fused_optimizer,checkpointing,cuda_graphs,compile,batch_size"
TIME_TARGET_S = 480            # 8 minutes: the check and one more run fit a 15-minute GPU loan
FINAL_TARGET, FINAL_LOW_TARGET = 3.0, 2.5
BATCH_CHANGE_TARGET = 10_000   # images/s at 224 px with the batch change allowed
OPEN_EFFECT = 0.10             # an undecided stage whose point estimate is this far from 1 is a miss
COMPILE_RTOL = 1e-3  # relative to the logits' scale: fp32 reassociation, not a different answer


def _compile_difference() -> tuple[bool, str]:
    from workbench.training.model import apply_all, build_model

    torch.manual_seed(0)
    eager = build_model("resnet18", 10).cuda().eval()
    compiled, _ = apply_all(eager, "contiguous", "none", "default", torch.device("cuda"))  # shares the weights
    images = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.no_grad():
        want, got = eager(images), compiled(images)
    relative = ((got - want).abs().max() / want.abs().max()).item()
    return relative <= COMPILE_RTOL, f"max |compiled - eager| / max |eager| = {relative:.1e} (tolerance {COMPILE_RTOL:g})"


def compile_matches_eager() -> tuple[bool, str]:
    """Same weights, same input, true fp32 (TF32 off for both): compiled and eager logits agree."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return _compile_difference()
    except Exception as error:  # no C compiler, no Python.h, a Triton failure: a FAIL row, not a traceback
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        return False, f"torch.compile failed: {type(error).__name__}: {first}"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _metrics(result: dict | None) -> dict | None:
    return (result or {}).get("metrics")


def _ceiling(result: dict | None) -> dict | None:
    return ((_metrics(result) or {}).get("compute_only") or {}).get("throughput")


def _compute_faster(result: dict | None, reference: dict | None, label: str) -> tuple[bool, str]:
    new, old = _ceiling(result), _ceiling(reference)
    if not new or not old:
        return False, f"no compute-only figure for {label}: {(result or {}).get('reason') or 'stage did not run'}"
    ratio = new["median"] / old["median"]
    apart = new["ci95_low"] > old["ci95_high"]
    return ratio > 1 and apart, (f"{new['median']:.0f} vs {old['median']:.0f} samples/s on device-resident data "
                                 f"({ratio:.2f}x{'' if apart else ', intervals overlap'})")


def _kept(result: dict | None) -> tuple[bool, str]:
    if not result:
        return False, "stage did not run"
    return result["status"] == "kept", f"{result['status']}: {result.get('reason', '')}"[:160]


def _less_memory(result: dict | None, before: dict | None) -> tuple[bool, str]:
    if not _metrics(result) or not _metrics(before):
        return False, "checkpointing or the configuration before it did not run"
    new, old = result["metrics"]["peak_memory"]["allocated_mb"], before["metrics"]["peak_memory"]["allocated_mb"]
    return new < old, f"peak allocated {new:.0f} MiB vs {old:.0f} MiB"


def _traces_have_kernels(results: list[dict]) -> tuple[bool, str]:
    counts = {}
    for result in results:
        summary_path = (result.get("trace") or {}).get("summary_json")
        device = json.loads(Path(summary_path).read_text()).get("device") if summary_path else None
        counts[result["stage"]] = (device or {}).get("kernel_count", 0)
    return bool(counts) and all(counts.values()), ", ".join(f"{k}: {v}" for k, v in counts.items())


def _final_speedup(results: list[dict]) -> tuple[bool, str]:
    """The headline: the final configuration against the baseline, paired in one time window."""
    final = next((r for r in results if r["status"] == "final" and _metrics(r)), None)
    if final is None:
        return False, "no stage was kept, so there is no final configuration to compare"
    ratio = final["metrics"]["speedup_vs_baseline"]
    settled = ratio["ci95_low"] > 1
    return ratio["ratio"] >= 2 and settled, (
        f"{' + '.join(final['applied'])}: {ratio['ratio']:.2f}x [{ratio['ci95_low']:.2f}, {ratio['ci95_high']:.2f}] "
        f"vs baseline, paired (lab: 2-3x){'' if settled else '; inconclusive: use more --rounds'}")


def _final_target(results: list[dict]) -> tuple[bool, str]:
    final = next((r for r in results if r["status"] == "final" and _metrics(r)), None)
    if final is None:
        return False, "no final configuration"
    ratio = final["metrics"]["speedup_vs_baseline"]
    return (ratio["ratio"] >= FINAL_TARGET and ratio["ci95_low"] > FINAL_LOW_TARGET,
            f"{ratio['ratio']:.2f}x [{ratio['ci95_low']:.2f}, {ratio['ci95_high']:.2f}] (target >= {FINAL_TARGET:g}x, "
            f"low end > {FINAL_LOW_TARGET:g}x)")


def _no_large_effect_left_open(results: list[dict]) -> tuple[bool, str]:
    """An undecided speed stage whose point estimate is 10% or more from 1 was a decidable effect missed."""
    missed = [f"{r['stage']} {r['metrics']['speedup_vs_previous']['ratio']:.2f}x" for r in results
              if r["status"] == "undecided" and _metrics(r)
              and abs(r["metrics"]["speedup_vs_previous"]["ratio"] - 1) >= OPEN_EFFECT]
    undecided = [r["stage"] for r in results if r["status"] == "undecided"]
    return not missed, (f"undecided with an effect of {OPEN_EFFECT:.0%} or more: {', '.join(missed)}" if missed else
                        f"none ({len(undecided)} undecided in all{': ' + ', '.join(undecided) if undecided else ''})")


def _in_time(elapsed_s: float) -> tuple[bool, str]:
    return elapsed_s < TIME_TARGET_S, f"{elapsed_s / 60:.1f} min (target under {TIME_TARGET_S / 60:.0f} min)"


def _batch_change_target(results: list[dict], allowed: bool) -> tuple[bool | None, str]:
    final = next((r for r in results if r["status"] == "final" and _metrics(r)), None)
    rate = final["metrics"]["throughput"]["median"] if final else None
    shown = f"{rate:,.0f} images/s" if rate else "no final configuration"
    if not allowed:
        return None, f"(not asked: run with --allow-batch-change) final {shown}"
    return bool(rate and rate >= BATCH_CHANGE_TARGET), f"final {shown} (target >= {BATCH_CHANGE_TARGET:,})"


def _last_kept_before(results: list[dict], stage: str) -> dict | None:
    names = [r["stage"] for r in results]
    before = results[:names.index(stage)] if stage in names else []
    kept = [r for r in before if r["status"] in ("baseline", "kept")]
    return kept[-1] if kept else None


def checks(results: list[dict], elapsed_s: float = 0.0, batch_change: bool = False) -> list[tuple[str, bool | None, str]]:
    """(name, passed or None when not asked, evidence) for each check."""
    stages = {r["stage"]: r for r in results}
    amp, baseline = stages.get("amp"), stages.get("baseline")
    amp_kept, amp_reason = _kept(amp)
    # Against the fp32 NCHW baseline (TF32 off): after the tf32 stage, bf16's further gain on a small
    # batch can be within the noise (an H200 at batch 32 is launch-bound), which is a finding, not a fault.
    rows = [("AMP faster than fp32 NCHW (device-resident data)", *_compute_faster(amp, baseline, "amp")),
            ("AMP kept by the ladder", None, f"(reported, not asserted) {amp_reason}")]
    if amp_kept:
        rows.append(("AMP + channels_last faster than fp32 NCHW (device-resident)",
                     *_compute_faster(stages.get("channels_last"), baseline, "channels_last")))
    else:
        rows.append(("AMP + channels_last faster than fp32 NCHW (device-resident)", None, "not asked: AMP was not kept"))
    rows += [("checkpointing lowers peak allocated memory",
              *_less_memory(stages.get("checkpointing"), _last_kept_before(results, "checkpointing"))),
             ("compile output matches eager (fp32, TF32 off)", *compile_matches_eager()),
             ("traces hold CUDA kernels", *_traces_have_kernels(results)),
             ("final configuration at least 2x the baseline", *_final_speedup(results)),
             ("final configuration at the H200 target", *_final_target(results)),
             ("no effect of 10% or more left undecided", *_no_large_effect_left_open(results)),
             ("with the batch change allowed: 10,000 images/s", *_batch_change_target(results, batch_change)),
             ("complete within the time target", *_in_time(elapsed_s))]
    return rows


def print_table(rows: list[tuple[str, bool | None, str]]) -> None:
    width = max(len(name) for name, _, _ in rows)
    for name, ok, evidence in rows:
        mark = "INFO" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{mark}  {name:<{width}}  {evidence}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timed-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data", default="auto")
    parser.add_argument("--stages", default=STAGES, help="stages to run (all of the lab's ladder: 'all')")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds per comparison (2 proved too few on an input-bound baseline)")
    parser.add_argument("--order", default="fixed", choices=("fixed", "trace"),
                        help="fixed: one pass (short); trace: profiling-driven order, second look, leave-one-out")
    parser.add_argument("--allow-batch-change", action="store_true",
                        help="let the batch_size stage search a larger batch and carry it forward (the 10k images/s target)")
    parser.add_argument("--time-budget", type=float, default=TIME_TARGET_S - 60,
                        help="seconds after which no extra rounds are started (the run's --time-budget)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: error: no CUDA device here; allowed: a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    caps = decide(probe("cuda"))
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, AMP {caps.amp_dtype} "
          f"({caps.amp_reason}), tensor cores: {caps.tensor_cores}")
    # Compile once: later rounds' fresh processes read the compiled graphs back from the caches.
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    started = time.monotonic()
    cfg = RunConfig(image_size=224, batch_size=32, timed_steps=args.timed_steps, repeats=args.repeats,
                    rounds=args.rounds, order=args.order, allow_batch_change=args.allow_batch_change,
                    device="cuda", data=args.data, run_name=time.strftime("gpu-check-%Y%m%d-%H%M%S"))
    try:
        results = optimize(cfg, stages=None if args.stages == "all" else args.stages, time_budget_s=args.time_budget)
    except Exception as error:  # the table cannot be made; say why in one line
        print(f"FAIL  the ladder did not run: {type(error).__name__}: {error}"[:400])
        return 1
    rows = checks(results, time.monotonic() - started, args.allow_batch_change)
    print_table(rows)
    final = next((r for r in results if r["status"] == "final"), None)
    ceiling = ceiling_text(results, final) if final else None
    print(f"ceiling: {ceiling}" if ceiling else "ceiling: not measured (no final configuration with a compute-only figure)")
    return 0 if all(ok is not False for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
