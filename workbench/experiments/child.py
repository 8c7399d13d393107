"""Measure one experiment configuration, in a fresh process or (for tests) in this one.

`python -m workbench.experiments.child SPEC.json` is the experiments' counterpart of workbench.run.worker:
the spec's "kind" names the measuring function ("module:function"), so an experiment with its own
loop (gradient norms, validation accuracy) still gets a clean process and its own peak memory.
Whatever happens, a result file is written, so the experiment can record the reason and go on.
"""
from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch

from workbench.errors import StageSkipped
from workbench.run.procs import safe_environment
from workbench.results import read_json, write_json_atomic
from workbench.run.worker import failure

KINDS = {
    "measure": "workbench.run.worker:run_spec",
    "clipping": "workbench.experiments.clipping:measure",
    "matrix": "workbench.experiments.matrix:measure",
}


def _function(kind: str):
    module_name, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module_name), name)


def run_here(spec: dict) -> dict:
    """Measure in this process; every failure becomes a result with a reason."""
    try:
        return _function(spec.get("kind", "measure"))(spec)
    except StageSkipped as error:
        return {"status": "skipped", "error": str(error)}
    except torch.OutOfMemoryError as error:
        raw = failure("failed", error)
        return {**raw, "error": "out of memory: " + raw["error"]}
    except Exception as error:  # noqa: BLE001 - any configuration failure is recorded, the experiment goes on
        traceback.print_exc(limit=3, file=sys.stderr)
        return failure("failed", error)


def _stop(proc: subprocess.Popen) -> None:
    """Kill the child and what it started (DataLoader workers, compile workers): its own session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait(proc: subprocess.Popen, timeout_s: float | None) -> int | None:
    """The child's exit status, or None when it ran past timeout_s (then it is killed)."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        return None
    except KeyboardInterrupt:
        _stop(proc)
        raise


def run_isolated(spec: dict, timeout_s: float | None = None, env: dict | None = None) -> dict:
    """Measure in a fresh Python process, killed after timeout_s; a crash still yields a result."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "out": str(Path(tmp) / "raw.json")}
        spec_path = Path(tmp) / "spec.json"
        write_json_atomic(spec_path, spec)
        # Its own session, so a timeout can stop its whole process group; Ctrl-C reaches us
        # and _wait stops the child.
        proc = subprocess.Popen([sys.executable, "-m", "workbench.experiments.child", str(spec_path)],
                                env=safe_environment({**os.environ, **(env or {})}), start_new_session=True)
        code = _wait(proc, timeout_s)
        if code is None:
            return {"status": "failed", "error": f"timed out after {timeout_s:.0f} s (stopped)"}
        if Path(spec["out"]).exists():
            return read_json(Path(spec["out"]))
        killed = " (killed: out of host memory?)" if code in (-9, 137) else ""
        return {"status": "failed", "error": f"measuring process exited with status {code}{killed}"}


def main(spec_path: str) -> int:
    spec = read_json(Path(spec_path))
    write_json_atomic(Path(spec["out"]), run_here(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
