"""Worker processes: a safe import path, their own process group, stopped as a whole, one way.

A stage runs in a fresh process (or torchrun's processes). It gets its own session, so a timeout,
Ctrl-C or SIGTERM stops every process it started (DataLoader workers, torchrun's children): none
is left running on its own. Its import path never holds the working folder, so a stray module
there (a `typing_extensions.py`, say) cannot shadow a real one and run inside the worker.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable

from workbench.errors import Interrupted, UsageError

TIMEOUT_VARIABLE = "WORKBENCH_STAGE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600.0
# How long a stopped worker may take to write what it finished (a stage interrupted in its trace
# pass keeps its timings) before its whole group is killed.
GRACE_S = 15.0
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def stage_timeout_s(environ: dict | None = None) -> float:
    """WORKBENCH_STAGE_TIMEOUT_S in seconds; a one-line UsageError for anything but a positive number."""
    text = (os.environ if environ is None else environ).get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{TIMEOUT_VARIABLE}={text!r} is not allowed; allowed: a positive number of "
                         f"seconds (default {DEFAULT_TIMEOUT_S:.0f})")
    return value


def safe_environment(env: dict) -> dict:
    """The worker's environment: the working folder off sys.path, the workbench itself on it.

    PYTHONSAFEPATH (Python 3.11+) is inherited by torchrun's children too; relative PYTHONPATH
    entries ('' or '.') would put the working folder back, so only absolute ones are kept.
    """
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.isabs(p)]
    paths = [str(PACKAGE_ROOT)] + [p for p in kept if p != str(PACKAGE_ROOT)]
    return {**env, "PYTHONSAFEPATH": "1", "PYTHONPATH": os.pathsep.join(paths)}


def start_worker(command: list[str], env: dict, **popen_args) -> subprocess.Popen:
    """Popen for any worker (a stage, a paired round, an experiment): its own session, a safe path."""
    return subprocess.Popen(command, env=safe_environment(env), start_new_session=True, **popen_args)


def run_worker(command: list[str], env: dict, timeout_s: float | None) -> int | None:
    """Run a worker in its own session; its exit status, or None when it ran past timeout_s.

    However this process is stopped (Ctrl-C, SIGTERM, an error), the worker's group goes first.
    """
    proc = start_worker(command, env, stdin=subprocess.DEVNULL)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(proc.pid, waiter(proc), grace_s=0)
        return None
    except BaseException:
        stop_group(proc.pid, waiter(proc))
        raise


def waiter(proc: subprocess.Popen) -> Callable[[float], bool]:
    def wait(timeout_s: float) -> bool:
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    return wait


def stop_group(pgid: int, wait: Callable[[float], bool], grace_s: float = GRACE_S) -> bool:
    """The one way a worker's process group is stopped: SIGINT (it saves what it finished) and a
    grace, then SIGKILL to whatever is left (DataLoader workers the leader left behind too).
    wait(seconds) says whether the leader ended in time; returns whether it was seen to end."""
    if grace_s > 0:
        signal_group(pgid, signal.SIGINT)
        try:
            if wait(grace_s):
                signal_group(pgid, signal.SIGKILL)
                return True
        except KeyboardInterrupt:  # a second Ctrl-C means: stop now
            pass
    signal_group(pgid, signal.SIGKILL)
    try:
        return wait(GRACE_S)
    except KeyboardInterrupt:
        return False


def signal_group(pgid: int, signum: int) -> None:
    """A signal to a process group; to the process alone when it is not (yet) a group leader."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def quiet_exit(signum: int, frame) -> None:
    """A signal handler that ends a starting worker at once, silently, with 128 + the signal number
    (a traceback from deep inside torch's import says nothing to the user)."""
    raise SystemExit(128 + signum)


def quiet_until_ready() -> None:
    """SIGINT and SIGTERM end this process quietly until the measuring code installs its own handlers."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, quiet_exit)


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> dict:
    """SIGTERM and SIGINT raise Interrupted (a KeyboardInterrupt) carrying exit status 143 or 130.

    Returns the handlers they replace (none outside the main thread, where Python allows no handler).
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    for signum in previous:
        signal.signal(signum, _raise_interrupted)
    return previous


def restore_signal_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
