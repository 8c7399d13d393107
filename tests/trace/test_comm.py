"""Communication share from a multi-process trace: exact numbers on a hand-written trace."""
from __future__ import annotations

from workbench.trace.comm import communication


def event(name: str, ts: float, dur: float, tid: int = 1, cat: str = "cpu_op") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur}


TRACE = {"distributedInfo": {"rank": 1}, "traceEvents": [
    event("ProfilerStep#2", 0, 100, cat="user_annotation"),
    event("ProfilerStep#3", 100, 100, cat="user_annotation"),
    event("c10d::allreduce_", 10, 20),                 # 20 us in step 2
    event("gloo:all_reduce", 20, 20, tid=7),           # overlaps the one above: 10 us more
    event("nccl:all_reduce", 190, 30, tid=7),          # 10 us inside step 3, the rest after it
    event("aten::mm", 40, 50),                          # not communication
    event("record_param_comms", 300, 10),               # outside every step
]}


def test_collectives_are_counted_once_and_only_inside_steps():
    found = communication(TRACE)
    assert found["share"] == 40 / 200
    assert found["ms_per_step"] == 40 / 1000 / 2
    assert found["ops"] == 3
    assert found["rank"] == 1


def test_no_collectives_means_zero():
    quiet = {"traceEvents": [event("ProfilerStep#1", 0, 50, cat="user_annotation"), event("aten::add", 0, 5)]}
    assert communication(quiet)["share"] == 0.0
