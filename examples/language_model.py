"""A language model through the ladder: the built-in GPT-2-style decoder on synthetic tokens, in tokens/s,
with its blocks checkpointed, its loss chunked, and SDPA's math reference measured against its fused
kernel. For your own model and tokens, the command line does the same:
`workbench run --model mymodule:build --data tokens:train.bin --seq-len 256`.

    python examples/language_model.py
    python examples/language_model.py --tiny

Writes reports/example-gpt/ (its report says what to change in your own loop: what_to_change.md).
"""
import argparse

from workbench.api import optimize
from workbench.config import RunConfig
from workbench.report.build import build_report

parser = argparse.ArgumentParser()
parser.add_argument("--tiny", action="store_true")
parser.add_argument("--run-name", default="example-gpt")
args = parser.parse_args()
small = dict(seq_len=32, batch_size=4, warmup_steps=1, timed_steps=2, repeats=1, rounds=1, trace=False) if args.tiny else {}
cfg = RunConfig(model="gpt", data="tokens", run_name=args.run_name, **small)
results = optimize(cfg, stages="attention_math,checkpointing,chunked_loss", overwrite=True)
for result in results:
    metrics = result.get("metrics") or {}
    tokens = metrics.get("tokens_per_s")
    print(f"{result['stage']:16} {result['status']:10} "
          + (f"{tokens['median']:,.0f} tokens/s, peak {metrics['peak_memory_mb']:.0f} MiB" if tokens else result["reason"]))
print("what to change:", [p for p in build_report(f"reports/{args.run_name}") if p.name == "what_to_change.md"][0])
