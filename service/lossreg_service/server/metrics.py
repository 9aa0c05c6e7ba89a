"""Prometheus metrics, in a registry owned by one app (so several apps can live in a process).

- ``lossreg_requests_total{loss, outcome}``: compute requests by loss and outcome (``success``
  or the error code, e.g. ``invalid_tensor``, ``server_busy``).
- ``lossreg_request_duration_seconds{route, method}``: whole request, every route.
- ``lossreg_queue_duration_seconds{device}`` / ``lossreg_compute_duration_seconds{loss, device}``.
- ``lossreg_requests_in_flight``, ``lossreg_requests_queued{device}``,
  ``lossreg_requests_running{device}``, ``lossreg_request_body_bytes_in_flight``.
- ``lossreg_device_memory_bytes{device, kind}``: read when scraped (CUDA allocated/reserved;
  the process's resident memory for the CPU).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _rss_bytes() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _DeviceMemoryCollector(Collector):
    """Per-device memory, read at scrape time."""

    def __init__(self, devices: Callable[[], Sequence[torch.device]]) -> None:
        self._devices = devices

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "lossreg_device_memory_bytes",
            "Memory in use per compute device",
            labels=["device", "kind"],
        )
        for device in self._devices():
            if device.type == "cuda":
                family.add_metric(
                    [str(device), "allocated"], float(torch.cuda.memory_allocated(device))
                )
                family.add_metric(
                    [str(device), "reserved"], float(torch.cuda.memory_reserved(device))
                )
            elif (rss := _rss_bytes()) is not None:
                family.add_metric([str(device), "resident"], rss)
        yield family


class Metrics:
    """All of one app's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._devices: Sequence[torch.device] = ()
        r = self.registry
        self.requests = Counter(
            "lossreg_requests",
            "Compute requests by loss and outcome",
            ["loss", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "lossreg_request_duration_seconds",
            "Request duration, receipt to last byte",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "lossreg_queue_duration_seconds",
            "Time waiting for a compute worker",
            ["device"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "lossreg_compute_duration_seconds",
            "Decode + evaluate + encode time on a worker",
            ["loss", "device"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("lossreg_requests_in_flight", "Requests being handled", registry=r)
        self.queued = Gauge(
            "lossreg_requests_queued",
            "Requests waiting for a compute worker",
            ["device"],
            registry=r,
        )
        self.running = Gauge(
            "lossreg_requests_running", "Computations running", ["device"], registry=r
        )
        self.body_bytes = Gauge(
            "lossreg_request_body_bytes_in_flight",
            "Request-body bytes being received or held (LOSSREG_MAX_BODY_BYTES_IN_FLIGHT)",
            registry=r,
        )
        r.register(_DeviceMemoryCollector(lambda: self._devices))

    def watch_devices(self, devices: Sequence[torch.device]) -> None:
        """Report memory for these devices from now on."""
        self._devices = tuple(devices)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
