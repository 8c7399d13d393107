"""Lightning: the workbench's callback during a real fit, and the traces Lightning's own
PyTorchProfiler writes, both against the fit's own clock."""
from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from workbench.trace import analyze, explain  # noqa: E402
from workbench.trace.lightning import WorkbenchCallback  # noqa: E402
from tests.trace.test_instrument import SlowItems  # noqa: E402


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Clock(pl.Callback):
    """The fit's own clock: when each batch starts and ends."""

    def __init__(self) -> None:
        self.starts, self.ends = [], []

    def on_train_batch_start(self, *args) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, *args) -> None:
        self.ends.append(time.perf_counter())


def fit(tmp_path, callbacks, **kwargs) -> None:
    torch.manual_seed(0)
    trainer = pl.Trainer(max_steps=7, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=callbacks, **kwargs)
    trainer.fit(Net(), torch.utils.data.DataLoader(SlowItems(), batch_size=8))


def test_callback_traces_fit_in_the_workbench_layout(tmp_path):
    clock, callback = Clock(), WorkbenchCallback(tmp_path / "fit", report=False)
    # The clock first: the callback writes the trace in on_train_batch_end, which is not training time.
    fit(tmp_path, [clock, callback])
    trace_file = next((tmp_path / "fit" / "rank0").glob("*.pt.trace.json.gz"))
    assert callback.result["trace_file"] == str(trace_file)
    assert set(callback.result["markers"].values()) >= {"ProfilerStep#N", "workbench regions"}
    # ProfilerStep#k runs from the end of batch k-1 to the end of batch k; the fetch lies between.
    waits = sum(clock.starts[k] - clock.ends[k - 1] for k in (2, 3, 4))
    expected = waits / (clock.ends[4] - clock.ends[1])
    share = callback.result["breakdown_share"]
    assert share["data_loading"] == pytest.approx(expected, abs=0.03)
    assert min(share["forward"], share["backward"], share["optimizer_step"]) > 0
    assert callback.result["findings"][0]["rule"] == "data_loading"


def test_lightning_pytorch_profiler_trace_is_read(tmp_path):
    clock = Clock()
    profiler = pl.profilers.PyTorchProfiler(dirpath=tmp_path / "prof", filename="fit", export_to_chrome=True)
    fit(tmp_path, [clock], profiler=profiler)
    path = next((tmp_path / "prof").glob("*.pt.trace.json"))
    summary = explain.analyze_file(path)
    markers = summary["markers"]
    assert "Lightning train_dataloader_next" in markers["data_loading"]
    assert markers["forward"] == "Lightning training_step" and markers["backward"] == "Lightning backward"
    rows = analyze.step_breakdown(analyze.load_trace(path))
    # Each profiled step holds one fetch: its time is one of the fit's own fetch waits.
    fetch_ms = statistics.fmean(row["data_loading_ms"] for row in rows)
    waits_ms = [1000 * (start - end) for start, end in zip(clock.starts[1:], clock.ends)]
    assert min(waits_ms) * 0.8 < fetch_ms < max(waits_ms) * 1.05
    assert summary["breakdown_share"]["data_loading"] > 0.1  # the profiled compute is noisy; the fetch is not
