"""The ladder from Python (a notebook, a script): your model factory, your dataset, a RunConfig.

    from workbench.api import optimize
    from workbench.config import RunConfig

    results = optimize(RunConfig(image_size=32, batch_size=64, run_name="mine"),
                       model_factory=lambda num_classes: MyNet(num_classes),
                       dataset=my_dataset,            # needs a `classes` attribute
                       stages="amp,channels_last")
    for r in results:
        print(r["stage"], r["status"], r["metrics"]["throughput"]["median"] if r["metrics"] else r["reason"])

Each result is the same dictionary `workbench run` writes to reports/<run>/stages/ (see
workbench/results.py), and the files are written too, so `workbench report <run>` works afterwards.
"""
from __future__ import annotations

from typing import Callable

from workbench import ladder, session as sessions
from workbench.config import RunConfig
from workbench.stages import select


def optimize(cfg: RunConfig | None = None, *, model_factory: Callable | None = None, dataset=None,
             stages: str | None = None, ablation: bool = False, isolate: bool | None = None,
             resume: bool = False, overwrite: bool = False, log: Callable[[str], None] | None = None) -> list[dict]:
    """Run the ladder (or the ablation) and return every stage result, baseline first.

    model_factory(num_classes) -> nn.Module replaces cfg.model; dataset replaces cfg.data. Stages run
    in this process when either is given (objects from a notebook cannot always be sent to a fresh
    process); otherwise each stage runs in its own process, as on the command line. An existing run
    of the same name is refused unless resume (continue it) or overwrite (replace it) says so.
    """
    cfg = cfg or RunConfig()
    isolate = (model_factory is None and dataset is None) if isolate is None else isolate
    chosen = select(stages)
    extra = {"log": log} if log else {}
    session = sessions.start(cfg, "ablation" if ablation else "ladder", resume=resume, isolate=isolate,
                             model_factory=model_factory, dataset=dataset,
                             sweep_workers=any(s.name == "dataloader" for s in chosen),
                             stages=[s.name for s in chosen], overwrite=overwrite, **extra)
    return ladder.run_ladder(session, stages)
