"""For a language model: what to change in your own training script, setting by setting, as code lines.

An image run gets optimized_training.py, a whole CIFAR/ImageFolder loop that runs as it is. A language model
lives in the user's code (their model, their tokenizer, their loop), so its run gets the measured settings as
the lines to add to that loop instead: each one with the stage that measured it.
"""
from __future__ import annotations

from workbench.config import GPT_MODELS
from workbench.trace.diagnose import GLIBC_TUNABLES_LINE

CHANGES_NAME = "what_to_change.md"


def is_token_run(cfg: dict) -> bool:
    """A language model's run, from its recorded configuration (torch-free, any schema)."""
    data = str(cfg.get("data", "auto"))
    return data == "tokens" or data.startswith("tokens:") or (data == "auto" and cfg.get("model") in GPT_MODELS)


def _lines(cfg: dict) -> list[tuple[str, str]]:
    """(what, code) for every setting that differs from a plain fp32 eager loop."""
    changes = []
    if cfg.get("precision") in ("bf16", "fp16"):
        dtype = "torch.bfloat16" if cfg["precision"] == "bf16" else "torch.float16"
        scaler = "; with fp16 also a torch.amp.GradScaler around backward and step" if cfg["precision"] == "fp16" else ""
        changes.append(("autocast the forward and the loss" + scaler,
                        f"with torch.autocast(device_type, dtype={dtype}):\n    loss = loss_fn(model(ids), targets)"))
    if cfg.get("attention", "auto") != "auto":
        name = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                "math": "MATH"}[cfg["attention"]]
        changes.append((f"pin SDPA's {cfg['attention']} backend around forward and backward",
                        "from torch.nn.attention import SDPBackend, sdpa_kernel\n"
                        f"with sdpa_kernel([SDPBackend.{name}]):\n    loss = ...; loss.backward()"))
    mode = cfg.get("checkpointing", "none")
    if mode != "none":
        which = {"blocks": "every block"}.get(mode, mode.replace("blocks:", "the first ").replace("every:", "every "))
        head, _, k = mode.partition(":")
        picked = {"blocks": "True" if not k else f"i < {k}", "every": f"i % {k} == 0"}[head]
        changes.append((f"checkpoint the repeated blocks ({which}): recompute their activations in backward",
                        "from torch.utils.checkpoint import checkpoint\n"
                        "for i, block in enumerate(self.blocks):   # in your model's forward\n"
                        f"    x = checkpoint(block, x, use_reentrant=False) if {picked} else block(x)"
                        if picked != "True" else
                        "from torch.utils.checkpoint import checkpoint\n"
                        "for block in self.blocks:   # in your model's forward\n"
                        "    x = checkpoint(block, x, use_reentrant=False)"))
    chunks = int(cfg.get("loss_chunks") or 1)
    if chunks > 1:
        changes.append((f"compute the head and the loss over {chunks} slices of the sequence, each checkpointed",
                        "def piece(h, t):\n    logits = head(ln_f(h))\n"
                        "    return F.cross_entropy(logits.flatten(0, 1).float(), t.flatten(), reduction='sum')\n"
                        f"loss = sum(checkpoint(piece, h, t, use_reentrant=False) for h, t in\n"
                        f"           zip(hidden.chunk({chunks}, 1), targets.chunk({chunks}, 1))) / targets.numel()"))
    if cfg.get("fused_optimizer"):
        changes.append(("a fused optimizer step", "torch.optim.AdamW(model.parameters(), lr=lr, fused=True)"))
    if cfg.get("compile", "none") != "none":
        changes.append(("compile the model", f"model = torch.compile(model, mode={cfg['compile']!r})"))
    micro = cfg.get("micro_batch_size") or 0
    if micro and micro != cfg.get("batch_size"):
        steps = int(cfg["batch_size"]) // int(micro)
        changes.append((f"accumulate {steps} micro-batches of {micro} per optimizer step",
                        f"for chunk_ids, chunk_targets in zip(ids.chunk({steps}), targets.chunk({steps})):\n"
                        f"    (loss_fn(model(chunk_ids), chunk_targets) / {steps}).backward()\n"
                        "optimizer.step(); optimizer.zero_grad(set_to_none=True)"))
    if int(cfg.get("num_workers") or 0):
        changes.append(("load batches in worker processes",
                        f"DataLoader(dataset, batch_size={cfg.get('batch_size')}, num_workers={cfg['num_workers']}, "
                        f"persistent_workers=True, pin_memory={bool(cfg.get('pin_memory'))})"))
    if cfg.get("host_allocator") == "retain":
        changes.append(("keep freed host memory in the process (Linux, glibc): start your script with",
                        f"{GLIBC_TUNABLES_LINE} python train.py"))
    return changes


def render(cfg: dict, model: str, provenance: str) -> str:
    """The markdown page: the model, where the settings come from, then one change per section."""
    lines = [f"# What to change in your training script for {model}", "", provenance, "",
             f"The settings below are the measured final configuration (batch {cfg.get('batch_size')} x "
             f"{cfg.get('seq_len')} tokens). Each is a change to a plain fp32 eager loop; apply them together, as "
             "they were measured together.", ""]
    changes = _lines(cfg)
    if not changes:
        lines += ["Nothing: no stage beat the plain loop on this machine. Keep your script as it is.", ""]
    for index, (what, code) in enumerate(changes, 1):
        language = "bash" if code.startswith("GLIBC_TUNABLES") else "python"
        lines += [f"## {index}. {what[0].upper()}{what[1:]}", "", f"```{language}", code, "```", ""]
    return "\n".join(lines)
