"""Bring your own model and data, more than one process, and the ladder from Python."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from workbench.api import optimize
from workbench.config import RunConfig
from workbench.training.data import write_synthetic_cifar

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "16", "--batch-size", "4", "--warmup-steps", "1", "--timed-steps", "2", "--repeats", "1",
        "--rounds", "2", "--order", "fixed"]
FACTORY_MODULE = '''
from torch import nn

def build(num_classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

class Flat(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))

def flat(num_classes):
    return Flat(num_classes)
'''


def write_imagefolder(root: Path, classes=("cats", "dogs", "owls"), per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 * index + 40, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def workbench(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{cwd}"}
    return subprocess.run([sys.executable, "-m", "workbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def results_of(cwd: Path, run: str) -> dict[str, dict]:
    from workbench.results import load_stage_results

    return {result["stage"]: result for result in load_stage_results(cwd / "reports" / run)}


def test_resnet50_on_an_imagefolder(tmp_path):
    images = write_imagefolder(tmp_path / "pets")
    proc = workbench("run", "--model", "resnet50", "--data", f"imagefolder:{images}", "--stages", "checkpointing",
                     "--no-trace", "--run-name", "r50", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_of(tmp_path, "r50")
    assert results["baseline"]["status"] == "baseline"
    assert "ImageFolder" in results["baseline"]["data"] and "24 images" in results["baseline"]["data"]
    assert results["checkpointing"]["decisions"]["checkpointed_blocks"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert results["checkpointing"]["config"]["model"] == "resnet50"


def test_user_factory_and_a_model_checkpointing_cannot_wrap(tmp_path):
    (tmp_path / "mymodels.py").write_text(FACTORY_MODULE)
    write_synthetic_cifar(tmp_path / "data", per_batch=32)
    common = ["--data", "synthetic", "--stages", "channels_last,checkpointing", "--no-trace", *TINY]
    proc = workbench("run", "--model", "mymodels:build", "--run-name", "mine", *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mine = results_of(tmp_path, "mine")
    assert mine["checkpointing"]["decisions"]["checkpointed_blocks"] == ["0-2", "3-5", "6"]  # sqrt(n) segments
    proc = workbench("run", "--model", "mymodels:flat", "--run-name", "flat", *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    flat = results_of(tmp_path, "flat")
    assert flat["checkpointing"]["status"] == "skipped"
    assert "no natural blocks" in flat["checkpointing"]["reason"]


def test_two_process_ddp_ladder(tmp_path):
    write_synthetic_cifar(tmp_path / "data", per_batch=64)
    proc = workbench("run", "--nproc", "2", "--stages", "baseline", "--run-name", "ddp", "--data", "synthetic",
                     *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    baseline = results_of(tmp_path, "ddp")["baseline"]
    metrics = baseline["metrics"]
    assert metrics["world_size"] == 2 and metrics["samples_per_step"] == 8
    scaling = metrics["scaling"]
    assert scaling["world_size"] == 2 and scaling["efficiency"] > 0
    assert [row["rank"] for row in scaling["communication_per_rank"]] == [0, 1]
    assert 0 < scaling["communication_share"] < 1
    traces = sorted((tmp_path / "profiles/ddp/baseline").glob("rank*.pt.trace.json.gz"))
    ranks = [json.loads(gzip.open(t).read())["distributedInfo"]["rank"] for t in traces]
    assert sorted(ranks) == [0, 1]


class SlowImages(Dataset):
    """An input pipeline that waits 2 ms per item (a slow disk, say): the data-loading share is large."""

    classes = ["a", "b"]

    def __len__(self) -> int:
        return 512

    def __getitem__(self, index: int):
        time.sleep(0.002)
        return torch.randn(3, 32, 32), index % 2


def busy_net(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def test_slow_input_pipeline_is_found_and_fixed_from_python(tmp_path):
    cfg = RunConfig(image_size=32, batch_size=8, warmup_steps=2, timed_steps=6, rounds=2, order="fixed", run_name="slow",
                    reports_dir=str(tmp_path / "reports"), profiles_dir=str(tmp_path / "profiles"))
    results = optimize(cfg, model_factory=busy_net, dataset=SlowImages(), stages="dataloader", log=lambda m: None)
    baseline, loader = results[:2]
    shares = [json.loads(Path(r["trace"]["summary_json"]).read_text())["breakdown_share"]["data_loading"]
              for r in results]
    assert "data_loading" in [f["rule"] for f in baseline["findings"]]
    assert loader["config"]["num_workers"] >= 1
    assert shares[1] < shares[0] / 2, shares
    assert loader["prediction"]["predicted_to_help"] is True
