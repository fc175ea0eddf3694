"""Prometheus metrics of the service (``GET /metrics``): requests, images, latency, queue depth and
GPU memory. Each app has its own registry, so several apps in one process (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..gpu import gpu_readings

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class _GpuMemory:
    """GPU memory read at scrape time (NVML through lychee_rerank.gpu); nothing on a machine without one."""

    def collect(self):
        used = GaugeMetricFamily("lychee_gpu_memory_used_bytes", "GPU memory in use (all processes)", labels=["gpu"])
        total = GaugeMetricFamily("lychee_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        ours = GaugeMetricFamily("lychee_gpu_memory_reserved_bytes", "GPU memory held by this process's torch", labels=["gpu"])
        for reading in gpu_readings():
            used.add_metric([str(reading.index)], reading.used_bytes)
            total.add_metric([str(reading.index)], reading.total_bytes)
            ours.add_metric([str(reading.index)], reading.torch_reserved_bytes)
        return [used, total, ours]


class Metrics:
    def __init__(self, queue_depth, running):
        self.registry = CollectorRegistry()
        self.requests = Counter("lychee_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.images = Counter("lychee_images", "Documents by outcome (scored, error, dropped)",
                              ["outcome"], registry=self.registry)
        self.latency = Histogram("lychee_request_seconds", "Time from request to response, queue included",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        Gauge("lychee_queue_depth", "Requests waiting for a pass", registry=self.registry).set_function(queue_depth)
        Gauge("lychee_requests_running", "Requests in the running pass", registry=self.registry).set_function(running)
        self.registry.register(_GpuMemory())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
