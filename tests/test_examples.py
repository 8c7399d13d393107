"""Every script in examples/ runs, at a tiny size, and writes what its docstring says it writes: a smoke
test, so an example that stops working fails the suite."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--tiny", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def test_every_example_is_tested_here():
    tested = {"own_loop.py", "lightning_fit.py", "own_model.py", "language_model.py", "straggler.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested
    for path in EXAMPLES.glob("*.py"):
        assert path.read_text().startswith('"""'), f"{path.name} needs a docstring saying what it shows"


def test_own_loop(tmp_path):
    done = run_example("own_loop.py", tmp_path)
    assert list((tmp_path / "profiles" / "example-own-loop").glob("*.pt.trace.json.gz"))
    assert "forward" in done.stdout + done.stderr


def test_lightning_fit(tmp_path):
    pytest.importorskip("lightning")
    done = run_example("lightning_fit.py", tmp_path)
    assert list((tmp_path / "profiles" / "example-lightning" / "rank0").glob("*.pt.trace.json.gz"))
    assert "findings:" in done.stdout


def test_own_model(tmp_path):
    done = run_example("own_model.py", tmp_path)
    run = tmp_path / "reports" / "example-own-model"
    assert (run / "stages" / "baseline.json").is_file() and (run / "optimization_report.md").is_file()
    assert "fused_optimizer" in done.stdout


def test_language_model(tmp_path):
    done = run_example("language_model.py", tmp_path)
    run = tmp_path / "reports" / "example-gpt"
    assert (run / "what_to_change.md").is_file() and "tokens/s" in done.stdout
    assert "checkpointing" in done.stdout


def test_straggler(tmp_path):
    done = run_example("straggler.py", tmp_path, "--port", str(29500 + os.getpid() % 400))
    folder = tmp_path / "profiles" / "example-straggler"
    assert len(list(folder.glob("rank*.pt.trace.json.gz"))) == 2
    assert "straggler" in done.stdout
