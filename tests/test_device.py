"""device.py: capability decisions are pure functions of the facts and never touch CUDA."""
from __future__ import annotations

import pytest
import torch

from workbench import device
from workbench.device import DeviceFacts, decide


@pytest.fixture(autouse=True)
def no_cuda_calls(monkeypatch):
    """Any torch.cuda call during a decision fails the test: decide() must work from facts alone."""
    def forbidden(*args, **kwargs):
        raise AssertionError("decide() touched torch.cuda")

    for name in ("is_available", "get_device_properties", "get_device_capability", "device_count",
                 "get_device_name", "is_bf16_supported", "current_device", "mem_get_info", "init"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    yield


def _cuda(major: int, minor: int) -> DeviceFacts:
    return DeviceFacts("cuda", f"sm_{major}{minor}", capability=(major, minor), memory_mb=16000.0, device_count=1)


def test_guard_is_active():
    with pytest.raises(AssertionError):
        torch.cuda.is_available()


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])
def test_volta_and_turing_fp16_with_tensor_cores_no_tf32(capability):
    caps = decide(_cuda(*capability))
    assert caps.amp_dtype == "fp16"
    assert caps.tensor_cores is True
    assert caps.tf32 is False
    assert caps.pin_memory is True
    assert caps.native_bf16_cpu is False
    assert "GradScaler" in caps.amp_reason


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (9, 0)])
def test_ampere_and_hopper_bf16_tf32_tensor_cores(capability):
    caps = decide(_cuda(*capability))
    assert caps.amp_dtype == "bf16"
    assert caps.tensor_cores is True
    assert caps.tf32 is True
    assert caps.pin_memory is True
    assert f"{capability[0]}.{capability[1]}" in caps.amp_reason


def test_pascal_no_tensor_cores():
    caps = decide(_cuda(6, 1))
    assert caps.amp_dtype == "fp16"
    assert caps.tensor_cores is False and caps.tf32 is False


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_cpu_with_native_bf16(flag):
    caps = decide(DeviceFacts("cpu", "cpu", cpu_flags=("avx2", "fma", flag), cpu_cores=8))
    assert caps.amp_dtype == "bf16"
    assert caps.native_bf16_cpu is True
    assert flag in caps.amp_reason
    assert (caps.tensor_cores, caps.tf32, caps.pin_memory) == (False, False, False)


def test_cpu_without_native_bf16_gets_no_amp():
    caps = decide(DeviceFacts("cpu", "cpu", cpu_flags=("avx2", "avx512f", "fma"), cpu_cores=2))
    assert caps.amp_dtype is None
    assert caps.native_bf16_cpu is False
    assert "avx512_bf16" in caps.amp_reason
    assert (caps.tensor_cores, caps.tf32, caps.pin_memory) == (False, False, False)


def test_flag_match_is_exact_not_substring():
    caps = decide(DeviceFacts("cpu", "cpu", cpu_flags=("avx512_bf16x",)))
    assert caps.amp_dtype is None


def test_mps_fp16():
    caps = decide(DeviceFacts("mps", "Apple MPS"))
    assert caps.amp_dtype == "fp16"
    assert (caps.tensor_cores, caps.tf32, caps.pin_memory) == (False, False, False)


def test_has_native_bf16():
    assert device.has_native_bf16(("amx_bf16",))
    assert not device.has_native_bf16(("avx2", "avx512f"))
    assert not device.has_native_bf16(())


def test_facts_to_dict():
    facts = _cuda(8, 0)
    assert facts.to_dict()["capability"] == (8, 0)
    assert facts.to_dict()["type"] == "cuda"


def test_threads_for():
    assert device.threads_for(requested=0, cores=8) == 8
    assert device.threads_for(requested=3, cores=8) == 3
    assert device.threads_for(requested=0, cores=2) == 2


def test_cpu_probe_needs_no_cuda():
    facts = device.probe("cpu")
    assert facts.type == "cpu" and facts.cpu_cores >= 1
    assert facts.capability is None
    assert decide(facts).tf32 is False


def test_cpu_flags_and_cores_on_this_machine():
    flags = device.cpu_flags()
    assert isinstance(flags, tuple) and list(flags) == sorted(set(flags))
    assert device.usable_cores() >= 1
