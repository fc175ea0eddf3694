"""GPU readings: NVML and torch agree on which device is which; no GPU is a normal state."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lychee_rerank import gpu

GIB = 2**30


class FakeNvml:
    """Two GPUs as NVML numbers them (all of the machine's)."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self):
        self.devices = [
            dict(name="NVIDIA H100 80GB HBM3", bus=0x18, used=5 * GIB, total=80 * GIB, util=3, temp=31),
            dict(name="NVIDIA H100 80GB HBM3", bus=0x2A, used=70 * GIB, total=80 * GIB, util=97, temp=64),
        ]

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=self.devices[h]["used"], total=self.devices[h]["total"])

    def nvmlDeviceGetName(self, h):
        return self.devices[h]["name"]

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.devices[h]["util"])

    def nvmlDeviceGetTemperature(self, h, kind):
        return self.devices[h]["temp"]

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(domain=0, bus=self.devices[h]["bus"], device=0)


class FakeCuda:
    """torch.cuda with CUDA_VISIBLE_DEVICES=1: torch's device 0 is NVML's device 1."""

    def device_count(self):
        return 1

    def current_device(self):
        return 0

    def get_device_properties(self, index):
        return SimpleNamespace(pci_domain_id=0, pci_bus_id=0x2A, pci_device_id=0)

    def memory_allocated(self, index):
        return 60 * GIB

    def memory_reserved(self, index):
        return 66 * GIB

    def max_memory_allocated(self, index):
        return 64 * GIB


@pytest.fixture
def two_gpus_one_visible(monkeypatch):
    monkeypatch.setattr(gpu, "_nvml", lambda: FakeNvml())
    monkeypatch.setattr(gpu, "_torch_cuda", lambda: FakeCuda())


def test_readings_cover_every_gpu_with_torch_figures_on_the_one_torch_uses(two_gpus_one_visible):
    first, second = gpu.gpu_readings()
    assert (first.index, first.used_bytes, first.torch_allocated_bytes) == (0, 5 * GIB, 0)
    assert (second.index, second.torch_allocated_bytes, second.torch_reserved_bytes) == (1, 60 * GIB, 66 * GIB)
    assert (second.utilization_pct, second.temperature_c) == (97, 64)


def test_memory_above_eighty_percent_is_flagged_high(two_gpus_one_visible):
    first, second = gpu.gpu_readings()
    assert not first.high
    assert second.high and second.used_fraction == pytest.approx(70 / 80)


def test_device_memory_in_use_is_read_from_the_matching_gpu(two_gpus_one_visible):
    assert gpu.device_used_bytes(torch.device("cuda", 0)) == 70 * GIB
    assert gpu.device_used_bytes(torch.device("cpu")) is None


def test_a_machine_without_nvidia_gpu_reads_as_no_gpu(monkeypatch):
    monkeypatch.setattr(gpu, "_nvml", lambda: None)
    assert gpu.gpu_readings() == []
    memory = gpu.process_memory()
    assert 0 < memory.rss_bytes < memory.system_total_bytes
