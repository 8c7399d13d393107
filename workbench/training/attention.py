"""Attention: which SDPA backends a device offers, the context that pins one, and what a model's forward
does for attention (SDPA, or softmax(QK^T)V written by hand).

F.scaled_dot_product_attention picks a backend per call (flash, memory-efficient, cuDNN, or the math
reference) from the inputs and the device. Pinning one with torch.nn.attention.sdpa_kernel measures it
as a stage; the math backend materializes the (seq_len x seq_len) scores and is the slow reference.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.overrides import TorchFunctionMode

# The run's choices (config.ATTENTION_BACKENDS; "auto": SDPA's own) as torch.nn.attention.SDPBackend names them.
_SDP_NAMES = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
              "math": "MATH"}
# SM 8.0 for FlashAttention-2 kernels in torch; cuDNN's fused attention in torch's build targets Hopper.
FLASH_MIN_CAPABILITY, CUDNN_MIN_CAPABILITY = (8, 0), (9, 0)


def offered(device_type: str, capability: tuple[int, int] | None = None) -> tuple[str, ...]:
    """The backends SDPA can run on this device (facts only, no device call: tests feed any GPU)."""
    if device_type == "cpu":
        return ("flash", "math")  # the CPU's flash kernel (_scaled_dot_product_flash_attention_for_cpu) and math
    if device_type == "cuda":
        capability = capability or (0, 0)
        return tuple(name for name, ok in (("flash", capability >= FLASH_MIN_CAPABILITY), ("efficient", True),
                                           ("cudnn", capability >= CUDNN_MIN_CAPABILITY), ("math", True)) if ok)
    return ("math",)


def kernel(backend: str):
    """A context in which SDPA runs only `backend` ("auto": no restriction)."""
    if backend == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, _SDP_NAMES[backend])])


class _AttentionCalls(TorchFunctionMode):
    """Counts the calls that make attention: SDPA, softmax, and the matmuls around it."""

    def __init__(self) -> None:
        super().__init__()
        self.sdpa = self.softmax = self.matmul = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name == "scaled_dot_product_attention":
            self.sdpa += 1
        elif name in ("softmax", "_softmax"):
            self.softmax += 1
        elif name in ("matmul", "__matmul__", "bmm", "einsum", "baddbmm"):
            self.matmul += 1
        return func(*args, **(kwargs or {}))


def attention_facts(run_forward) -> dict:
    """What one forward (run_forward()) does for attention: 'sdpa', 'by_hand' or 'none', with counts."""
    with _AttentionCalls() as calls:
        run_forward()
    if calls.sdpa:
        kind = "sdpa"
    elif calls.softmax and calls.matmul >= 2:
        kind = "by_hand"
    else:
        kind = "none"
    return {"attention": kind, "sdpa_calls": calls.sdpa, "softmax_calls": calls.softmax}
