"""A warm parent for paired rounds on a CPU: torch imported once, one forked child per round.

Importing torch, torchvision and the measuring code costs about 5 s in every fresh process on a
2-core machine: a quarter of a round. The server (`python -m workbench.launch.serve`) imports them once
and then forks one child per round. The child is still a fresh process: its own pid, session and
process group, its own DataLoader workers, a heap that starts from the import state, and nothing
left over from earlier rounds; only the imported modules are shared, copy-on-write. The server
runs no torch op and never touches CUDA, so no thread pool or device context is copied into a child
(fork is unsafe after either). Its imports are checked against that before the first fork.

Used only where it is safe and helps: one process per side (no torchrun) on a CPU. A CUDA round
still starts from exec (launch/launchers.py). Protocol: one JSON line per request on a pipe
({"target", "args", "warm"}), two answers per request ({"pid"} when forked, {"pid", "code"} when it
ended). "warm" runs in the server before the fork: the measuring code decodes the round's CIFAR
data there (workbench.measure.entry.preload), so each child inherits the arrays instead of
unpickling them again (about 1 s). What the server imports is named when it starts (`preload`):
this module imports no measuring code and no torch itself.
"""
from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import subprocess
import sys
import time
import traceback

from workbench.launch import procs

# The server answers a request once its imports are done (seconds) and a fork takes milliseconds.
FORK_TIMEOUT_S = 120.0


class ServerGone(RuntimeError):
    """The server died or stopped answering; the caller falls back to a fresh exec'd process."""


class ForkServer:
    """The parent's handle: start the server once, run one worker spec at a time in a forked child."""

    def __init__(self, env: dict, preload: tuple[str, ...] = ()):
        """preload: the modules the server imports once, for every child to inherit."""
        request_read, self._request = os.pipe()
        self._answers, answer_write = os.pipe()
        self.proc = procs.start_worker(
            [sys.executable, "-m", "workbench.launch.serve", str(request_read), str(answer_write), *preload],
            env, stdin=subprocess.DEVNULL, pass_fds=(request_read, answer_write))
        os.close(request_read)
        os.close(answer_write)
        self._buffer = b""
        self.retired = self._closed = False

    def alive(self) -> bool:
        return not self.retired and self.proc.poll() is None

    def run(self, target: str, args: list, timeout_s: float | None, warm: str | None = None) -> int | None:
        """Call target ("module:function") with args in a forked child; its exit status (as
        subprocess gives it: -N for a signal), or None when it ran past timeout_s. warm, a function
        of the same args, runs in the server first (what it loads, every later child inherits).
        However this process is stopped, the child's group goes first, as with procs.run_worker."""
        request = {"target": target, "args": args, "warm": warm}
        try:
            os.write(self._request, (json.dumps(request) + "\n").encode())
        except BrokenPipeError:
            raise ServerGone(f"the fork server exited with status {self.proc.poll()}") from None
        try:
            pid = self._answer(timeout_s=FORK_TIMEOUT_S)["pid"]
        except TimeoutError:
            raise ServerGone(f"the fork server did not fork within {FORK_TIMEOUT_S:g} s") from None
        except BaseException:  # stopped while the server warms up: the fork still comes; stop it first
            self._stop_pending()
            raise
        try:
            return self._answer(timeout_s)["code"]
        except TimeoutError:
            self._stop(pid, grace_s=0)
            return None
        except BaseException:
            self._stop(pid, grace_s=procs.GRACE_S)
            raise

    def _stop_pending(self) -> None:
        """The request is out but its child's pid is not in: wait for the fork, then stop the child,
        so the caller never removes a request its child has yet to read. A second stop, or a server
        that does not answer, retires the server instead."""
        try:
            pid = self._answer(timeout_s=FORK_TIMEOUT_S)["pid"]
        except (TimeoutError, ServerGone, KeyboardInterrupt):
            self.retired = True
            procs.stop_group(self.proc.pid, procs.waiter(self.proc), grace_s=0)  # its children are their own groups
            return
        self._stop(pid, grace_s=procs.GRACE_S)

    def _stop(self, pid: int, grace_s: float) -> None:
        """The child's group stopped the one way (procs.stop_group). Its exit answer is read so the
        next request starts clean; when it never comes the server is retired, and the next call
        starts a new one."""
        def answered(timeout_s: float) -> bool:
            try:
                self._answer(timeout_s)
                return True
            except (TimeoutError, ServerGone):
                return False
        if not procs.stop_group(pid, answered, grace_s):
            self.retired = True

    def close(self) -> None:
        """End of input: the server exits; it is killed if it does not. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = self.retired = True
        os.close(self._request)
        try:
            self.proc.wait(timeout=5)
        except Exception:
            procs.stop_group(self.proc.pid, procs.waiter(self.proc), grace_s=0)
        os.close(self._answers)

    def _answer(self, timeout_s: float | None) -> dict:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._answers], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(self._answers, 4096)
            if not chunk:
                raise ServerGone(f"the fork server exited with status {self.proc.poll()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


_shared: dict[str, ForkServer] = {}


def shared(env: dict, preload: tuple[str, ...] = ()) -> ForkServer:
    """One server per process (and environment), started on first use and closed at exit."""
    key = json.dumps([sorted(env.items()), list(preload)])
    server = _shared.get(key)
    if server is None or not server.alive():
        if server is not None:
            server.close()
        if not _shared:
            atexit.register(close_all)
        server = _shared[key] = ForkServer(env, preload)
    return server


def close_all() -> None:
    while _shared:
        _shared.popitem()[1].close()


# --- the server side ---------------------------------------------------------------------------

def _warm_imports(modules: list[str]) -> None:
    """Everything a round imports, and nothing that starts a device or a thread pool."""
    for module in modules:
        importlib.import_module(module)
    if _cuda_initialized():
        raise RuntimeError("CUDA was initialised while importing; forking would copy its context")


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")  # never imported here: only what the preloaded modules brought
    return bool(torch is not None and torch.cuda.is_initialized())


def resolve(target: str):
    """The function a "module:function" target names (a request's target and warm, a spec's measure)."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _thread_count() -> int:
    tasks = f"/proc/{os.getpid()}/task"
    return len(os.listdir(tasks)) if os.path.isdir(tasks) else 1


