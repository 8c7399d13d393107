"""Token data for language models: a flat token file (nanoGPT's and llm.c's `.bin`), or synthetic tokens.

A token file is the corpus tokenized once and written as one flat array (`np.array(ids, np.uint16).tofile`,
nanoGPT's prepare.py): no header, no separators. It is memory-mapped, never read whole, and cut into
windows of seq_len + 1 tokens: the inputs are the first seq_len, the targets the same window shifted by one.

Offline, with no file, a synthetic stream stands in: random phrases from a fixed phrase book, one after
another. It is learnable (the loss falls from ln(vocab) within a few dozen steps), so the
ladder's check that the loss still behaves means something.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench.config import TOKEN_DTYPES as TOKEN_DTYPE_NAMES
from workbench.errors import UsageError

TOKEN_DTYPES = {name: np.dtype(name) for name in TOKEN_DTYPE_NAMES}  # the names RunConfig accepts
SYNTHETIC_VOCAB = 2048
SYNTHETIC_TOKENS = 1 << 20          # 2 MiB of uint16: thousands of windows at the default seq_len
SYNTHETIC_PHRASES, SYNTHETIC_PHRASE_LEN = 512, 8   # learnable within a phrase, uncertain across phrases
HELD_OUT_SYNTHETIC_WINDOWS = 64
HELD_OUT_SHARE = 0.05               # the file's last 5% of windows are held out for the accuracy check
HELD_OUT_MIN_WINDOWS = 20           # below this a file is too short to spare any
VOCAB_MULTIPLE = 64                 # the vocabulary a built-in model gets is rounded up (nanoGPT's 50304)
NPY_MAGIC = b"\x93NUMPY"


class TokenWindows(torch.utils.data.Dataset):
    """Non-overlapping windows of a token array: item i is (ids, targets), each seq_len int64 tokens."""

    def __init__(self, tokens: np.ndarray, seq_len: int, first: int = 0, count: int | None = None) -> None:
        self.tokens, self.seq_len = tokens, seq_len
        total = (len(tokens) - 1) // seq_len
        self.first = first
        self.count = total - first if count is None else count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        start = (self.first + index) * self.seq_len
        window = torch.from_numpy(np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int64))
        return window[:-1], window[1:]


@dataclass(frozen=True)
class TokenData:
    """The training and held-out windows of one token source, its vocabulary, and what it is."""

    train: TokenWindows
    held_out: TokenWindows | None
    vocab_size: int
    description: str


def synthetic_stream(count: int, vocab: int, seed: int, order_seed: int | None = None) -> np.ndarray:
    """A random sequence of "phrases" from a fixed phrase book: within a phrase the next token is certain,
    across phrases it is one of SYNTHETIC_PHRASES. order_seed draws another sequence of the same phrases."""
    book = np.random.default_rng(seed).integers(0, vocab, size=(SYNTHETIC_PHRASES, SYNTHETIC_PHRASE_LEN))
    order = np.random.default_rng(seed if order_seed is None else order_seed)
    picks = order.integers(0, SYNTHETIC_PHRASES, size=-(-count // SYNTHETIC_PHRASE_LEN))
    return book[picks].reshape(-1)[:count].astype(np.uint16)


def read_token_file(path: str, dtype: str) -> np.ndarray:
    """The file memory-mapped as flat tokens, after the checks that catch the usual wrong files."""
    file = Path(path)
    what = f"data=tokens:{path}"
    if not file.is_file():
        raise UsageError(f"{what}: no such file; allowed: a flat binary token file (nanoGPT's train.bin)")
    size, itemsize = file.stat().st_size, np.dtype(TOKEN_DTYPES[dtype]).itemsize
    with file.open("rb") as handle:
        head = handle.read(len(NPY_MAGIC))
    if head == NPY_MAGIC:
        raise UsageError(f"{what} is a .npy file (it has a header); allowed: flat tokens with no header "
                         "(np.array(ids, np.uint16).tofile(path)), or load it and pass the array from Python")
    if size % itemsize:
        raise UsageError(f"{what} has {size:,} bytes, not a whole number of {dtype} tokens ({itemsize} bytes each); "
                         "allowed: a flat file of uint16 tokens (--token-dtype uint32 for 32-bit ids)")
    tokens = np.memmap(file, dtype=TOKEN_DTYPES[dtype], mode="r")
    if dtype == "uint16" and _looks_32_bit(tokens):
        raise UsageError(f"{what} looks like 32-bit tokens read as 16-bit (every second uint16 is 0); "
                         "allowed: --token-dtype uint32 for this file, or write it as uint16")
    return tokens


def _looks_32_bit(tokens: np.ndarray) -> bool:
    """Little-endian 32-bit ids under 65536 read as uint16: every odd position is 0, the even ones are not."""
    sample = np.asarray(tokens[: 1 << 16])
    if len(sample) < 16:
        return False
    return not sample[1::2].any() and bool(sample[0::2].any())


def vocab_of(tokens: np.ndarray) -> int:
    """The largest id plus one, rounded up to VOCAB_MULTIPLE (read in chunks: the file stays mapped)."""
    largest = 0
    for start in range(0, len(tokens), 1 << 24):
        largest = max(largest, int(np.asarray(tokens[start:start + (1 << 24)]).max()))
    return -(-(largest + 1) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def check_window(count: int, seq_len: int, what: str) -> None:
    if count < seq_len + 1:
        raise UsageError(f"{what} holds {count:,} tokens, fewer than one window of seq_len + 1 = {seq_len + 1}; "
                         f"allowed: a longer file or --seq-len {max(1, count - 1)} or less")


def load_tokens(data: str, seq_len: int, dtype: str, seed: int) -> TokenData:
    """`tokens` (synthetic) or `tokens:PATH`, cut into windows; a file's last windows are held out."""
    if data == "tokens":
        train = synthetic_stream(SYNTHETIC_TOKENS, SYNTHETIC_VOCAB, seed)
        windows = TokenWindows(train, seq_len)
        check_window(len(train), seq_len, "data=tokens")
        # The same phrases in another order: held out in that no window repeats a training window.
        held = synthetic_stream(HELD_OUT_SYNTHETIC_WINDOWS * seq_len + 1, SYNTHETIC_VOCAB, seed, order_seed=seed + 1)
        return TokenData(windows, TokenWindows(held, seq_len), SYNTHETIC_VOCAB,
                         f"synthetic tokens (offline stand-in: {SYNTHETIC_PHRASES} random phrases of "
                         f"{SYNTHETIC_PHRASE_LEN} ids from {SYNTHETIC_VOCAB}), {len(windows)} windows of {seq_len}")
    path = data.split(":", 1)[1]
    tokens = read_token_file(path, dtype)
    check_window(len(tokens), seq_len, f"data=tokens:{path}")
    total = (len(tokens) - 1) // seq_len
    spare = int(total * HELD_OUT_SHARE) if total >= HELD_OUT_MIN_WINDOWS else 0
    train = TokenWindows(tokens, seq_len, 0, total - spare)
    held_out = TokenWindows(tokens, seq_len, total - spare, spare) if spare else None
    return TokenData(train, held_out, vocab_of(tokens),
                     f"token file {path} ({len(tokens):,} {dtype} tokens), {len(train)} windows of {seq_len}"
                     + (f", the last {spare} held out" if spare else ""))
