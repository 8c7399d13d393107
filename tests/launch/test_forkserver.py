"""The warm fork server: a child per call, its exit status, a timeout, a dead server reported, and a
warm function that would make forking unsafe."""
import os
import time

import pytest

from workbench.launch import forkserver


@pytest.fixture(scope="module")
def server():
    started = forkserver.ForkServer(dict(os.environ))
    yield started
    started.close()


def test_a_child_per_call_with_its_exit_status(server, tmp_path):
    assert server.run("os:_exit", [3], timeout_s=60) == 3
    assert server.run("os:getcwd", [], timeout_s=60) == 0  # a non-int return value is success
    assert server.alive()


def test_a_child_past_its_timeout_is_killed_with_its_group(server):
    started = time.monotonic()
    assert server.run("time:sleep", [600], timeout_s=1.0) is None
    assert time.monotonic() - started < 30
    assert server.run("os:_exit", [0], timeout_s=60) == 0  # the server still serves


def test_a_child_that_raises_exits_non_zero(server):
    assert server.run("json:loads", ["{not json"], timeout_s=60) == 1


def test_a_dead_server_is_reported_not_waited_on():
    gone = forkserver.ForkServer(dict(os.environ))
    gone.proc.kill()
    gone.proc.wait()
    with pytest.raises(forkserver.ServerGone):
        gone.run("os:_exit", [0], timeout_s=60)
    gone.close()


def test_a_warm_function_runs_in_the_server_and_one_that_starts_a_thread_ends_it():
    """warm runs before the fork; a thread it leaves behind would be copied broken into every child,
    so the server exits and the caller is told (and goes back to exec)."""
    warmed = forkserver.ForkServer(dict(os.environ))
    try:
        assert warmed.run("os:_exit", [0], timeout_s=60, warm="os:getcwd") == 0  # a harmless warm: served
        with pytest.raises(forkserver.ServerGone):  # faulthandler's watchdog is a thread
            warmed.run("os:getcwd", [600], timeout_s=60, warm="faulthandler:dump_traceback_later")
    finally:
        warmed.close()


def test_a_stop_while_the_server_warms_up_waits_for_the_fork_and_stops_the_child(server):
    """Ctrl-C before the child's pid is in: the fork still comes (the server is warming up), so the
    caller waits for it and stops it, and never removes a request the child has yet to read."""
    import signal
    import threading

    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        server.run("time:sleep", [2], timeout_s=60, warm="time:sleep")
    assert 1.5 < time.monotonic() - started < 30  # it waited for the warm-up's fork, then stopped the child
    assert server.run("os:_exit", [0], timeout_s=60) == 0  # and the server still serves


def test_a_server_whose_parent_is_gone_ends_quietly(tmp_path):
    """The parent killed (SIGKILL leaves no goodbye): the server's answer meets a closed pipe. It ends
    with status 0 and no traceback on the terminal."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    request_read, request_write = os.pipe()
    answer_read, answer_write = os.pipe()
    code = f"from workbench.launch.forkserver import serve; raise SystemExit(serve({request_read}, {answer_write}, []))"
    server = subprocess.Popen([sys.executable, "-c", code], pass_fds=(request_read, answer_write),
                              env={**os.environ, "PYTHONPATH": str(root)}, stderr=subprocess.PIPE, text=True)
    os.close(request_read), os.close(answer_write)
    os.close(answer_read)  # the parent is gone before the answer comes
    os.write(request_write, (json.dumps({"target": "time:sleep", "args": [0.2]}) + "\n").encode())
    os.close(request_write)
    _, err = server.communicate(timeout=60)
    assert server.returncode == 0 and "Traceback" not in err and "BrokenPipeError" not in err, err
