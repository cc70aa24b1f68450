"""Device selection: CUDA when present (mixed precision), else the CPU; a clear error for a missing GPU.
The CPU allocator keeps freed memory where the C library is glibc."""

import platform

import pytest
import torch

from defectkit import runtime
from defectkit.errors import ConfigError
from defectkit.runtime import keep_freed_memory, lightning_accelerator, resolve_device, training_precision


def test_auto_selects_the_cpu_when_no_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_auto_selects_cuda_when_a_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_asking_for_cuda_without_a_gpu_names_the_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="runtime.device"):
        resolve_device("cuda")


def test_an_unknown_device_is_refused():
    with pytest.raises(ConfigError, match="must be one of"):
        resolve_device("tpu")


def test_the_cpu_trains_in_fp32_and_cuda_in_mixed_precision(monkeypatch):
    assert training_precision(torch.device("cpu")) == "32-true"
    assert lightning_accelerator(torch.device("cpu")) == ("cpu", 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert training_precision(torch.device("cuda")) == "bf16-mixed"
    assert lightning_accelerator(torch.device("cuda:1")) == ("gpu", [1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's mallopt")
def test_the_allocator_keeps_freed_memory_on_glibc_and_setting_it_twice_is_harmless(monkeypatch):
    monkeypatch.setattr(runtime, "_allocator_tuned", False)  # mallopt is called, not skipped as already done
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True


def test_the_allocator_setting_is_skipped_where_the_c_library_is_not_glibc(monkeypatch):
    monkeypatch.setattr(runtime, "_allocator_tuned", False)
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert keep_freed_memory() is False
