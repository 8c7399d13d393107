"""Traces of a plain user loop, written here by torch.profiler on the CPU, against the loop's own clock."""
from __future__ import annotations

import gzip
import re
import time

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, schedule

from workbench.trace import analyze
from workbench.trace.instrument import Instrument

from tests.trace.test_markers import tb_dataloader_share

ITEM_SLEEP_S, BATCH = 0.002, 8  # a slow disk: 16 ms per batch
ACTIVE = slice(2, 5)  # the schedule's recorded steps: wait 1, warm-up 1, active 3


class SlowItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1000

    def __getitem__(self, index: int):
        time.sleep(ITEM_SLEEP_S)
        return torch.randn(32), index % 4


def parts(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    return model, torch.optim.SGD(model.parameters(), lr=0.1), torch.utils.data.DataLoader(SlowItems(), batch_size=BATCH)


def train(model, optimizer, x, y) -> None:
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def plain_loop(steps: int, prof=None) -> tuple[list[float], list[float]]:
    """The user's loop, unchanged; returns its own clock: fetch and step seconds per iteration."""
    model, optimizer, loader = parts()
    waits, totals, batches = [], [], iter(loader)
    for _ in range(steps):
        start = time.perf_counter()
        x, y = next(batches)
        fetched = time.perf_counter()
        train(model, optimizer, x, y)
        waits.append(fetched - start)
        totals.append(time.perf_counter() - start)
        if prof is not None and prof.schedule is not None:
            prof.step()
    return waits, totals


def share(waits: list[float], totals: list[float], steps: slice) -> float:
    return sum(waits[steps]) / sum(totals[steps])


def test_plain_scheduled_trace_data_share_matches_the_loops_clock(tmp_path):
    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=3, repeat=1)) as prof:
        waits, totals = plain_loop(6, prof)
    prof.export_chrome_trace(str(tmp_path / "plain.pt.trace.json"))
    summary = analyze.summarize(tmp_path / "plain.pt.trace.json")
    assert summary["markers"]["steps"] == "ProfilerStep#N" and summary["steps"] == 3
    ours, clock = summary["breakdown_share"]["data_loading"], share(waits, totals, ACTIVE)
    assert ours == pytest.approx(clock, abs=0.03)
    assert summary["markers"]["optimizer_step"].startswith("Optimizer.step")
    assert summary["breakdown_share"]["backward"] > 0 and summary["breakdown_share"]["forward"] > 0
    # torch-tb-profiler 0.4.3 reads 0 on this (current-format) trace; ours is the loop's own figure.
    assert tb_dataloader_share(tmp_path / "plain.pt.trace.json", tmp_path) < 0.01 < clock


def test_trace_without_a_schedule_uses_optimizer_steps(tmp_path):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        waits, totals = plain_loop(5, prof)
    prof.export_chrome_trace(str(tmp_path / "nosched.pt.trace.json"))
    summary = analyze.summarize(tmp_path / "nosched.pt.trace.json")
    assert summary["markers"]["steps"].startswith("between Optimizer.step ends") and summary["steps"] == 4
    # Step k runs from the end of optimizer step k-1 to the end of step k: iterations 1..4.
    assert summary["breakdown_share"]["data_loading"] == pytest.approx(share(waits, totals, slice(1, 5)), abs=0.03)


def test_instrumented_loop_writes_the_workbench_layout_and_matches_the_clock(tmp_path):
    model, optimizer, loader = parts()
    inst = Instrument(tmp_path / "mine", device_type="cpu", functions=True)
    ends, starts = [], []
    with inst:
        for step, (x, y) in enumerate(inst.batches(loader)):
            starts.append(time.perf_counter())
            with inst.region("forward"):
                loss = nn.functional.cross_entropy(model(x), y)
            with inst.region("backward"):
                loss.backward()
            with inst.region("optimizer_step"):
                optimizer.step()
                optimizer.zero_grad()
            ends.append(time.perf_counter())
            if step == 6:
                break
    # ProfilerStep#k holds fetch k and body k: from the end of body k-1 to the end of body k.
    clock = sum(starts[k] - ends[k - 1] for k in (2, 3, 4)) / (ends[4] - ends[1])
    assert re.fullmatch(r".+_\d+\.\d+\.pt\.trace\.json\.gz", inst.trace_file.name)
    assert '"distributedInfo": {"rank": 0' in gzip.decompress(inst.trace_file.read_bytes()).decode()[:4096]
    doc = inst.report(show=False)
    assert doc["markers"]["data_loading"] == "workbench regions"
    assert doc["breakdown_share"]["data_loading"] == pytest.approx(clock, abs=0.03)
    assert doc["findings"][0]["rule"] == "data_loading"
    view = (tmp_path / "mine" / "function_profile.txt").read_text()
    assert "by self time" in view and "__getitem__" in view and "sleep" in view


def test_instrument_leaves_training_unchanged(tmp_path):
    torch.manual_seed(3)
    data = [(torch.randn(8, 32), torch.randint(0, 4, (8,))) for _ in range(7)]
    plain, optimizer, _ = parts(1)
    for x, y in data:
        train(plain, optimizer, x, y)
    traced, optimizer, _ = parts(1)
    inst = Instrument(tmp_path, device_type="cpu")
    with inst:
        for x, y in inst.batches(data):
            with inst.region("forward"):
                train(traced, optimizer, x, y)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), traced.parameters()))
    with pytest.raises(ValueError, match="data_loading"):
        inst.region("fwd")


def test_the_unprofiled_steps_after_the_trace_count_page_faults_per_step(tmp_path):
    """Counted, not timed: each step allocates 64 MiB afresh, which the kernel faults in (at least 32
    huge pages, 16,384 small ones); the steps counted are those after the step that wrote the trace."""
    inst = Instrument(tmp_path, device_type="cpu")
    with inst:
        for _ in range(12):
            torch.empty(16 << 20).fill_(1.0)
            inst.step()
    host = inst.host_cpu()
    assert host["steps"] == 12 - 5  # wait 1, warm-up 1, active 3: the 5th step's end wrote the trace
    assert host["minor_faults_per_step"] >= 16 and 0.0 <= host["system_time_share"] <= 1.0


def test_too_few_unprofiled_steps_report_no_host_figures(tmp_path):
    inst = Instrument(tmp_path, device_type="cpu")
    with inst:
        for _ in range(5 + 2):  # two steps after the trace
            inst.step()
    assert inst.host_cpu() is None
