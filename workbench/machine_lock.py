"""One measuring run per machine: a second one waits (saying for whom) or, with --no-wait, refuses.

Two measuring runs on one machine wreck each other (a 10 ms step became 4 s with two runs on two
cores: their thread pools spin on each other's cores), so `workbench run`, `workbench experiment`
and the benchmarks take this lock first. It is an flock(2) on a file in the machine's temporary
folder: the kernel drops it when its holder exits however it exits (killed included), so a stale
lock cannot block anyone; the holder's pid, command and start time are written into the file for
the waiting line, and a dead holder's leftovers are simply overwritten. WORKBENCH_LOCK_FILE names
another file (the test suite uses its own, so it never waits on a user's run).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TextIO

from workbench.errors import UsageError

LOCK_VARIABLE = "WORKBENCH_LOCK_FILE"
# How often a waiting run says it is still waiting.
REMIND_EVERY_S = 60.0
POLL_S = 0.5


class Busy(UsageError):
    """Another measuring run holds the machine and --no-wait was given (exit status 75: try later)."""

    exit_code = 75


def lock_path(environ: dict | None = None) -> Path:
    text = (os.environ if environ is None else environ).get(LOCK_VARIABLE, "").strip()
    return Path(text) if text else Path(tempfile.gettempdir()) / "workbench-measuring.lock"


def holder(path: Path) -> str:
    """Who holds the lock, in words (from what the holder wrote; "another process" if unreadable)."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} ({info['what']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class MachineLock:
    """`with MachineLock("workbench run ...", wait=True):` measure; released on exit."""

    def __init__(self, what: str, wait: bool = True, log: Callable[[str], None] | None = None,
                 path: Path | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.wait, self.path, self.clock = what, wait, path or lock_path(), clock
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._file: TextIO | None = None

    def __enter__(self) -> "MachineLock":
        self._file = self._open()
        if not self._try():
            if not self.wait:
                self._close()
                raise Busy(f"another measuring run holds this machine: {holder(self.path)}; two at once wreck each "
                           f"other's timings. Allowed: wait for it (drop --no-wait) or run later")
            self._wait()
        self._record()
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def _open(self) -> TextIO:
        """The lock file, readable and writable by every user of the machine (one lock for all of them)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                os.fchmod(fd, 0o666)  # the umask would keep other users out
            except OSError:
                pass  # another user's file: it is theirs to set, and it already lets us in
            return os.fdopen(fd, "r+")
        except OSError as error:
            raise UsageError(f"{LOCK_VARIABLE}={str(self.path)!r}: the machine lock cannot be opened ({error.strerror}); "
                             "allowed: a file every measuring run on this machine can write") from None

    def _try(self) -> bool:
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _wait(self) -> None:
        started = self.clock()
        self.log(f"waiting: another measuring run holds this machine ({holder(self.path)}); two at once would "
                 f"wreck each other's timings. This run starts when it ends (--no-wait refuses instead)")
        said = started
        while not self._try():
            time.sleep(POLL_S)
            if self.clock() - said >= REMIND_EVERY_S:
                said = self.clock()
                self.log(f"still waiting for {holder(self.path)}, elapsed {said - started:.0f} s")

    def _record(self) -> None:
        self._file.seek(0)
        previous = _read(self._file.read())
        self._file.seek(0)
        self._file.truncate()
        since = dt.datetime.now().isoformat(timespec="seconds")
        # The run before this one, if it ended cleanly: its load is still in the load average for a minute.
        before = {"previous": {"what": previous["what"], "ended": previous["ended"]}} if "ended" in previous else {}
        self._file.write(json.dumps({"pid": os.getpid(), "what": self.what, "since": since, **before}))
        self._file.flush()

    def _close(self) -> None:
        if self._file is not None:
            self._mark_ended()
            self._file.close()  # closing the descriptor releases the flock
            self._file = None

    def _mark_ended(self) -> None:
        try:
            self._file.seek(0)
            info = _read(self._file.read())
            self._file.seek(0)
            self._file.truncate()
            self._file.write(json.dumps({**info, "ended": time.time()}))
            self._file.flush()
        except (OSError, ValueError):
            pass  # the lock is released all the same


def _read(text: str) -> dict:
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def previous_run(path: Path | None = None, now: float | None = None) -> tuple[str, float] | None:
    """The measuring run that held the machine before the current holder, and how many seconds ago it
    ended (None: none recorded)."""
    try:
        info = _read((path or lock_path()).read_text()).get("previous") or {}
    except OSError:
        return None
    if "ended" not in info:
        return None
    return str(info.get("what", "a measuring run")), (now or time.time()) - float(info["ended"])
