"""One protocol for running a measurement: `launcher.run(request) -> Outcome`, four ways to do it.

- `InProcess`: here, with objects from Python (a model factory, a dataset) that cannot cross a
  process boundary; also the experiments' isolate=False;
- `FreshInterpreter`: `python -m <entry> REQUEST.json`, in its own session, with a safe import path;
- `ForkServer`: a child forked from the warm server (torch imported once: launch/forkserver.py); on a
  CPU with one process, and on a GPU too with WORKBENCH_FORK_SERVER=cuda (the server never touches
  CUDA; each child initializes its own context); back to a fresh interpreter if the server fails, or
  if a forked child cannot initialize CUDA;
- `Torchrun`: `torch.distributed.run --standalone --nproc_per_node=N -m <entry> REQUEST.json`, or on
  several nodes this node's share of the round's static rendezvous (launch/nodes.py).
`choose` picks one. Every one writes the request, lets the child report through the channel
(launch/channel.py), and returns what arrived as an Outcome; a stopped parent (Ctrl-C, SIGTERM)
stops the child's group the one way (procs.stop_group) and says so in the Outcome, never in an
exception that carries data. The wording of a failure (timeout, kill, crash) is `failure_text`.

The child is named, not imported (no torch here): the entry module provides `main(path)` (a
process, started by launch/bootstrap.py or forked), `run_request(path, objects)` (in this process)
and `preload(path)` (run in the fork server before each fork).
"""
from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol

from workbench.errors import UsageError
from workbench.launch import channel, forkserver, procs
from workbench.launch.forkserver import resolve
from workbench.launch.messages import RoundSpec, SideReport
from workbench.launch.nodes import Nodes, torchrun_flags

CHILD_ENTRY = "workbench.measure.entry"
FORK_SERVER_VARIABLE = "WORKBENCH_FORK_SERVER"
WATCH_EVERY_S = 1.0
_FORK_SERVER_OFF: dict[str, str] = {}  # why, once the server failed: later runs start from exec


@dataclass(frozen=True)
class Outcome:
    """What came back from one measuring process (or torchrun's group of them)."""

    reports: Mapping[str, SideReport]   # the latest complete report per side
    code: int | None                    # exit status (-N: killed by signal N); None: ran past its timeout
    timeout_s: float
    stopped: KeyboardInterrupt | None = None   # the parent was stopped meanwhile: re-raise once saved
    error: str | None = None            # in this process: the error that escaped the child's own guard

    def report(self, side: str) -> SideReport:
        """The side's latest report, or why there is none, in the one wording."""
        found = self.reports.get(side)
        if found is not None:
            return found
        return SideReport.failed(side, self.error or failure_text(self.code, self.timeout_s))


def failure_text(code: int | None, timeout_s: float) -> str:
    """Why a measuring process left no report: one wording for the ladder and the experiments."""
    if code is None:
        return (f"timed out after {timeout_s:g} s (a hang in compile or in a collective?); "
                f"set {procs.TIMEOUT_VARIABLE} to allow longer")
    if code < 0 and -code == signal.SIGINT:
        return "stopped (SIGINT) before its timed steps were in"
    killed = " (killed: out of host memory?)" if code in (-9, 137) else ""
    return f"worker exited with status {code}{killed}"


class Launcher(Protocol):
    name: str

    def run(self, request: RoundSpec, timeout_s: float | None = None, env: Mapping[str, str] | None = None) -> Outcome:
        """Measure the request's sides; what they reported, however the process ended."""


