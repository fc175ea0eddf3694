"""GPU and process memory readings (NVML and torch), and freeing cached memory.

Every reading degrades to a clear "no GPU" state instead of raising: a CPU-only machine is a normal
place to run the demo model.
"""

from __future__ import annotations

import gc
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


def _pci_address(nvml, handle) -> tuple[int, int, int]:
    pci = nvml.nvmlDeviceGetPciInfo(handle)
    return pci.domain, pci.bus, pci.device


def _torch_indices_by_pci(cuda) -> dict[tuple[int, int, int], int]:
    """Torch numbers only the visible devices (CUDA_VISIBLE_DEVICES); NVML numbers them all.
    The PCI address is what both agree on."""
    indices = {}
    for index in range(cuda.device_count()):
        props = cuda.get_device_properties(index)
        address = tuple(getattr(props, a, None) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id"))
        if None not in address:
            indices[address] = index
    return indices


def device_used_bytes(device) -> int | None:
    """NVML's memory in use (all processes, CUDA context included) on torch's CUDA ``device``;
    None without NVML or when the device cannot be matched."""
    nvml, cuda = _nvml(), _torch_cuda()
    if nvml is None or cuda is None or getattr(device, "type", None) != "cuda":
        return None
    index = device.index if device.index is not None else cuda.current_device()
    try:
        torch_indices = _torch_indices_by_pci(cuda)
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            if torch_indices.get(_pci_address(nvml, handle)) == index:
                return int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:
        return None
    return None


def gpu_readings() -> list[GpuReading]:
    """One reading per NVIDIA GPU; an empty list on a machine without one."""
    nvml = _nvml()
    if nvml is None:
        return []
    cuda = _torch_cuda()
    torch_indices = _torch_indices_by_pci(cuda) if cuda is not None else {}
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
        try:
            torch_index = torch_indices.get(_pci_address(nvml, handle))
        except Exception:
            torch_index = None
        if torch_index is not None:
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
