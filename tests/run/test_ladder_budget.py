"""The memory budget end to end, as a user runs it: `workbench run --memory-budget ...` on tiny
settings, then `workbench report`. Which configuration wins depends on measured speed: not asserted;
what must hold whatever the machine does is (a budget no model meets cannot fit; a generous one must)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.training.data import write_synthetic_cifar

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--image-size", "16", "--batch-size", "8", "--warmup-steps", "1", "--timed-steps", "2", "--repeats", "1",
        "--rounds", "2", "--data", "synthetic", "--synthetic-per-batch", "64", "--no-wait"]

pytestmark = pytest.mark.slow


def workbench(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "workbench", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("budget")
    write_synthetic_cifar(cwd / "data", per_batch=64)
    return cwd


def verdicts(cwd: Path, run: str) -> dict:
    return json.loads((cwd / "reports" / run / "verdicts.json").read_text())


def stage(cwd: Path, run: str, name: str) -> dict:
    return json.loads((cwd / "reports" / run / "stages" / f"{name}.json").read_text())


def test_a_budget_nothing_meets_ends_in_nothing_fits_and_what_would(data_dir):
    # 1 MiB: ResNet-18's weights alone are 43 MiB, so no configuration can fit, whatever the timings. At
    # batch 64 the activations outweigh what the optimizer step holds, so moves are predicted to save.
    proc = workbench(data_dir, "run", "--stages", "amp", "--run-name", "tight", "--memory-budget", "1MiB", *TINY,
                     "--image-size", "32", "--batch-size", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    entry = verdicts(data_dir, "tight")["memory_budget"]
    assert not entry["fits"] and entry["chosen"] is None and entry["budget_mib"] == 1.0
    assert entry["text"].startswith("nothing measured fits the 1 MiB budget; the smallest was")
    assert "what would:" in entry["text"] and "-- memory budget: nothing measured fits" in proc.stderr
    moves = [p["name"] for p in entry["points"] if p["name"].startswith("budget+")]
    assert moves, entry["points"]
    for name in moves:  # each move measured, with its prediction beside the measurement
        doc = stage(data_dir, "tight", name)
        assert doc["memory_prediction"]["predicted_saving_mib"] > 0 and doc["memory_prediction"]["builds_on"]
        assert doc["memory_budget"]["fits"] is False
    report = workbench(data_dir, "report", "tight")
    assert report.returncode == 0, report.stderr[-2000:]
    text = (data_dir / "reports/tight/optimization_report.md").read_text()
    assert text.splitlines()[2].startswith("**nothing measured fits the 1 MiB budget")
    assert "## Memory budget: the frontier" in text and "predicted against measured" in text
    assert (data_dir / "reports/tight/memory_frontier.png").stat().st_size > 10_000


def test_a_generous_budget_keeps_the_configuration_the_speed_phases_chose(data_dir):
    proc = workbench(data_dir, "run", "--stages", "amp", "--run-name", "roomy", "--memory-budget", "8GiB", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = verdicts(data_dir, "roomy")["memory_budget"]
    # the speed phases' own answer fits, so it stays (whether amp was kept depends on this machine's timings)
    kept = "amp" if stage(data_dir, "roomy", "amp")["status"] == "kept" else "baseline"
    assert entry["fits"] and entry["chosen"] == kept
    assert not any(p["name"].startswith("budget+") for p in entry["points"])  # it fit: no move was needed
    assert entry["text"].startswith("fits: ")


def test_the_optimizer_state_stages_are_trade_offs_with_the_loss_beside_them(data_dir):
    pytest.importorskip("bitsandbytes")
    proc = workbench(data_dir, "run", "--stages", "optimizer_8bit,adafactor", "--run-name", "states", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = stage(data_dir, "states", "baseline")["metrics"]["memory_breakdown_mb"]["optimizer_state"]
    for name, kind in (("optimizer_8bit", "adam8bit"), ("adafactor", "adafactor")):
        doc = stage(data_dir, "states", name)
        assert doc["status"] == "tradeoff" and doc["changes"] == "optimizer" and doc["config"]["optimizer"] == kind
        assert doc["metrics"]["loss_finite"] and doc["metrics"]["eval_accuracy"] is not None
        # the tensors' own sizes: no machine changes them
        assert doc["metrics"]["memory_breakdown_mb"]["optimizer_state"] < 0.4 * base


def test_zero1_and_fsdp2_shard_state_across_two_processes_under_torchrun(data_dir):
    proc = workbench(data_dir, "run", "--nproc", "2", "--stages", "zero1,fsdp", "--run-name", "sharded", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = stage(data_dir, "sharded", "baseline")["metrics"]["memory_breakdown_mb"]
    zero = stage(data_dir, "sharded", "zero1")
    fsdp = stage(data_dir, "sharded", "fsdp")
    assert zero["status"] == fsdp["status"] == "tradeoff" and fsdp["config"]["sharding"] == "fsdp"
    assert zero["metrics"]["world_size"] == 2
    # Rank 0's own tensors (no machine changes their sizes): ZeRO-1 halves the optimizer state, FSDP2
    # the weights, gradients and state alike; DDP holds all of each on every rank.
    zero_parts, fsdp_parts = zero["metrics"]["memory_breakdown_mb"], fsdp["metrics"]["memory_breakdown_mb"]
    assert zero_parts["optimizer_state"] == pytest.approx(ddp["optimizer_state"] / 2, rel=0.02)
    assert zero_parts["weights"] == pytest.approx(ddp["weights"])
    for part in ("weights", "gradients", "optimizer_state"):
        assert fsdp_parts[part] == pytest.approx(ddp[part] / 2, rel=0.02), part
    assert fsdp["memory_prediction"]["predicted_saving_mib"] == pytest.approx(
        (ddp["weights"] + ddp["gradients"] + ddp["optimizer_state"]) / 2, rel=0.01)
