"""--memory-budget: sizes and shares read right, bad budgets refused in one line before anything is written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.config import RunConfig
from workbench.errors import UsageError
from workbench.memory_budget import fits, parse

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, mib", [("512MiB", 512.0), ("12GiB", 12 * 1024.0), ("1.5 GiB", 1536.0),
                                       ("2048KiB", 2.0), ("1GB", 1e9 / 2**20), ("500mb", 500e6 / 2**20)])
def test_sizes(text, mib):
    assert parse(text).mib == pytest.approx(mib)


def test_a_share_is_resolved_on_the_device():
    budget = parse("80%")
    assert budget.share == pytest.approx(0.8) and budget.resolve(1000.0) == pytest.approx(800.0)
    with pytest.raises(UsageError, match="share of the device's memory, which is unknown"):
        budget.resolve(None)


def test_no_budget_and_fitting():
    assert parse("") is None and parse("  ") is None
    assert fits(511.9, 512.0) and fits(512.0, 512.0) and not fits(512.1, 512.0) and not fits(None, 512.0)


@pytest.mark.parametrize("text, words", [("lots", "is not a size"), ("512", "no unit I know (none)"),
                                         ("12XB", "no unit I know (xb)"), ("0%", "out of range"), ("150%", "out of range"),
                                         ("100KiB", "under 1 MiB"), ("-5GiB", "is not a size")])
def test_bad_budgets_name_the_value_and_what_is_allowed(text, words):
    with pytest.raises(UsageError) as error:
        RunConfig(memory_budget=text)
    message = str(error.value)
    assert words in message and repr(text) in message and "\n" not in message


@pytest.mark.parametrize("budget", ["12XB", "30TiB"])
def test_a_bad_budget_on_the_command_line_exits_2_before_anything_is_written(tmp_path, budget):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "workbench", "run", "--memory-budget", budget, "--data", "synthetic",
                           "--no-wait"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and f"memory_budget={budget!r}" in proc.stderr
    assert not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("field, value, allowed", [("sharding", "zero3", "none, zero1, fsdp"),
                                                   ("optimizer", "adam4bit", "adam8bit, adamw8bit, adafactor")])
def test_the_new_memory_settings_refuse_a_bad_value_in_one_line(field, value, allowed):
    with pytest.raises(UsageError) as error:
        RunConfig(**{field: value})
    assert repr(value) in str(error.value) and allowed in str(error.value)
