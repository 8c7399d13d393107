"""The host_allocator stage: freed host memory kept in the measuring process (training/host_memory.py),
measured only where the configuration it builds on pays page faults, each side in a process of its own."""
from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from workbench.config import RunConfig
from workbench.device import DeviceFacts, decide
from workbench.errors import StageSkipped, UsageError
from workbench.launch.messages import RoundSpec, SideReport, SideSpec
from workbench.measure import entry
from workbench.measure.executor import Window, host_cpu
from workbench.run import rounds as paired
from workbench.run import stages
from workbench.trace import diagnose
from workbench.training import host_memory

CPU = DeviceFacts("cpu", "test cpu", cpu_flags=("avx2",), cpu_cores=2)
A100 = DeviceFacts("cuda", "A100", capability=(8, 0), device_count=1)
glibc_only = pytest.mark.skipif(host_memory.unavailable_reason() is not None, reason="needs Linux with glibc")


def _ctx(facts: DeviceFacts, **changes) -> stages.StageContext:
    return stages.StageContext(facts.type, decide(facts), **changes)


def test_the_setting_is_validated_with_its_choices():
    assert RunConfig(host_allocator="retain").host_allocator == "retain"
    with pytest.raises(UsageError, match="'jemalloc'.*system, retain"):
        RunConfig(host_allocator="jemalloc")


@glibc_only
def test_the_stage_applies_where_page_faults_were_measured_or_nothing_was():
    busy = {"system_time_share": 0.12, "minor_faults_per_step": 50000.0}
    assert stages.host_allocator(RunConfig(), _ctx(CPU, host_cpu=busy)).host_allocator == "retain"
    assert stages.host_allocator(RunConfig(), _ctx(CPU)).host_allocator == "retain"  # nothing measured yet


@glibc_only
def test_the_stage_skips_where_the_kernel_takes_little_time_and_says_what_was_measured():
    quiet = {"system_time_share": 0.012, "minor_faults_per_step": 731.0}
    with pytest.raises(StageSkipped, match=r"1\.2% of its CPU time in the kernel, with 731 page faults per step: "
                                           r"keeping freed memory can pay from 5% and 1,000 faults"):
        stages.host_allocator(RunConfig(), _ctx(CPU, host_cpu=quiet))


@glibc_only
def test_kernel_time_without_page_faults_is_not_theirs_to_remove():
    """Sockets (gloo), futexes or I/O also take kernel time: without the faults, no stage, no finding."""
    sockets = {"system_time_share": 0.3, "minor_faults_per_step": 12.0}
    with pytest.raises(StageSkipped, match="12 page faults per step"):
        stages.host_allocator(RunConfig(), _ctx(CPU, host_cpu=sockets))
    assert diagnose.rule_page_faults({}, {"device_type": "cpu", "host_cpu": sockets}) is None


def test_a_configuration_that_already_keeps_its_memory_has_nothing_to_change():
    cfg = RunConfig(host_allocator="retain")
    assert stages.host_allocator(cfg, _ctx(A100)) is cfg


def test_the_ladder_hands_the_stage_what_was_measured_on_the_configuration_it_builds_on():
    from workbench.run import first_pass
    from workbench.run.record import StageRecord
    busy = {"system_time_share": 0.1, "minor_faults_per_step": 40000.0}
    session = SimpleNamespace(context=_ctx(CPU))
    record = StageRecord.of({"stage": "fused_optimizer", "status": "kept", "metrics": {"host_cpu": busy}})
    assert first_pass.context_on(session, record).host_cpu == busy
    assert first_pass.context_on(session, None).host_cpu is None


def test_a_run_that_asks_for_it_where_it_cannot_be_set_is_refused_before_anything_is_written(monkeypatch):
    from workbench.run import session
    session.check_host_allocator(RunConfig(), isolate=False)  # the default asks nothing
    with pytest.raises(UsageError, match="host_allocator=retain cannot be set here: .*your Python process.*allowed: system"):
        session.check_host_allocator(RunConfig(host_allocator="retain"), isolate=False)
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    with pytest.raises(UsageError, match="glibc's mallopt.*allowed: system"):
        session.check_host_allocator(RunConfig(host_allocator="retain"), isolate=True)


