"""One measuring run per machine: a second waits (and says for whom) or refuses with --no-wait; a lock
left by a killed run does not block anyone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.machine_lock import Busy, MachineLock

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom pathlib import Path\nfrom workbench.machine_lock import MachineLock\n"
        "with MachineLock('holder for a test', path=Path(sys.argv[1])):\n"
        "    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))\n")


def hold(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_with_no_wait_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "lock"
    holder = hold(path, 60)
    try:
        with pytest.raises(Busy) as refused:
            with MachineLock("second", wait=False, path=path):
                pass
        assert f"pid {holder.pid}" in str(refused.value) and "holder for a test" in str(refused.value)
        assert refused.value.exit_code == 75
    finally:
        holder.kill()
        holder.wait()


def test_a_second_run_waits_with_a_line_then_goes(tmp_path):
    path, said = tmp_path / "lock", []
    holder = hold(path, 1.5)
    started = time.monotonic()
    with MachineLock("second", path=path, log=said.append):
        waited = time.monotonic() - started
        assert f'"pid": {os.getpid()}' in path.read_text()
    holder.wait()
    assert waited > 0.5 and len(said) == 1 and said[0].startswith("waiting:") and f"pid {holder.pid}" in said[0]


def test_a_lock_left_by_a_killed_run_blocks_no_one(tmp_path):
    path = tmp_path / "lock"
    holder = hold(path, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert "holder for a test" in path.read_text()  # its leftovers are still there...
    with MachineLock("after the crash", wait=False, path=path):  # ...and cleared at once
        assert "after the crash" in path.read_text()


def test_the_command_line_refuses_with_no_wait_before_writing_anything(tmp_path, monkeypatch, capsys):
    from workbench.cli import main

    path = tmp_path / "lock"
    monkeypatch.setenv("WORKBENCH_LOCK_FILE", str(path))
    monkeypatch.chdir(tmp_path)
    holder = hold(path, 60)
    try:
        code = main(["run", "--no-wait", "--data", "synthetic", "--synthetic-per-batch", "8"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == 75 and err.count("workbench: error:") == 1 and "--no-wait" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock"]  # no data, no reports


def test_a_lock_file_that_cannot_be_opened_is_one_line(tmp_path):
    from workbench.errors import UsageError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match="WORKBENCH_LOCK_FILE=.*cannot be opened"):
        with MachineLock("x", path=blocker / "lock"):
            pass


def test_the_run_before_is_remembered_so_its_load_is_not_called_busy(tmp_path, monkeypatch):
    from workbench.machine_lock import MachineLock, previous_run
    from workbench.run import session

    path = tmp_path / "lock"
    with MachineLock("workbench run first", path=path):
        pass
    with MachineLock("workbench run second", path=path):
        what, ago = previous_run(path)
        assert what == "workbench run first" and 0 <= ago < 5
        monkeypatch.setattr(session.os, "getloadavg", lambda: (2.7, 1.0, 0.5))
        note = session.busy_warning(2, (what, ago))
        assert note.startswith("note: 1-minute load 2.7") and "workbench run first" in note and "busy" not in note
        assert session.busy_warning(2, (what, 600.0)).startswith("warning: the machine is busy")
        assert session.busy_warning(2, None).startswith("warning: the machine is busy")
