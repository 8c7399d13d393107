"""A causal language model through the whole command line: a nanoGPT-style model (code the workbench did
not write) given as module:function, a token file, --seq-len; and the built-in gpt on synthetic tokens."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tests.test_byo import results_of, workbench

HERE = Path(__file__).parent
TINY = ["--batch-size", "4", "--warmup-steps", "1", "--timed-steps", "2", "--repeats", "1", "--rounds", "1",
        "--order", "fixed"]


def test_own_causal_lm_on_a_token_file(tmp_path):
    shutil.copy(HERE / "training" / "nanogpt_style.py", tmp_path / "mygpt.py")
    np.random.default_rng(0).integers(0, 90, size=16 * 200 + 1).astype(np.uint16).tofile(tmp_path / "train.bin")
    proc = workbench("run", "--model", "mygpt:build", "--data", "tokens:train.bin", "--seq-len", "16",
                     "--stages", "channels_last,attention_flash,checkpointing", "--run-name", "lm", *TINY,
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "config: model=mygpt:build seq_len=16" in proc.stderr
    assert "decision model: transformer.h.0..2 (Block); no convolutions; attention through" in proc.stderr
    assert "tokens/s" in proc.stderr
    results = results_of(tmp_path, "lm")
    assert results["channels_last"]["status"] == "skipped" and "has none" in results["channels_last"]["reason"]
    checkpointing = results["checkpointing"]
    assert checkpointing["status"] == "tradeoff", checkpointing.get("reason")
    assert checkpointing["decisions"]["checkpointed_blocks"] == ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    assert "already runs its flash kernel" in results["attention_flash"]["reason"]  # a CPU: skipped up front
    metrics = results["baseline"]["metrics"]
    assert metrics["tokens_per_sample"] == 16
    assert abs(metrics["tokens_per_s"]["median"] - 16 * metrics["throughput"]["median"]) < 1e-6
    assert metrics["eval_accuracy"] is not None  # next-token accuracy on the file's held-out windows
    assert all(r["config"]["model"] == "mygpt:build" for r in results.values())
    assert "token file train.bin" in results["baseline"]["data"]

    report = workbench("report", "lm", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    run = tmp_path / "reports" / "lm"
    text = (run / "optimization_report.md").read_text()
    assert "tokens/s" in text and "what_to_change.md" in text
    assert (run / "what_to_change.md").read_text().startswith("# What to change in your training script for mygpt:build")
    assert not (run / "optimized_training.py").exists()
    assert "throughput_tokens_per_s" in (run / "optimization_results.csv").read_text().splitlines()[0]


def test_a_model_that_wants_images_fed_tokens_fails_in_one_line(tmp_path):
    (tmp_path / "cnn.py").write_text("from torch import nn\n\ndef build(vocab_size=10):\n"
                                     "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(vocab_size))\n")
    proc = workbench("run", "--model", "cnn:build", "--data", "tokens", "--seq-len", "8", *TINY, cwd=tmp_path)
    assert proc.returncode == 2
    assert "cannot train on the first batch: fed ids (2, 8) int64" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "reports").exists()
