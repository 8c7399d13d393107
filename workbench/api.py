"""The ladder from Python (a notebook, a script): your model factory, your dataset, a RunConfig.

    from workbench.api import optimize
    from workbench.config import RunConfig

    results = optimize(RunConfig(image_size=32, batch_size=64, run_name="mine"),
                       model_factory=lambda num_classes: MyNet(num_classes),
                       dataset=my_dataset,            # `classes` sizes the built-in models' output
                       stages="amp,channels_last")

Any batch and any loss: loss_fn(model, batch) -> scalar loss gets the batch exactly as the DataLoader
collates it (a tensor, a tuple, a dict of token ids, ...); FLOPs are counted on a real batch::

    optimize(cfg, model_factory=lambda _: TinyGPT(), dataset=token_windows,
             loss_fn=lambda model, batch: F.cross_entropy(model(batch["ids"]).flatten(0, 1),
                                                          batch["targets"].flatten()))
    for r in results:
        print(r["stage"], r["status"], r["metrics"]["throughput"]["median"] if r["metrics"] else r["reason"])

Each result is the same dictionary `workbench run` writes to reports/<run>/stages/ (see
workbench/results.py), and the files are written too, so `workbench report <run>` works afterwards.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from workbench.run import ladder, session as sessions
from workbench.config import RunConfig, for_machine
from workbench.errors import UsageError
from workbench.machine_lock import MachineLock
from workbench.progress import stderr_log
from workbench.run.stages import select
from workbench.training.step import UserTask


def optimize(cfg: RunConfig | None = None, *, model_factory: Callable | None = None, dataset=None,
             stages: str | None = None, ablation: bool = False, isolate: bool | None = None,
             resume: bool = False, overwrite: bool = False, log: Callable[[str], None] | None = None,
             loss_fn: Callable | None = None, time_budget_s: float = sessions.DEFAULT_TIME_BUDGET_S,
             optimizer_factory: Callable | None = None) -> list[dict]:
    """Run the ladder (or the ablation) and return every stage result, baseline first.

    model_factory(num_classes) -> nn.Module replaces cfg.model; dataset replaces cfg.data. Stages run
    in this process when either is given (objects from a notebook cannot always be sent to a fresh
    process); otherwise each stage runs in its own process, as on the command line. loss_fn(model,
    batch) replaces the built-in cross-entropy on (images, labels); it needs a dataset. A dataset
    without `classes` needs a model_factory (given num_classes=None). An existing run of the same
    name is refused unless resume (continue it) or overwrite (replace it) says so. Without cfg, the
    machine's defaults apply, as on the command line (224 px on a GPU, 32 px elsewhere). Extra rounds
    for open answers are spent only within time_budget_s seconds from the start (--time-budget).
    optimizer_factory(model) -> Optimizer replaces cfg.optimizer with your own (nanoGPT's AdamW with its
    weight-decay groups, say); the fused_optimizer stage rebuilds it with fused=True where torch has that.
    The run's files name your model by its factory (module:name) and your dataset by its class.
    """
    if cfg is None:
        cfg, line = for_machine()
        (log or stderr_log)(line)
    if loss_fn is not None:
        if dataset is None:
            raise UsageError("loss_fn needs a dataset (it receives that dataset's batches); allowed: pass dataset=")
        dataset = UserTask(dataset, loss_fn)  # the loss travels with the data to each stage
    isolate = (model_factory is None and dataset is None and optimizer_factory is None) if isolate is None else isolate
    if optimizer_factory is not None and isolate:
        raise UsageError("optimizer_factory runs in this process; allowed with isolate=False (or left unset)")
    if model_factory is not None and cfg.model == RunConfig.model:  # name the user's model, not the default
        cfg = cfg.with_overrides(model=factory_name(model_factory))
    chosen = select(stages)
    extra = {"log": log} if log else {}
    with MachineLock("workbench.api.optimize", log=log):  # one measuring run per machine: waits, says for whom
        session = sessions.start(cfg, "ablation" if ablation else "ladder", resume=resume, isolate=isolate,
                                 model_factory=model_factory, dataset=dataset,
                                 sweep_workers=any(s.name == "dataloader" for s in chosen),
                                 stages=[s.name for s in chosen], overwrite=overwrite,
                                 time_budget_s=time_budget_s, **extra)
        if optimizer_factory is not None:
            session = replace(session, optimizer_factory=optimizer_factory)
        return ladder.run_ladder(session, stages)


def factory_name(factory: Callable) -> str:
    """module:name for a model factory ("module:<lambda>" for a lambda): what the files call the model."""
    return f"{getattr(factory, '__module__', None) or 'python'}:{getattr(factory, '__qualname__', type(factory).__name__)}"
