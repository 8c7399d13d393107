"""One process harness: a spec in, a result out, one policy for every measuring process.

The ladder's paired rounds and the experiments' configurations both run here, under one policy:
- where: on a CPU with one process per side, a child of the warm fork server (torch imported once:
  run/forkserver.py); otherwise a fresh interpreter, `python -m workbench.run.worker_entry`, under
  torchrun when nproc > 1. Either way in its own session, with a safe import path (run/procs.py);
- how long: WORKBENCH_STAGE_TIMEOUT_S, or the caller's own budget;
- how it stops: Ctrl-C, SIGTERM or an error here send SIGINT to its group, a grace to save what it
  finished, then SIGKILL; a timeout kills at once;
- what a bad end means: one wording for a timeout, a kill and a crash (exit_failure).
The worker (run/worker.py) writes a result file whatever happens inside it, and reads what to do
from the spec: a paired round, a ladder stage, or an experiment's own measuring function.
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

from workbench.errors import ResultFileError, UsageError
from workbench.results import read_json, write_json_atomic
from workbench.run import distributed, forkserver, procs

WORKER_TARGET = "workbench.run.worker:main"
WORKER_PRELOAD = "workbench.run.worker:preload"  # run in the fork server before each fork
WORKER_MODULE = "workbench.run.worker_entry"
FORK_SERVER_VARIABLE = "WORKBENCH_FORK_SERVER"
_FORK_SERVER_OFF: dict[str, str] = {}  # why, once the server failed: later runs start from exec


def launch(spec_path: Path, on_cpu: bool, nproc: int = 1, env: dict | None = None,
           timeout_s: float | None = None) -> int | None:
    """Run the worker on spec_path; its exit status, or None when it ran past the timeout."""
    env = {**distributed.launch_environment(nproc), **(env or {})}
    timeout_s = timeout_s or procs.stage_timeout_s()
    if nproc == 1 and forkable(on_cpu):
        try:
            return forkserver.shared(env).run(WORKER_TARGET, [str(spec_path)], timeout_s, warm=WORKER_PRELOAD)
        except forkserver.ServerGone as gone:  # said once; every later process starts from exec
            _FORK_SERVER_OFF["why"] = str(gone)
            print(f"note: {gone}; measuring processes start fresh interpreters from now on", file=sys.stderr)
    return procs.run_worker([*distributed.launcher(nproc), WORKER_MODULE, str(spec_path)], env, timeout_s)


def fork_server_wanted(environ: dict | None = None) -> bool:
    """WORKBENCH_FORK_SERVER: unset or 1 (the default) or 0; a one-line UsageError for anything else."""
    text = (os.environ if environ is None else environ).get(FORK_SERVER_VARIABLE, "").strip()
    if text not in ("", "0", "1"):
        raise UsageError(f"{FORK_SERVER_VARIABLE}={text!r} is not allowed; allowed: 1 (fork CPU rounds from a "
                         "warm server, the default) or 0 (a fresh interpreter per round)")
    return text != "0"


def forkable(on_cpu: bool) -> bool:
    """The fork server only on a CPU (a forked CUDA context is unusable, and the GPU figures were
    measured from exec'd processes), unless WORKBENCH_FORK_SERVER=0 or it already failed."""
    return on_cpu and fork_server_wanted() and not _FORK_SERVER_OFF


def on_cpu(*configs: dict) -> bool:
    from workbench.device import resolve_device_type

    return all(resolve_device_type(cfg["device"]) == "cpu" for cfg in configs)


def saved(out: Path) -> dict | None:
    """The result file a worker wrote, or None (not written, or half-written when it was stopped)."""
    try:
        return read_json(out) if out.exists() else None
    except ResultFileError:
        return None


def exit_failure(code: int | None, timeout_s: float | None = None) -> dict:
    """Why a worker left no result, in one wording for the ladder and the experiments. A worker
    stopped by SIGINT means the user stopped the run: that is re-raised, not recorded."""
    if code is None:
        limit = timeout_s or procs.stage_timeout_s()
        return {"status": "failed", "error": f"timed out after {limit:g} s (a hang in compile or in a "
                f"collective?); set {procs.TIMEOUT_VARIABLE} to allow longer"}
    if code < 0 and -code == signal.SIGINT:
        raise KeyboardInterrupt
    killed = " (killed: out of host memory?)" if code in (-9, 137) else ""
    return {"status": "failed", "error": f"worker exited with status {code}{killed}"}


def measure(spec: dict, on_cpu: bool, env: dict | None = None, timeout_s: float | None = None) -> dict:
    """One configuration in its own process: the spec in (its "out" is set here), the result out."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "out": str(Path(tmp) / "raw.json")}
        spec_path = Path(tmp) / "spec.json"
        write_json_atomic(spec_path, spec)
        code = launch(spec_path, on_cpu, env=env, timeout_s=timeout_s)
        return saved(Path(spec["out"])) or exit_failure(code, timeout_s)