@dataclass
class _Launched:
    """What every launcher does around starting the child: the request file, the channel, the stop."""

    entry: str = CHILD_ENTRY
    name: ClassVar[str] = "launcher"

    def run(self, request: RoundSpec, timeout_s: float | None = None, env: Mapping[str, str] | None = None) -> Outcome:
        timeout_s = timeout_s or procs.stage_timeout_s()
        with tempfile.TemporaryDirectory(prefix="workbench-round-") as tmp:
            request = replace(request, channel=str(Path(tmp) / "reports.jsonl"))
            path = Path(tmp) / "request.json"
            path.write_text(json.dumps(request.to_json()))
            code, stopped, error = None, None, None
            try:
                code, error = self._start(path, timeout_s, {**os.environ, **(env or {})})
            except KeyboardInterrupt as interrupt:  # the child's group was stopped first; what it reported stays
                stopped = interrupt
            return Outcome(channel.received(request.channel), code, timeout_s, stopped, error)

    def _start(self, path: Path, timeout_s: float, env: dict) -> tuple[int | None, str | None]:
        raise NotImplementedError


@dataclass
class InProcess(_Launched):
    """In this process: objects from Python travel as they are; the child's signal handling is not installed."""

    objects: Mapping[str, Any] = field(default_factory=dict)
    name = "in this process"

    def _start(self, path: Path, timeout_s: float, env: dict) -> tuple[int | None, str | None]:
        try:
            return resolve(f"{self.entry}:run_request")(str(path), dict(self.objects)), None
        except Exception as error:  # as in a fresh process: the round fails, the caller goes on
            return 1, f"{type(error).__name__}: {str(error).strip()[:300]}"
        finally:
            _release_memory()


def _release_memory() -> None:
    """A failed configuration's tensors must not crowd the next one measured in this process."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class FreshInterpreter(_Launched):
    name = "a fresh interpreter"

    def _start(self, path: Path, timeout_s: float, env: dict) -> tuple[int | None, str | None]:
        return procs.run_worker([*bootstrap(self.entry), str(path)], env, timeout_s), None


@dataclass
class Torchrun(_Launched):
    """N processes on this machine under torchrun, the cores split between them; on several nodes, this
    node's N processes joining the others' at the round's rendezvous (launch/nodes.py)."""

    nproc: int = 2
    nodes: Nodes = field(default_factory=Nodes)
    # Several nodes: asked every second while torchrun runs; a reason stops the round (a node gone
    # silent would otherwise keep this node's ranks waiting in a collective until their own timeout).
    watch: Callable[[], str | None] | None = None
    name = "torchrun"

    def _start(self, path: Path, timeout_s: float, env: dict) -> tuple[int | None, str | None]:
        command = [sys.executable, "-m", "torch.distributed.run", *torchrun_flags(self.nodes, self.nproc),
                   *bootstrap(self.entry)[1:], str(path)]
        if self.watch is None:
            return procs.run_worker(command, split_cores(env, self.nproc), timeout_s), None
        return run_watched(command, split_cores(env, self.nproc), timeout_s, self.watch)


