"""Memory readings for the bench: a sampler thread for the process RSS and the GPU's NVML "used"
memory, and torch's own peak counter."""

from __future__ import annotations

import gc
import threading

from ..gpu import device_used_bytes

SAMPLE_INTERVAL_S = 0.05


class MemorySampler:
    """Samples this process's RSS (and the GPU's NVML "used" memory) every ~50 ms in a thread.
    ``window()`` returns the peaks since the previous call (or ``reset()``), and starts a new window."""

    def __init__(self, device=None, interval: float = SAMPLE_INTERVAL_S):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._device = device
        self._has_nvml = device_used_bytes(device) is not None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rss = 0
        self._nvml_used: int | None = None
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)

    @property
    def has_nvml(self) -> bool:
        return self._has_nvml

    def _sample(self) -> tuple[int, int | None]:
        rss = self._process.memory_info().rss
        return rss, device_used_bytes(self._device) if self._has_nvml else None

    def _record(self) -> None:
        rss, used = self._sample()
        with self._lock:
            self._rss = max(self._rss, rss)
            if used is not None:
                self._nvml_used = max(self._nvml_used or 0, used)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._record()

    def __enter__(self) -> "MemorySampler":
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def reset(self) -> None:
        with self._lock:
            self._rss, self._nvml_used = 0, None
        self._record()

    def window(self) -> tuple[int, int | None]:
        """(peak RSS, peak NVML used or None) since the last window; starts the next one."""
        self._record()
        with self._lock:
            peaks = (self._rss, self._nvml_used)
            self._rss, self._nvml_used = 0, None
        self._record()
        return peaks

    def current_rss(self) -> int:
        return self._process.memory_info().rss


def release(device) -> None:
    """Between measurements: drop garbage and cached blocks, restart the peak counter."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_vram(device) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
