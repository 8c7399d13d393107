"""One protocol for every way a measurement runs: the request crosses as a typed message, each side's
report comes back through the channel, and a failure is worded once, wherever it ran."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.launch import RoundSpec, SideReport, SideSpec, channel, choose, failure_text, launchers, messages
from workbench.launch.launchers import ForkServer, FreshInterpreter, InProcess, Torchrun

ROOT = Path(__file__).resolve().parents[2]
ECHO = "tests.launch.child"  # a stand-in child entry: main, run_request, preload


def side(stage: str = "x", **fields) -> SideSpec:
    return SideSpec(stage, {"device": "cpu", "data": "synthetic"}, **fields)


def request(*keys: str) -> RoundSpec:
    return RoundSpec({key: side(key) for key in keys}, keys)


def test_messages_round_trip_through_json_with_their_format():
    spec = RoundSpec({"a": side("a", extras="brief", options={"k": 1}), "b": side("b")}, ("b", "a"), "/tmp/c")
    assert RoundSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    report = SideReport("a", "measured", "timed", {"throughput": {"median": 1.0}}, notes={"n": 1})
    assert SideReport.from_json(json.loads(json.dumps(report.to_json()))) == report
    assert spec.to_json()["format"] == messages.FORMAT and report.to_json()["kind"] == "side_report"


@pytest.mark.parametrize("bad, words", [
    (lambda: SideSpec("x", {"device": "cpu"}, extras="some"), "extras='some'"),
    (lambda: SideReport("a", "measured"), "needs its metrics"),
    (lambda: SideReport("a", "done"), "status='done'"),
    (lambda: RoundSpec({"a": side()}, ("a", "b")), "must name each"),
    (lambda: SideReport.from_json({**SideReport.failed("a", "x").to_json(), "format": 99}), "format 99"),
])
def test_a_message_is_checked_when_built_or_read(bad, words):
    with pytest.raises(messages.MessageError, match=words):
        bad()


def test_the_channel_keeps_every_complete_report_and_skips_a_partial_line(tmp_path):
    path = tmp_path / "reports.jsonl"
    channel.send(path, SideReport("a", "measured", "timed", {"m": 1}))
    channel.send(path, SideReport("a", "measured", "final", {"m": 2}, extras=True))
    channel.send(path, SideReport("b", "measured", "timed", {"m": 3}))
    with open(path, "ab") as stream:
        stream.write(b'{"kind": "side_report", "format": 1, "side": "b", "sta')  # stopped mid-write
    got = channel.received(path)
    assert got["a"].phase == "final" and got["a"].metrics == {"m": 2} and got["b"].phase == "timed"
    assert channel.received(tmp_path / "never-written") == {}


@pytest.mark.parametrize("launcher", [InProcess(entry=ECHO), FreshInterpreter(entry=ECHO), ForkServer(entry=ECHO)],
                         ids=["in-process", "fresh-interpreter", "fork-server"])
def test_every_launcher_runs_the_request_and_returns_its_reports(launcher, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    outcome = launcher.run(request("a", "b"), timeout_s=60)
    assert outcome.code == 0 and outcome.stopped is None
    assert outcome.report("a").metrics == {"order": ["a", "b"], "stage": "a"} and outcome.report("b").phase == "final"


def test_torchrun_runs_every_rank_and_rank_zero_reports(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    outcome = Torchrun(entry=ECHO, nproc=2).run(request("only"), timeout_s=120)
    assert outcome.code == 0, outcome
    assert outcome.report("only").notes == {"world_size": "2"}


def test_a_child_that_reports_nothing_is_worded_once(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    crashed = FreshInterpreter(entry=ECHO).run(request("crash"), timeout_s=60)
    assert crashed.code == 3 and crashed.report("crash").status == "failed"
    assert crashed.report("crash").error == "worker exited with status 3"
    slow = FreshInterpreter(entry=ECHO).run(request("sleep"), timeout_s=1)
    assert slow.code is None and "timed out after 1 s" in slow.report("sleep").error
    here = InProcess(entry=ECHO).run(request("raise"), timeout_s=60)
    assert here.code == 1 and "ValueError: raised in the child" in here.report("raise").error


def test_failure_wording():
    assert "timed out after 5 s" in failure_text(None, 5)
    assert "out of host memory" in failure_text(-9, 5) and "status 1" in failure_text(1, 5)
    assert "SIGINT" in failure_text(-2, 5)


def test_where_a_measurement_runs(monkeypatch):
    monkeypatch.setattr(launchers, "_FORK_SERVER_OFF", {})
    assert isinstance(choose(on_cpu=True), ForkServer) and isinstance(choose(on_cpu=False), FreshInterpreter)
    assert isinstance(choose(on_cpu=True, nproc=2), Torchrun)
    assert isinstance(choose(on_cpu=True, objects={"dataset": object()}), InProcess)
    monkeypatch.setenv(launchers.FORK_SERVER_VARIABLE, "0")
    assert isinstance(choose(on_cpu=True), FreshInterpreter)
    monkeypatch.setenv(launchers.FORK_SERVER_VARIABLE, "cuda")   # GPU rounds forked too, on request
    on_gpu = choose(on_cpu=False)
    assert isinstance(on_gpu, ForkServer) and on_gpu.on_cuda and not choose(on_cpu=True).on_cuda


def test_a_forked_round_that_cannot_start_cuda_is_measured_again_from_exec(monkeypatch):
    """The server never touches CUDA; should a forked child still fail to start it, that round and
    every later one start from exec, said once."""
    from workbench.launch import Outcome, SideReport

    monkeypatch.setattr(launchers, "_FORK_SERVER_OFF", {})
    bad = Outcome({"a": SideReport.failed("a", "RuntimeError: Cannot re-initialize CUDA in forked subprocess")}, 1, 60)
    good = Outcome({"a": SideReport("a", "measured", metrics={"step_times_s": [[0.1]]})}, 0, 60)
    monkeypatch.setattr(launchers._Launched, "run", lambda self, request, timeout_s=None, env=None: bad)
    monkeypatch.setattr(launchers.FreshInterpreter, "run", lambda self, request, timeout_s=None, env=None: good)
    assert ForkServer(on_cuda=True).run(request("a")) is good
    assert launchers._FORK_SERVER_OFF and isinstance(choose(on_cpu=True), FreshInterpreter)
    monkeypatch.setattr(launchers, "_FORK_SERVER_OFF", {})
    assert ForkServer(on_cuda=False).run(request("a")) is bad    # a CPU round's failure is its own


def test_the_real_child_entry_has_what_the_launchers_call():
    from workbench.measure import entry

    assert launchers.CHILD_ENTRY == entry.__name__
    assert all(callable(getattr(entry, name)) for name in ("main", "run_request", "preload"))


def test_the_launch_package_never_imports_torch():
    code = ("import sys, pkgutil, importlib, workbench.launch as p\n"
            "for m in pkgutil.walk_packages(p.__path__, 'workbench.launch.'):\n"
            "    importlib.import_module(m.name)\n"
            "sys.exit('torch imported' if 'torch' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