def run_watched(command: list[str], env: dict, timeout_s: float,
                watch: Callable[[], str | None]) -> tuple[int | None, str | None]:
    """procs.run_worker, asking watch() every second: its exit status, or why watch() stopped it."""
    proc = procs.start_worker(command, env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return proc.wait(timeout=WATCH_EVERY_S), None
            except subprocess.TimeoutExpired:
                pass
            why = watch() if time.monotonic() < deadline else None
            if why is not None or time.monotonic() >= deadline:
                procs.stop_group(proc.pid, procs.waiter(proc), grace_s=0 if why is None else procs.GRACE_S)
                return (None, None) if why is None else (proc.returncode or 1, why)
    except BaseException:
        procs.stop_group(proc.pid, procs.waiter(proc))
        raise


def bootstrap(entry: str) -> list[str]:
    """The command that runs entry's main in a fresh interpreter (launch/bootstrap.py)."""
    return [sys.executable, "-m", "workbench.launch.bootstrap", f"{entry}:main"]


def split_cores(env: dict, nproc: int) -> dict:
    """The cores split between the processes (torchrun itself would give each one thread)."""
    if nproc > 1 and "OMP_NUM_THREADS" not in env:
        return {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    return env


@dataclass
class ForkServer(_Launched):
    name = "the fork server"
    on_cuda: bool = False

    def run(self, request: RoundSpec, timeout_s: float | None = None, env: Mapping[str, str] | None = None) -> Outcome:
        outcome = super().run(request, timeout_s, env)
        if self.on_cuda and outcome.stopped is None and _cuda_fork_failed(outcome):
            # Said once; this round and every later one start from exec, as they did before.
            _FORK_SERVER_OFF["why"] = "a round forked from the server could not initialize CUDA"
            print(f"note: {_FORK_SERVER_OFF['why']}; measuring processes start fresh interpreters from now on",
                  file=sys.stderr)
            return FreshInterpreter(entry=self.entry).run(request, timeout_s, env)
        return outcome

    def _start(self, path: Path, timeout_s: float, env: dict) -> tuple[int | None, str | None]:
        if not _FORK_SERVER_OFF:
            try:
                # On a GPU, torch.cuda.is_available() anywhere in the server must not start the driver:
                # NVML answers it instead, and the forked children inherit a process that never touched CUDA.
                server = forkserver.shared({**env, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"} if self.on_cuda else env,
                                           preload=(self.entry,))
                return server.run(f"{self.entry}:main", [str(path)], timeout_s, warm=f"{self.entry}:preload"), None
            except forkserver.ServerGone as gone:  # said once; every later process starts from exec
                _FORK_SERVER_OFF["why"] = str(gone)
                print(f"note: {gone}; measuring processes start fresh interpreters from now on", file=sys.stderr)
        return FreshInterpreter(entry=self.entry)._start(path, timeout_s, env)


# What a child forked after CUDA was touched in its parent says (torch's bad-fork check, the driver).
CUDA_FORK_FAILURE = re.compile(r"re-initialize CUDA in forked subprocess|CUDA driver initialization failed|"
                               r"cudaErrorInitializationError|CUDA error: initialization error", re.I)


def _cuda_fork_failed(outcome: Outcome) -> bool:
    return any(report.status == "failed" and CUDA_FORK_FAILURE.search(report.error or "")
               for report in outcome.reports.values()) or bool(CUDA_FORK_FAILURE.search(outcome.error or ""))


def fork_server_mode(environ: Mapping[str, str] | None = None) -> str:
    """WORKBENCH_FORK_SERVER: unset or 1 (the default: CPU rounds forked), cuda (GPU rounds too) or 0
    (a fresh interpreter per round); a one-line UsageError for anything else."""
    text = (os.environ if environ is None else environ).get(FORK_SERVER_VARIABLE, "").strip().lower()
    if text not in ("", "0", "1", "cuda"):
        raise UsageError(f"{FORK_SERVER_VARIABLE}={text!r} is not allowed; allowed: 1 (fork CPU rounds from a "
                         "warm server, the default), cuda (GPU rounds too) or 0 (a fresh interpreter per round)")
    return {"": "cpu", "1": "cpu", "0": "off"}.get(text, text)


def fork_server_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether CPU rounds are forked from the warm server (fork_server_mode, not off)."""
    return fork_server_mode(environ) != "off"


def choose(on_cpu: bool, nproc: int = 1, objects: Mapping[str, Any] | None = None) -> Launcher:
    """Where a measurement runs. Objects from Python cannot cross a process: here. Several processes:
    torchrun. One process on a CPU: the fork server, unless WORKBENCH_FORK_SERVER=0. On a GPU a fresh
    interpreter (the figures so far were measured that way), or with WORKBENCH_FORK_SERVER=cuda the
    fork server too: the server never initializes CUDA, so each forked child starts its own context,
    and a child that cannot is measured again from exec."""
    if objects:
        return InProcess(objects=objects)
    if nproc > 1:
        return Torchrun(nproc=nproc)
    mode = fork_server_mode()
    if not _FORK_SERVER_OFF and (mode == "cuda" or (on_cpu and mode == "cpu")):
        return ForkServer(on_cuda=not on_cpu)
    return FreshInterpreter()

