"""GPU check: a short ladder on a CUDA device, and the things that must hold there.

    make gpu-check                     # or: .venv/bin/python benchmarks/gpu_check.py --timed-steps 10

Asserts, and prints as a table:
  - AMP is faster than the fp32 NCHW baseline, and AMP + channels_last is too (tensor-core GPUs);
  - checkpointing lowers peak allocated memory against the configuration before it;
  - torch.compile's output matches eager within tolerance;
  - every stage's trace holds CUDA kernels.
Exit status 1 when a check fails, 2 when there is no CUDA device.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from workbench.api import optimize
from workbench.config import RunConfig
from workbench.device import decide, probe
from workbench.model import apply_all, build_model

STAGES = "amp,channels_last,checkpointing,compile"


def compile_matches_eager(tolerance: float = 1e-2) -> tuple[bool, str]:
    """Same weights, same input: compiled and eager logits agree (fp32, eval mode)."""
    torch.manual_seed(0)
    eager = build_model("resnet18", 10).cuda().eval()
    compiled, _ = apply_all(eager, "contiguous", "none", "default", torch.device("cuda"))  # shares the weights
    images = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.no_grad():
        difference = (compiled(images) - eager(images)).abs().max().item()
    return difference <= tolerance, f"max |compiled - eager| = {difference:.2e} (tolerance {tolerance:g})"


def _by_stage(results: list[dict]) -> dict[str, dict]:
    return {r["stage"]: r for r in results}


def _faster(result: dict | None) -> tuple[bool, str]:
    if not result or not result.get("metrics"):
        return False, f"stage did not run: {result and result.get('reason')}"
    ratio = result["metrics"]["speedup_vs_baseline"]
    text = f"{ratio['ratio']:.2f}x [{ratio['ci95_low']:.2f}, {ratio['ci95_high']:.2f}] vs baseline"
    return ratio["verdict"] == "faster", text


def _less_memory(result: dict | None, before: dict | None) -> tuple[bool, str]:
    if not result or not result.get("metrics") or not before or not before.get("metrics"):
        return False, "checkpointing or the configuration before it did not run"
    new, old = result["metrics"]["peak_memory"]["allocated_mb"], before["metrics"]["peak_memory"]["allocated_mb"]
    return new < old, f"peak allocated {new:.0f} MiB vs {old:.0f} MiB"


def _traces_have_kernels(results: list[dict]) -> tuple[bool, str]:
    counts = {}
    for result in results:
        summary_path = (result.get("trace") or {}).get("summary_json")
        device = json.load(open(summary_path)).get("device") if summary_path else None
        counts[result["stage"]] = (device or {}).get("kernel_count", 0)
    return all(counts.values()) and bool(counts), ", ".join(f"{k}: {v}" for k, v in counts.items())


def checks(results: list[dict]) -> list[tuple[str, bool, str]]:
    stages = _by_stage(results)
    kept_before_ckpt = [r for r in results if r["status"] in ("baseline", "kept") and r["index"] < stages.get(
        "checkpointing", {"index": 99})["index"]]
    return [("AMP faster than fp32 NCHW", *_faster(stages.get("amp"))),
            ("AMP + channels_last faster than fp32 NCHW", *_faster(stages.get("channels_last"))),
            ("checkpointing lowers peak allocated memory",
             *_less_memory(stages.get("checkpointing"), kept_before_ckpt[-1] if kept_before_ckpt else None)),
            ("compile output matches eager", *compile_matches_eager()),
            ("traces hold CUDA kernels", *_traces_have_kernels(results))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timed-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default="auto")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: error: no CUDA device here; allowed: a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    caps = decide(probe("cuda"))
    print(f"device: {torch.cuda.get_device_name(0)}, AMP {caps.amp_dtype} ({caps.amp_reason}), "
          f"tensor cores: {caps.tensor_cores}")
    cfg = RunConfig(image_size=224, batch_size=32, timed_steps=args.timed_steps, repeats=args.repeats,
                    device="cuda", data=args.data, run_name="gpu-check")
    results = optimize(cfg, stages=STAGES)
    rows = checks(results)
    width = max(len(name) for name, _, _ in rows)
    for name, ok, evidence in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<{width}}  {evidence}")
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
