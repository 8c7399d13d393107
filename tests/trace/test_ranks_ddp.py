"""The per-rank reading on real traces: a plain DDP loop (tests/trace/ddp_traces.py) on two CPU
processes with gloo, a 60 ms stall injected on rank 1, against a balanced control.

The stall is ten times a step of the tiny model, so naming rank 1 and its cause is certain; the
balanced control must name no straggler however the shared machine's noise falls."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.trace import explain, ranks

from tests.trace import ddp_traces

pytestmark = pytest.mark.slow
SCRIPT = Path(ddp_traces.__file__)
LAUNCH_TIMEOUT_S = 120  # two interpreters, four short cases: ~10 s on two cores


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> Path:
    """Every case's rank traces, written once per session by one torchrun launch."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(SCRIPT), str(out), *ddp_traces.CASES],
                          env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def straggler(folder: Path) -> dict | None:
    return next((f for f in ranks.read_folder(folder)["findings"] if f["rule"] == "straggler"), None)


def test_balanced_control_names_no_straggler(traces):
    reading = ranks.read_folder(traces / "balanced")
    assert [row["rank"] for row in reading["ranks"]] == [0, 1]
    assert straggler(traces / "balanced") is None


def test_loader_stall_is_rank_1_input(traces):
    found = straggler(traces / "loader")
    assert (found["rank"], found["cause"]) == (1, "input")
    assert found["value"] > 0.5 * ddp_traces.STALL_S * 1000
    rows = ranks.read_folder(traces / "loader")["ranks"]
    # Rank 0 waits for rank 1's batches in the all-reduce; rank 1 hardly waits.
    assert rows[0]["waiting_ms"] > rows[1]["waiting_ms"] + 0.5 * ddp_traces.STALL_S * 1000


def test_slow_backward_is_rank_1_compute(traces):
    found = straggler(traces / "backward")
    assert (found["rank"], found["cause"]) == (1, "compute")
    assert "most of it in backward" in found["evidence"]


def test_slow_backward_hidden_by_the_all_reduce_is_rank_1_compute(traces):
    """With loss.backward() in a region, rank 0's backward region holds its wait: as long as rank 1's."""
    rows = ranks.read_folder(traces / "backward_region")["ranks"]
    assert rows[0]["backward_ms"] > 0.5 * ddp_traces.STALL_S * 1000
    found = straggler(traces / "backward_region")
    assert (found["rank"], found["cause"]) == (1, "compute")


def test_analyze_prints_the_table_and_the_straggler(traces):
    text = explain.format_text(explain.document([str(traces / "loader")]))
    assert "per rank (2 traces" in text and "straggler: Rank 1 holds the others back (input)" in text
