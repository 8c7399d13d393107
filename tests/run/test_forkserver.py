"""The warm fork server: a child per call, exit status, timeout and fallback, as procs.run_worker."""
import os
import time

import pytest

from workbench.run import forkserver, rounds


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


def test_rounds_fork_only_on_a_cpu_and_not_when_switched_off(monkeypatch):
    cpu = {"pair": {"a": {"config": {"device": "cpu"}}, "b": {"config": {"device": "cpu"}}}}
    assert rounds.forkable(cpu)
    monkeypatch.setenv(rounds.FORK_SERVER_VARIABLE, "0")
    assert not rounds.forkable(cpu)