def test_the_stage_skips_on_a_gpu_and_in_the_callers_process():
    with pytest.raises(StageSkipped, match="on cuda the caching allocator"):
        stages.host_allocator(RunConfig(), _ctx(A100))
    if host_memory.unavailable_reason() is None:
        with pytest.raises(StageSkipped, match="your Python process"):
            stages.host_allocator(RunConfig(), _ctx(CPU, own_processes=False))


def test_the_stage_skips_without_glibc(monkeypatch):
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    with pytest.raises(StageSkipped, match="glibc's mallopt"):
        stages.host_allocator(RunConfig(), _ctx(CPU))


def _request(*allocators: str) -> RoundSpec:
    sides = {key: SideSpec(key, RunConfig(host_allocator=allocator).to_dict())
             for key, allocator in zip("ab", allocators)}
    return RoundSpec(sides, tuple(sides), "unused")


def test_one_process_takes_one_allocator():
    with pytest.raises(ValueError, match=r"differ in host_allocator \(retain, system\)"):
        entry.use_host_allocator(_request("system", "retain"), in_own_process=True)
    with pytest.raises(RuntimeError, match="your own Python process"):
        entry.use_host_allocator(_request("retain"), in_own_process=False)
    entry.use_host_allocator(_request("system", "system"), in_own_process=False)  # nothing to set


def test_a_request_whose_sides_differ_fails_every_side_with_the_reason(tmp_path):
    request = RoundSpec(_request("system", "retain").sides, ("a", "b"), str(tmp_path / "reports.jsonl"))
    assert entry._measure(request, {}, in_own_process=True) == 1
    from workbench.launch import channel
    received = channel.received(request.channel)
    assert {key: report.status for key, report in received.items()} == {"a": "failed", "b": "failed"}
    assert "differ in host_allocator" in received["b"].error


class _Recording:
    """A launcher that records each request and reports a measured side."""

    def __init__(self) -> None:
        self.requests: list[RoundSpec] = []

    def run(self, request: RoundSpec, timeout_s=None, env=None):
        self.requests.append(request)
        reports = {key: SideReport(key, "measured", metrics={"step_times_s": [[0.01] * 4], "samples_per_step": 1})
                   for key in request.sides}
        return SimpleNamespace(report=lambda key: reports[key], stopped=None)


def test_sides_that_differ_in_the_allocator_are_measured_each_in_its_own_process_in_the_rounds_order():
    session = SimpleNamespace(nproc=1, peaks={})
    a, b = paired.Side(RunConfig(), "before"), paired.Side(RunConfig(host_allocator="retain"), "after")
    launcher = _Recording()
    reports, stopped = paired._one_round(session, launcher, a, b, ("b", "a"), last=False)
    assert stopped is None and set(reports) == {"a", "b"}
    assert [request.order for request in launcher.requests] == [("b",), ("a",)]


def test_sides_that_share_the_allocator_share_the_rounds_process():
    session = SimpleNamespace(nproc=1, peaks={})
    side = paired.Side(RunConfig(host_allocator="retain"), "x")
    launcher = _Recording()
    paired._one_round(session, launcher, side, side, ("a", "b"), last=False)
    assert [request.order for request in launcher.requests] == [("a", "b")]


@glibc_only
def test_what_was_set_goes_into_the_measurements_notes():
    out = subprocess.run([sys.executable, "-c", "from workbench.training import host_memory as h; print(h.in_effect()); "
                          "h.use('retain'); print(h.in_effect())"], capture_output=True, text=True, check=True)
    before, after = out.stdout.splitlines()
    assert before == "None"
    assert after.startswith("mmap_threshold=") and f"trim_threshold={host_memory.RETAIN_TRIM_THRESHOLD}" in after


