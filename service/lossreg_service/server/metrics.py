"""Prometheus metrics, in a registry owned by one app (so several apps can live in a process).

- ``lossreg_requests_total{loss, outcome}``: compute requests by loss and outcome (``success``
  or the error code, e.g. ``invalid_tensor``, ``server_busy``).
- ``lossreg_request_duration_seconds{route, method}``: whole request, every route.
- ``lossreg_queue_duration_seconds{device}`` / ``lossreg_compute_duration_seconds{loss, device}``.
- ``lossreg_batch_size{device}``: requests per dynamic batch.
- ``lossreg_requests_in_flight``, ``lossreg_requests_queued{device}``,
  ``lossreg_requests_running{device}``, ``lossreg_request_body_bytes_in_flight``.
- ``lossreg_device_memory_bytes{device, kind}``: CUDA allocated/reserved; the resident memory of
  the server's processes for the CPU.

Whole-server numbers with several worker processes: ``lossreg serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory (`multiprocess_dir`), every worker writes its
values there (prometheus-client's multiprocess mode) and a scrape, whichever worker takes it,
sums them: counters and histograms over every worker that ever ran (so they never go backwards
when a worker is replaced), gauges over the live ones (``livesum``; an exited worker's gauges are
dropped at the next scrape). Without the variable, the app's own registry is rendered.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

__all__ = ["CONTENT_TYPE", "MULTIPROC_ENV", "Metrics", "multiprocess_dir"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def _rss_bytes() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, exited but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no procfs: trust kill(0)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _multiproc_path() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[str]:
    """A fresh metrics directory for one server start, in ``PROMETHEUS_MULTIPROC_DIR`` (which
    worker processes inherit), removed at exit so no earlier run's counts leak into this one."""
    path = tempfile.mkdtemp(prefix="lossreg-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.get_value_class()  # prometheus-client chose at import time
    restore = None
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the SIGTERM it handled once it has stopped; exit through `finally`.
        restore = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield path
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        values.ValueClass = values.get_value_class()
        shutil.rmtree(path, ignore_errors=True)


_MAX_CHILDREN = 4096  # label combinations remembered by `Metrics.child` (clients choose some)


class Metrics:
    """All of one app's metrics (one app per worker process under ``lossreg serve``)."""

    def __init__(self) -> None:
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.path = _multiproc_path()
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
        self.batch_size = Histogram(
            "lossreg_batch_size",
            "Requests computed together in one dynamic batch",
            ["device"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.in_flight = Gauge(
            "lossreg_requests_in_flight",
            "Requests being handled",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queued = Gauge(
            "lossreg_requests_queued",
            "Requests waiting for a compute worker",
            ["device"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.running = Gauge(
            "lossreg_requests_running",
            "Computations running",
            ["device"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.device_memory = Gauge(
            "lossreg_device_memory_bytes",
            "Memory in use per compute device (summed over the server's processes)",
            ["device", "kind"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.body_bytes = Gauge(
            "lossreg_request_body_bytes_in_flight",
            "Request-body bytes being received or held (LOSSREG_MAX_BODY_BYTES_IN_FLIGHT)",
            registry=r,
            multiprocess_mode="livesum",
        )

    @property
    def multiprocess(self) -> bool:
        """Whether values are shared with the server's other worker processes."""
        return self.path is not None

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)`` (values in the metric's label order), remembered: a
        ``labels()`` call checks and joins the values under a lock, several microseconds, and a
        small request made about ten of them."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*values)
            if len(self._children) < _MAX_CHILDREN:
                self._children[key] = found
        return found

    def watch_devices(self, devices: Sequence[torch.device]) -> None:
        """Report memory for these devices from now on."""
        self._devices = tuple(devices)
        self.refresh_memory()

    def refresh_memory(self) -> None:
        """Read this process's memory per device into the gauge (at each scrape, and
        periodically in every worker so a scrape taken by another worker sees it too)."""
        for device in self._devices:
            if device.type == "cuda":  # 0 until this process first uses CUDA
                memory = self.device_memory
                memory.labels(str(device), "allocated").set(torch.cuda.memory_allocated(device))
                memory.labels(str(device), "reserved").set(torch.cuda.memory_reserved(device))
            elif (rss := _rss_bytes()) is not None:
                self.device_memory.labels(str(device), "resident").set(rss)

    def mark_dead(self, pid: int | None = None) -> None:
        """Drop the live gauges of a worker that exited (this one by default)."""
        if self.path is not None:
            multiprocess.mark_process_dead(os.getpid() if pid is None else pid, self.path)

    def _sweep_dead_workers(self, path: str) -> None:
        """Workers that died without saying so (killed, crashed) leave gauge files behind."""
        with contextlib.suppress(OSError):
            for name in os.listdir(path):
                match = _LIVE_GAUGE_FILE.match(name)
                if match and not _alive(pid := int(match.group(1))):
                    self.mark_dead(pid)

    def render(self) -> bytes:
        """The text exposition format, for the whole server."""
        self.refresh_memory()
        if self.path is None:
            return generate_latest(self.registry)
        self._sweep_dead_workers(self.path)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.path)
        return generate_latest(merged)
