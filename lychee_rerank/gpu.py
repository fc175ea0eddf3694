"""GPU and process memory readings (NVML and torch), and freeing cached memory.

Every reading degrades to a clear "no GPU" state instead of raising: a CPU-only machine is a normal
place to run the demo model.
"""

from __future__ import annotations

import gc
import os
import threading
from dataclasses import dataclass

import psutil

# At this fraction of device memory in use, the monitor warns and the engine frees cached memory.
HIGH_MEMORY_FRACTION = 0.8

_nvml_lock = threading.Lock()
_nvml_state: bool | None = None  # None: not tried yet


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    used_bytes: int  # NVML: every process on the device, not only this one
    total_bytes: int
    utilization_pct: int | None
    temperature_c: int | None
    torch_allocated_bytes: int  # this process's tensors
    torch_reserved_bytes: int  # held by this process's caching allocator
    torch_peak_bytes: int

    @property
    def used_fraction(self) -> float:
        return self.used_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def high(self) -> bool:
        return self.used_fraction >= HIGH_MEMORY_FRACTION


@dataclass(frozen=True)
class ProcessMemory:
    rss_bytes: int
    system_total_bytes: int
    system_available_bytes: int


def _nvml():
    """The pynvml module once initialised, or None where there is no NVIDIA driver."""
    global _nvml_state
    with _nvml_lock:
        if _nvml_state is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml_state = True
            except Exception:  # no library, no driver, no device: all mean "no NVIDIA GPU"
                _nvml_state = False
        if not _nvml_state:
            return None
        import pynvml

        return pynvml


def _torch_cuda():
    """torch.cuda if torch is already imported and CUDA usable; never initialises CUDA by itself."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda


def _torch_device_index(nvml_index: int) -> int | None:
    """Torch numbers only the visible devices; map NVML's index when CUDA_VISIBLE_DEVICES is a plain list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return nvml_index
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if all(v.isdigit() for v in ids):
        return ids.index(str(nvml_index)) if str(nvml_index) in ids else None
    return None


def gpu_readings() -> list[GpuReading]:
    """One reading per NVIDIA GPU; an empty list on a machine without one."""
    nvml = _nvml()
    if nvml is None:
        return []
    cuda = _torch_cuda()
    readings = []
    try:
        count = nvml.nvmlDeviceGetCount()
    except Exception:
        return []
    for i in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
        except Exception:
            continue
        try:
            util = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            util = None
        try:
            temp = int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        except Exception:
            temp = None
        allocated = reserved = peak = 0
        torch_index = _torch_device_index(i)
        if cuda is not None and torch_index is not None and torch_index < cuda.device_count():
            allocated = cuda.memory_allocated(torch_index)
            reserved = cuda.memory_reserved(torch_index)
            peak = cuda.max_memory_allocated(torch_index)
        readings.append(
            GpuReading(i, name, int(memory.used), int(memory.total), util, temp, allocated, reserved, peak)
        )
    return readings


def process_memory() -> ProcessMemory:
    vm = psutil.virtual_memory()
    return ProcessMemory(psutil.Process().memory_info().rss, vm.total, vm.available)


def free_cached_memory() -> int:
    """Return cached blocks to the driver (torch.cuda.empty_cache + gc.collect); bytes released."""
    gc.collect()
    cuda = _torch_cuda()
    if cuda is None:
        return 0
    before = sum(cuda.memory_reserved(d) for d in range(cuda.device_count()))
    cuda.empty_cache()
    after = sum(cuda.memory_reserved(d) for d in range(cuda.device_count()))
    return max(0, before - after)


def device_memory_high(device) -> bool:
    """True when the CUDA device's memory in use (all processes) is at or above the threshold."""
    cuda = _torch_cuda()
    if cuda is None or getattr(device, "type", None) != "cuda":
        return False
    free, total = cuda.mem_get_info(device)
    return (total - free) / total >= HIGH_MEMORY_FRACTION


def free_device_bytes(device) -> int:
    """Memory this process could still use on ``device``: the driver's free memory plus torch's cache;
    on CPU, the system's available memory."""
    cuda = _torch_cuda()
    if cuda is not None and getattr(device, "type", None) == "cuda":
        free, _ = cuda.mem_get_info(device)
        return int(free + cuda.memory_reserved(device) - cuda.memory_allocated(device))
    return int(psutil.virtual_memory().available)
