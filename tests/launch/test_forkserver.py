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