def test_the_window_counts_page_faults_and_the_kernels_share_per_step():
    window = Window([[0.1] * 4, [0.1] * 4], [2.3], 2.3, 100.0, None, (8000, 1.5, 0.5))
    figures = host_cpu(window)
    assert figures["minor_faults_per_step"] == 1000.0 and figures["system_time_share"] == 0.25
    assert figures["cpu_s_per_step"] == 0.25


def _context(share: float, **changes) -> dict:
    return {"device_type": "cpu", "host_allocator": "system",
            "host_cpu": {"system_time_share": share, "minor_faults_per_step": 52974.0}, **changes}


def test_the_page_faults_finding_names_the_share_and_predicts_the_stage():
    found = diagnose.rule_page_faults({}, _context(0.097))
    assert found["severity"] == "low" and found["value"] == 0.097
    assert "9.7% of the process's CPU time" in found["evidence"] and "52,974 page faults" in found["evidence"]
    assert diagnose.predicts([found]) == {"host_allocator"}
    assert diagnose.rule_page_faults({}, _context(0.15))["severity"] == "medium"


def test_no_page_faults_finding_under_the_threshold_once_retained_on_a_gpu_or_unmeasured():
    assert diagnose.rule_page_faults({}, _context(0.04)) is None
    assert diagnose.rule_page_faults({}, _context(0.2, host_allocator="retain")) is None
    assert diagnose.rule_page_faults({}, _context(0.2, device_type="cuda")) is None
    assert diagnose.rule_page_faults({}, {"device_type": "cpu"}) is None  # an imported trace: not measured


def test_the_findings_advice_matches_the_settings_the_stage_makes():
    action = diagnose.rule_page_faults({}, _context(0.2))["action"]
    # for a script: the mmap threshold every glibc takes (one that ignores a larger value would keep
    # only the trim threshold, which makes faults worse)
    assert f"mmap_threshold={host_memory.FALLBACK_MMAP_THRESHOLD}" in action
    assert f"trim_threshold={host_memory.RETAIN_TRIM_THRESHOLD}" in action


REALLOCATE = """
import resource, sys
import numpy as np
from workbench.training import host_memory
print(host_memory.use(sys.argv[1]).get("mmap_threshold", 0))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(6 << 20); del block  # 48 MiB, past glibc's largest dynamic mmap threshold (32 MiB)
start = faults()
for _ in range(5):
    block = np.ones(6 << 20); del block
print((faults() - start) // 5)
"""


def _faults_per_allocation(allocator: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", REALLOCATE, allocator], capture_output=True, text=True, check=True)
    threshold, faults = (int(line) for line in out.stdout.split())
    return threshold, faults


@glibc_only
def test_retained_memory_is_reused_without_faulting_its_pages_in_again():
    """Page faults are counted, not timed: 48 MiB is 12,288 small pages (fewer where numpy asks for
    huge ones), faulted in afresh on each allocation under glibc's default; kept, almost none."""
    threshold, kept = _faults_per_allocation("retain")
    if threshold < 48 << 20:
        pytest.skip(f"this glibc caps the mmap threshold at {threshold} bytes: a 48 MiB block is mapped afresh")
    _, default = _faults_per_allocation("system")
    assert kept < 12288 // 100 and kept * 10 <= default


@glibc_only
def test_a_child_forked_after_one_that_kept_its_memory_starts_with_glibcs_own(monkeypatch):
    """The setting is made in each forked child, never in the fork server: a `system` round after a
    `retain` round from the same server faults its blocks in as glibc's default does."""
    from pathlib import Path

    from workbench.launch import forkserver
    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", str(root))
    if _faults_per_allocation("retain")[0] < 48 << 20:
        pytest.skip("this glibc caps the mmap threshold at 32 MiB: a 48 MiB block is mapped afresh")
    server = forkserver.ForkServer(dict(os.environ))
    try:
        target = "tests.run.allocator_child:faults_per_allocation"
        system_first = server.run(target, ["system"], timeout_s=120)
        kept = server.run(target, ["retain"], timeout_s=120)
        system_after = server.run(target, ["system"], timeout_s=120)
    finally:
        server.close()
    assert kept == 0 and system_first > 0
    assert system_after > 0  # had the server kept the setting, this child would fault nothing in
