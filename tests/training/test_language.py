"""Language models: token files (and bad ones), the model contracts, the first-batch check, block discovery,
attention facts and the stages that skip on them. No test here asserts a measured speed."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.training import nanogpt_style
from workbench.config import RunConfig, checkpoint_picks, for_machine
from workbench.device import Capabilities
from workbench.errors import StageSkipped, UsageError
from workbench.run import stages
from workbench.run.console import one_line
from workbench.training import attention, gpt, language, tokens
from workbench.training.data import DataSpec
from workbench.training.model import (Checkpointed, apply_all, build_model, first_batch_facts,
                                      natural_block_count, natural_blocks, wrap_checkpoints)

HERE = Path(__file__).parent


def write_tokens(path: Path, count: int, vocab: int = 90, dtype=np.uint16) -> Path:
    np.random.default_rng(0).integers(0, vocab, size=count).astype(dtype).tofile(path)
    return path


# --- token files -------------------------------------------------------------------------------

def test_token_file_is_cut_into_shifted_windows_with_the_last_ones_held_out(tmp_path):
    path = write_tokens(tmp_path / "train.bin", 16 * 100 + 1)
    data = tokens.load_tokens(f"tokens:{path}", 16, "uint16", 0)
    raw = np.fromfile(path, dtype=np.uint16)
    ids, targets = data.train[3]
    assert ids.dtype == torch.int64 and ids.shape == (16,)
    assert ids.tolist() == raw[48:64].tolist() and targets.tolist() == raw[49:65].tolist()
    assert len(data.train) == 95 and len(data.held_out) == 5  # the last 5% held out
    assert data.held_out[0][0].tolist() == raw[95 * 16:96 * 16].tolist()
    assert data.vocab_size == 128  # the largest id (< 90) plus one, rounded up to 64


def test_uint32_files_are_read_with_token_dtype(tmp_path):
    path = write_tokens(tmp_path / "big.bin", 200, vocab=70000, dtype=np.uint32)
    data = tokens.load_tokens(f"tokens:{path}", 8, "uint32", 0)
    largest = int(np.fromfile(path, dtype=np.uint32).max())
    assert largest > 65535 and data.vocab_size > largest and data.vocab_size % 64 == 0


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.write_bytes(b"\x01\x00\x02"), "not a whole number of uint16 tokens"),
    (lambda p: np.save(p, np.arange(100, dtype=np.uint16)), "is a .npy file"),
    (lambda p: np.arange(1, 200, dtype=np.uint32).tofile(p), "looks like 32-bit tokens"),
    (lambda p: np.arange(10, dtype=np.uint16).tofile(p), "fewer than one window"),
    (lambda p: None, "no such file"),
])
def test_bad_token_files_get_one_line(tmp_path, make, expected):
    path = tmp_path / "train.bin"
    make(path)
    if not path.exists() and (tmp_path / "train.bin.npy").exists():
        (tmp_path / "train.bin.npy").rename(path)
    with pytest.raises(UsageError, match=expected) as error:
        tokens.load_tokens(f"tokens:{path}", 16, "uint16", 0)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_bad_token_file_from_the_command_line_exits_2_and_writes_nothing(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    done = subprocess.run([sys.executable, "-m", "workbench", "run", "--model", "gpt", "--data",
                           f"tokens:{tmp_path / 'odd.bin'}", "--device", "cpu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "not a whole number of uint16 tokens" in done.stderr
    assert not (tmp_path / "reports").exists() and not (tmp_path / "profiles").exists()


def test_synthetic_tokens_are_learnable_and_held_out_differs():
    data = tokens.load_tokens("tokens", 32, "uint16", 0)
    assert data.vocab_size == tokens.SYNTHETIC_VOCAB and len(data.train) > 1000
    train_windows = {tuple(data.train[i][0].tolist()) for i in range(200)}
    assert tuple(data.held_out[0][0].tolist()) not in train_windows
    # Within a phrase the next token is certain: the stream repeats phrase-book entries.
    stream = tokens.synthetic_stream(4096, 2048, 0)
    phrases = {tuple(stream[i:i + tokens.SYNTHETIC_PHRASE_LEN]) for i in range(0, 4096, tokens.SYNTHETIC_PHRASE_LEN)}
    assert len(phrases) <= tokens.SYNTHETIC_PHRASES


# --- configuration -------------------------------------------------------------------------------

def test_gpt_defaults_to_synthetic_tokens_and_names_seq_len_in_its_defaults_line():
    cfg, line = for_machine(model="gpt", device="cpu")
    assert cfg.seq_len == 128 and "seq_len=128" in line and "image_size" not in line
    _, given = for_machine(model="gpt", device="cpu", seq_len=64, batch_size=8)
    assert given == ""


@pytest.mark.parametrize("fields, expected", [
    ({"model": "gpt", "data": "cifar10"}, "is a language model"),
    ({"model": "resnet18", "data": "tokens"}, "holds tokens"),
    ({"data": "tokens:"}, "needs a path"),
    ({"model": "gpt", "seq_len": 0}, "seq_len=0 is too small"),
    ({"model": "gpt", "loss_chunks": 0}, "loss_chunks=0 is too small"),
    ({"model": "gpt", "token_dtype": "int8"}, "token_dtype='int8'"),
    ({"checkpointing": "every:0"}, "every:K"),
    ({"attention": "sparse"}, "attention='sparse'"),
])
def test_bad_language_model_settings_are_refused(fields, expected):
    with pytest.raises(UsageError, match=expected):
        RunConfig(**fields)


# --- the model contracts ---------------------------------------------------------------------------

class LogitsOnly(nn.Module):
    def __init__(self, vocab: int = 96) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, ids):
        return self.head(self.embed(ids))


class WithLogitsAttribute(LogitsOnly):
    """A Hugging Face-style output object."""

    def forward(self, input_ids, attention_mask=None):
        return type("Output", (), {"logits": super().forward(input_ids), "loss": None})()


class SmallHead(LogitsOnly):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 16)


def _batch(vocab: int = 90):
    ids = torch.randint(0, vocab, (2, 8))
    return ids, torch.roll(ids, -1, dims=1)


@pytest.mark.parametrize("model", [LogitsOnly(), WithLogitsAttribute()])
def test_logits_contracts_get_the_next_token_cross_entropy(model):
    ids, targets = _batch()
    expected = F.cross_entropy(language.logits_of(model(ids)).reshape(-1, 96), targets.reshape(-1))
    assert torch.allclose(language.language_model_loss(model, (ids, targets)), expected)


def test_a_nanogpt_forward_gets_the_targets_and_its_own_loss_is_used():
    model = nanogpt_style.build()
    ids, targets = _batch()
    assert language.takes_targets(model) and not language.takes_targets(LogitsOnly())
    _, own = model(ids, targets)
    assert torch.allclose(language.language_model_loss(model, (ids, targets)), own)
    language.check_first_batch(model, ids, targets, "nanogpt_style:build")  # fits: no error
    assert language.takes_targets(torch.compile(model))  # through compile's wrapper (not compiled: never called)


@pytest.mark.parametrize("model, expected", [
    (LogitsOnly(vocab=16), "a token embedding of 16 rows, but the data holds ids up to"),
    (SmallHead(), "16 logits per position, but the data holds ids up to"),
    (nn.Linear(8, 8), "cannot train on the first batch: fed ids (2, 8) int64"),
])
def test_first_batch_check_says_what_was_fed_and_what_the_model_did(model, expected):
    with pytest.raises(UsageError) as error:
        language.check_first_batch(model, *_batch(), "mine:build")
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_first_batch_of_images_into_a_language_model_says_so():
    images = torch.zeros(4, 3, 8, 8)
    spec = DataSpec([(images[0], 1), (images[1], 2)], 10, "images")
    with pytest.raises(UsageError, match=r"fed images \(2, 3, 8, 8\) float32.*--data tokens"):
        first_batch_facts(f"{__name__}:build_lm", spec)


def build_lm():
    return LogitsOnly()


# --- blocks, attention, and the stages that ask about them ------------------------------------------

def test_blocks_are_found_where_transformers_keep_them():
    nano = nanogpt_style.build()
    assert natural_block_count(nano) == nanogpt_style.LAYERS
    assert wrap_checkpoints(nano) == [f"transformer.h.{i}" for i in range(nanogpt_style.LAYERS)]
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), num_layers=4,
                                    enable_nested_tensor=False)
    assert wrap_checkpoints(encoder, "every:2") == ["layers.0", "layers.2"]
    built = gpt.build_gpt("gpt", 64, 16)
    assert wrap_checkpoints(built, "blocks:1") == ["blocks.0"] and len(natural_blocks(built)) == 4
    assert checkpoint_picks("every:3", 7) == [0, 3, 6] and checkpoint_picks("blocks:2", 7) == [0, 1]


def test_checkpointed_transformer_layers_train_to_the_same_gradients():
    torch.manual_seed(0)
    plain = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), num_layers=2,
                                  enable_nested_tensor=False)
    wrapped = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), num_layers=2,
                                    enable_nested_tensor=False)
    wrapped.load_state_dict(plain.state_dict())
    wrap_checkpoints(wrapped)
    assert isinstance(wrapped.layers[0], Checkpointed)
    x = torch.randn(2, 5, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    for model in (plain, wrapped):  # a keyword mask passes through the wrapper
        model(x, mask=mask, is_causal=True).sum().backward()
    for a, b in zip(plain.parameters(), wrapped.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_attention_facts_tell_sdpa_from_attention_by_hand(tmp_path):
    ids, targets = _batch()
    facts = lambda model: attention.attention_facts(lambda: language.forward(model, ids, targets))
    assert facts(nanogpt_style.build())["attention"] == "sdpa"
    assert facts(nanogpt_style.build_by_hand())["attention"] == "by_hand"
    assert facts(LogitsOnly())["attention"] == "none"


def test_first_batch_facts_of_a_token_model(tmp_path):
    path = write_tokens(tmp_path / "t.bin", 2000)
    spec = DataSpec(tokens.load_tokens(f"tokens:{path}", 16, "uint16", 0).train, 128, "t", tokens_per_sample=16)
    facts = first_batch_facts("tests.training.nanogpt_style:build", spec)
    assert facts["attention"] == "sdpa" and not facts["convolutions"] and facts["natural_blocks"] == 3
    assert facts["blocks_found"].startswith("transformer.h.0..2 (Block)")
    with pytest.raises(UsageError, match="data holds ids up to"):
        first_batch_facts("tests.training.nanogpt_style:build_small_vocab", spec)


CPU = Capabilities("bf16", "native", False, False, False, True)


def _ctx(device="cpu", capability=None, **facts):
    return stages.StageContext(device, CPU, capability=capability, model_facts=facts)


def test_stages_that_cannot_apply_to_a_language_model_skip_up_front():
    cfg = RunConfig(model="gpt")
    no_convs = _ctx(attention="sdpa", convolutions=False, natural_blocks=4)
    for stage, expected in ((stages.channels_last, "has none"), (stages.batched_input, "token windows"),
                            (stages.decode_on_device, "token windows")):
        with pytest.raises(StageSkipped, match=expected):
            stage(cfg, no_convs)
    with pytest.raises(StageSkipped, match="no natural blocks"):
        stages.checkpointing(RunConfig(), _ctx(natural_blocks=0))
    assert stages.checkpointing(cfg, no_convs).checkpointing == "blocks"


def test_attention_stages_follow_the_model_and_the_device():
    cfg = RunConfig(model="gpt")
    assert stages.attention_flash(cfg, _ctx("cuda", (8, 0), attention="sdpa")).attention == "flash"
    with pytest.raises(StageSkipped, match="already runs its flash kernel"):
        stages.attention_flash(cfg, _ctx(attention="sdpa"))
    assert stages.attention_math(cfg, _ctx(attention="sdpa")).attention == "math"
    with pytest.raises(StageSkipped, match="not offered on this cpu"):
        stages.attention_efficient(cfg, _ctx(attention="sdpa"))
    with pytest.raises(StageSkipped, match="by hand"):
        stages.attention_flash(cfg, _ctx("cuda", (8, 0), attention="by_hand"))
    with pytest.raises(StageSkipped, match="calls no"):
        stages.attention_flash(cfg, _ctx("cuda", (8, 0), attention="none"))
    assert attention.offered("cuda", (9, 0)) == ("flash", "efficient", "cudnn", "math")
    assert attention.offered("cuda", (7, 5)) == ("efficient", "math")
    assert stages.attention_cudnn(cfg, _ctx("cuda", (9, 0), attention="sdpa")).attention == "cudnn"
    assert "attention_flash" in stages.STAGE_NAMES and "attention_math" not in [s.name for s in stages.select(None)]


def test_a_pinned_backend_runs_and_matches_auto():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 4, requires_grad=True) for _ in range(3))
    with attention.kernel("math"):
        pinned = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with attention.kernel("auto"):
        auto = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(pinned, auto, atol=1e-5)


# --- units -----------------------------------------------------------------------------------------

def test_console_line_shows_tokens_per_second_beside_samples():
    metrics = {"throughput": {"median": 10.0, "ci95_low": 9.0, "ci95_high": 11.0}, "step_time_s": {"median": 0.1},
               "peak_memory_mb": 100, "final_loss": 1.0, "tokens_per_sample": 128}
    line = one_line({"stage": "baseline", "status": "baseline", "reason": "r", "metrics": metrics})
    assert "10.0 samples/s [9.0, 11.0] = 1,280 tokens/s [1,152, 1,408]" in line


def test_the_built_in_gpt_trains():
    model = build_model("gpt", 64, 16)
    ids = torch.randint(0, 64, (2, 16))
    loss = language.language_model_loss(model, (ids, torch.roll(ids, -1, 1)))
    loss.backward()
    assert abs(loss.item() - np.log(64)) < 0.5 and model.head.weight is model.token_embedding.weight
    model, notes = apply_all(model, "contiguous", "every:2", "none", torch.device("cpu"))
    assert notes["checkpointed_blocks"] == ["blocks.0", "blocks.2"]


# --- findings for language models ----------------------------------------------------------------

from workbench.trace import diagnose  # noqa: E402


def _ops(*names):
    return {"top_ops": [{"name": n, "device": "cpu", "share": 0.1, "calls": 1, "self_ms": 1.0} for n in names]}


def test_attention_by_hand_is_found_from_the_model_or_from_a_trace_alone():
    by_hand = diagnose.rule_attention_by_hand(_ops("aten::mm", "aten::bmm", "aten::_softmax"), {})
    assert by_hand["rule"] == "attention_by_hand" and "scaled_dot_product_attention" in by_hand["action"]
    assert diagnose.rule_attention_by_hand(
        _ops("aten::_softmax", "aten::_scaled_dot_product_flash_attention_for_cpu"), {}) is None
    assert diagnose.rule_attention_by_hand(_ops("aten::mm"), {"attention": "by_hand"})["rule"] == "attention_by_hand"
    assert diagnose.rule_attention_by_hand(_ops("aten::_softmax", "aten::bmm"), {"attention": "sdpa"}) is None


def test_logits_finding_gives_the_figure_against_the_peak():
    context = {"logits": {"batch": 32, "seq_len": 128, "vocab": 50304}, "peak_memory_mb": 4000.0}
    finding = diagnose.rule_logits({}, context)
    assert finding["rule"] == "logits" and "32 x 128 x 50,304 in fp32 = 786 MiB" in finding["evidence"]
    assert finding["value"] == pytest.approx(3 * 786.0 / 4000, rel=1e-3)
    small = {"logits": {"batch": 32, "seq_len": 128, "vocab": 2048}, "peak_memory_mb": 4000.0}
    assert diagnose.rule_logits({}, small) is None


def test_chunked_loss_is_the_same_loss_without_all_the_logits():
    torch.manual_seed(0)
    whole = build_model("gpt", 64, 16)
    chunked = build_model("gpt", 64, 16, loss_chunks=4)
    chunked.load_state_dict(whole.state_dict())
    ids = torch.randint(0, 64, (2, 16))
    targets = torch.roll(ids, -1, 1)
    losses = [language.language_model_loss(model, (ids, targets)) for model in (whole, chunked)]
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    for loss in losses:
        loss.backward()
    assert torch.allclose(whole.head.weight.grad, chunked.head.weight.grad, atol=1e-5)
    assert stages.chunked_loss(RunConfig(model="gpt"), _ctx()).loss_chunks == stages.LOSS_CHUNKS
    with pytest.raises(StageSkipped, match="built-in"):
        stages.chunked_loss(RunConfig(model="mine:build", data="tokens"), _ctx())
    with pytest.raises(UsageError, match="loss_chunks=4 needs a built-in GPT"):
        RunConfig(model="resnet18", loss_chunks=4)


def test_a_checkpointed_block_copies_and_pickles():
    import copy
    import pickle

    block = Checkpointed(nn.Linear(2, 2))
    assert isinstance(copy.deepcopy(block).inner, nn.Linear)
    assert pickle.loads(pickle.dumps(block)).in_features == 2  # read through to the inner layer
