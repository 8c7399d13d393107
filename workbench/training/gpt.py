"""The built-in language model: a GPT-2-style decoder (pre-LayerNorm blocks, causal SDPA attention, GELU
MLP, tied input and output embeddings), as nanoGPT writes it, in a few sizes.

`forward(ids)` returns logits (batch, seq_len, vocab): the workbench's loss contract for causal language
models (workbench/training/language.py), the same one a user's model meets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class GPTSize:
    layers: int
    heads: int
    width: int
    note: str


# "gpt" is sized for a 2-core CPU ladder (the issue's nanoGPT check: 4 x 4 x 256); the rest are GPT-2's.
SIZES = {
    "gpt": GPTSize(4, 4, 256, "4 layers, 4 heads, 256 wide (~3.7M parameters at vocab 2048): a CPU ladder's size"),
    "gpt-mini": GPTSize(6, 6, 384, "6 layers, 6 heads, 384 wide (nanoGPT's Shakespeare model)"),
    "gpt2": GPTSize(12, 12, 768, "GPT-2 small: 12 layers, 12 heads, 768 wide (124M at GPT-2's vocabulary)"),
    "gpt2-medium": GPTSize(24, 16, 1024, "GPT-2 medium: 24 layers, 16 heads, 1024 wide (350M)"),
}


def is_builtin(name: str) -> bool:
    return name in SIZES


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        # The attention backend (flash, memory-efficient, cuDNN, math) is SDPA's to pick, or the run's
        # attention stage's (workbench/training/attention.py).
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(batch, length, width))


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(width), CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token and position embeddings, `blocks` (a ModuleList: what checkpointing wraps), a final
    LayerNorm and the output head, which shares the token embedding's weight."""

    def __init__(self, vocab_size: int, seq_len: int, size: GPTSize, loss_chunks: int = 1) -> None:
        super().__init__()
        self.seq_len, self.loss_chunks = seq_len, loss_chunks
        self.token_embedding = nn.Embedding(vocab_size, size.width)
        self.position_embedding = nn.Embedding(seq_len, size.width)
        self.blocks = nn.ModuleList(Block(size.width, size.heads) for _ in range(size.layers))
        self.ln_f = nn.LayerNorm(size.width)
        self.head = nn.Linear(size.width, vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight
        self.apply(self._init)
        for name, parameter in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * size.layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (batch, seq_len, vocab); with targets while training, (logits, loss), and with
        loss_chunks > 1 (None, loss) computed a chunk of the sequence at a time (chunked_loss)."""
        length = ids.shape[1]
        if length > self.seq_len:
            raise ValueError(f"a sequence of {length} tokens is longer than this model's {self.seq_len} positions")
        positions = torch.arange(length, device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        if targets is None or not torch.is_grad_enabled():
            return self.head(self.ln_f(x))
        if self.loss_chunks > 1:
            return None, chunked_cross_entropy(x, targets, lambda h: self.head(self.ln_f(h)), self.loss_chunks)
        logits = self.head(self.ln_f(x))
        return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def chunked_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, head, chunks: int) -> torch.Tensor:
    """Mean next-token cross-entropy without all the logits at once: the head and the loss run over
    `chunks` slices of the sequence, each checkpointed, so backward recomputes one slice's logits at a time
    instead of keeping batch x seq_len x vocab of them (and their log-softmax and gradient)."""
    def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head(h)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), t.reshape(-1), reduction="sum")

    total = sum(checkpoint(piece, h, t, use_reentrant=False)
                for h, t in zip(hidden.chunk(chunks, dim=1), targets.chunk(chunks, dim=1)))
    return total / targets.numel()


def build_gpt(name: str, vocab_size: int, seq_len: int, loss_chunks: int = 1) -> GPT:
    return GPT(vocab_size, seq_len, SIZES[name], loss_chunks)
