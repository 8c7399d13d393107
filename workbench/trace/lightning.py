"""A Lightning callback: a scheduled trace of `Trainer.fit` with the workbench's regions, then its
breakdown and findings at the end of fit.

    from workbench.trace.lightning import WorkbenchCallback
    trainer = Trainer(callbacks=[WorkbenchCallback("profiles/my-fit")])

Lightning is an optional extra (pip install -e '.[lightning]' from the checkout); only this module imports it, so
import it only where Lightning is installed. Regions follow Lightning's hooks, in the order its
automatic optimization calls them (training_step runs inside optimizer_step's closure):

    on_train_batch_end .. on_train_batch_start   data_loading (the fetch; batch_to_device included)
    on_train_batch_start .. on_before_zero_grad   forward (training_step)
    on_before_zero_grad .. on_before_backward     optimizer_step (zero_grad)
    on_before_backward .. on_after_backward       backward
    on_before_optimizer_step .. on_train_batch_end  optimizer_step
"""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from torch.profiler import record_function

from workbench.trace import regions
from workbench.trace.instrument import Instrument


class WorkbenchCallback(pl.Callback):
    """Profile a few training steps of fit in the workbench's layout and report the findings."""

    def __init__(self, trace_dir: Path | str = "profiles/lightning", report: bool = True) -> None:
        self.trace_dir, self.show = Path(trace_dir), report
        self.instrument: Instrument | None = None
        self.result: dict | None = None
        self._open = None

    def _switch(self, name: str | None) -> None:
        """Close the open region and open the next one (only while the profiler records)."""
        if self._open is not None:
            self._open.__exit__(None, None, None)
            self._open = None
        if name is not None and self.instrument is not None and self.instrument.recording:
            self._open = record_function(name)
            self._open.__enter__()

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        device_type = "cuda" if pl_module.device.type == "cuda" else "cpu"
        self.instrument = Instrument(self.trace_dir / f"rank{trainer.global_rank}", device_type).__enter__()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._switch(regions.DATA_LOADING)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._switch(regions.FORWARD)

    def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:
        self._switch(regions.OPTIMIZER_STEP)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._switch(regions.BACKWARD)

    def on_after_backward(self, trainer, pl_module) -> None:
        self._switch(None)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._switch(regions.OPTIMIZER_STEP)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._switch(None)
        if self.instrument is not None:
            self.instrument.step()  # the next fetch belongs to the next step, as in the workbench's loop
        self._switch(regions.DATA_LOADING)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._switch(None)

    def on_train_end(self, trainer, pl_module) -> None:
        self._switch(None)
        if self.instrument is None:
            return
        self.instrument.__exit__(None, None, None)
        if self.instrument.trace_file is not None:
            self.result = self.instrument.report(show=self.show and trainer.is_global_zero)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._switch(None)
        if self.instrument is not None:
            self.instrument.__exit__(None, None, None)