def _warm(target: str | None, args: list) -> None:
    """The request's warm function, in the server: best effort, but it must leave the server fit to
    fork. Fork copies one thread: a thread it starts or a device context would be copied broken into
    every child, so the server exits instead, and the parent goes back to exec. (Counted around the
    call: numpy's BLAS pool comes and goes with forks, and handles them itself.)"""
    if not target:
        return
    threads = _thread_count()
    try:
        resolve(target)(*args)
    except Exception:  # the child meets the same problem and reports it in its result
        pass
    if _cuda_initialized() or _thread_count() > threads:
        raise RuntimeError(f"{target} started a thread or CUDA in the fork server; forking would copy it")


def _child(target: str, args: list, fds: tuple[int, int]) -> None:
    """In the forked child: its own session, a quiet stop until the target installs its own
    handlers (as a fresh interpreter's entry does), then the target; its return value is the exit status."""
    code = 1
    try:
        os.setsid()
        for fd in fds:
            os.close(fd)
        procs.quiet_until_ready()
        result = resolve(target)(*args)
        code = result if isinstance(result, int) else 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc(limit=3)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(request_fd: int, answer_fd: int, preload: list[str]) -> int:
    procs.quiet_until_ready()
    _warm_imports(preload)
    with os.fdopen(request_fd, "rb", buffering=0) as requests:
        for line in iter(requests.readline, b""):
            request = json.loads(line)
            _warm(request.get("warm"), request["args"])
            pid = os.fork()
            if pid == 0:
                _child(request["target"], request["args"], (request_fd, answer_fd))
            if not _answer(answer_fd, {"pid": pid}):
                break
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)  # -N for a signal, as subprocess reports it
            if not _answer(answer_fd, {"pid": pid, "code": code}):
                break
    return 0


def _answer(answer_fd: int, message: dict) -> bool:
    """Tell the parent; False when it is gone (killed, even with SIGKILL): the server then ends quietly,
    since its finished rounds are on disk already and nobody is left to read the answer."""
    try:
        os.write(answer_fd, (json.dumps(message) + "\n").encode())
        return True
    except BrokenPipeError:
        return False
