"""The lab's experiments: each measures a few configurations and writes experiments/<name>.json + a plot.

Every experiment is `fn(cfg, out_dir, log=..., isolate=True) -> dict` (the document it wrote to
out_dir/experiments/<name>.json). `run_experiment(name, cfg, out_dir)` is the entry point the command
line calls; name "all" runs every experiment in turn and goes on past a failed one.
"""
from __future__ import annotations

import importlib
import time
import traceback
from pathlib import Path
from typing import Callable

from workbench.config import RunConfig
from workbench.errors import UsageError
from workbench.progress import stderr_log
from workbench.results import EXPERIMENTS_INDEX, experiment_path, write_json_atomic


def _lazy(target: str) -> Callable[..., dict]:
    """The experiment function named 'module:function', imported on first call: the measuring child
    process imports this package too, and should not pay for matplotlib and every experiment."""
    module_name, attribute = target.split(":")

    def experiment(cfg: RunConfig, out_dir: Path, log=None, isolate: bool = True, **options) -> dict:
        function = getattr(importlib.import_module(f"workbench.experiments.{module_name}"), attribute)
        return function(cfg, Path(out_dir), **({"log": log} if log else {}), isolate=isolate, **options)

    experiment.__name__ = experiment.__qualname__ = attribute
    experiment.__doc__ = f"workbench.experiments.{module_name}.{attribute}"
    return experiment


EXPERIMENTS: dict[str, Callable[..., dict]] = {
    "workers": _lazy("loader:run_workers"),
    "pipeline": _lazy("loader:run_pipeline"),
    "precision": _lazy("precision:run"),
    "memory": _lazy("memory:run"),
    "matrix": _lazy("matrix:run"),
    "compile": _lazy("compile_modes:run"),
    "clipping": _lazy("clipping:run"),
    "memory_breakdown": _lazy("memory:run_breakdown"),
}
ALL = "all"


def names() -> list[str]:
    return [*EXPERIMENTS, ALL]


def run_all(cfg: RunConfig, out_dir: Path, log=stderr_log, isolate: bool = True) -> dict:
    """Every experiment in order; a failure is recorded in experiments/all.json and the next one runs."""
    index = {"experiments": {}, "elapsed_s": 0.0}
    started = time.perf_counter()
    for name, function in EXPERIMENTS.items():
        begun = time.perf_counter()
        try:
            doc = function(cfg, out_dir, log=log, isolate=isolate)
            entry = {"status": doc["status"], "file": experiment_path(Path(), name).as_posix(), "plots": doc["plots"],
                     "conclusion": doc["summary"].get("conclusion")}
        except Exception as error:  # noqa: BLE001 - one broken experiment must not stop the others
            log(f"[experiment {name}] failed: {type(error).__name__}: {error}")
            traceback.print_exc(limit=4)
            entry = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:500]}
        entry["elapsed_s"] = time.perf_counter() - begun
        index["experiments"][name] = entry
        index["elapsed_s"] = time.perf_counter() - started
        write_json_atomic(experiment_path(out_dir, EXPERIMENTS_INDEX), index)
    return index


def run_experiment(name: str, cfg: RunConfig, out_dir: Path, log=stderr_log, isolate: bool = True) -> dict:
    """Run one experiment by name (or 'all'); an unknown name is a UsageError listing the allowed ones."""
    from workbench.device import usable_cores
    from workbench.run.session import busy_warning

    warning = busy_warning(usable_cores())  # other work skews every figure: say so before measuring
    if warning:
        log(warning)
    if name == ALL:
        return run_all(cfg, out_dir, log, isolate)
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r}; allowed: {', '.join(names())}")
    return EXPERIMENTS[name](cfg, Path(out_dir), log=log, isolate=isolate)
