"""Per-model inference statistics in Triton's shape (the ``statistics`` extension).

`StatisticsStore` is the one interface the dataplane records into and the statistics routes read
from. `MetricStatistics` keeps the numbers as Prometheus counters (exported in ``/metrics`` as
``lossreg_inference_*``), so with ``LOSSREG_WORKERS > 1`` they live in every worker's
multiprocess files (see `metrics`) and a read, whichever worker takes it, sums them for the whole
server, exited workers included, exactly as ``/metrics`` does. Recording is a few in-memory (or
mmap) increments; only a read collects.

What is counted, as Triton counts it:

- ``success`` / ``fail``: requests for a model that got an answer or an error, and their whole
  duration (admission to encoded answer);
- ``queue``: waiting for a worker (and, batched, for the batch); ``compute_input``: decoding
  the request; ``compute_infer``: the loss and its gradients; ``compute_output``: encoding;
- ``inference_count``: inferences that succeeded; ``execution_count``: computations run (a
  dynamic batch of 8 requests is one execution), with ``batch_stats`` per executed batch size.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

__all__ = ["MetricStatistics", "RequestTimes", "StatisticsStore"]

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


@dataclasses.dataclass
class RequestTimes:
    """One request's stages, in nanoseconds, filled in as it goes through the dataplane."""

    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    batch_size: int = 1  # the execution it was part of


class StatisticsStore(Protocol):
    """Where the dataplane records, and the routes read, inference statistics."""

    def record_request(
        self, model: str, version: str, *, ok: bool, total_ns: int, times: RequestTimes
    ) -> None:
        """One request for ``model`` ended (``ok``: answered, else an error)."""

    def record_execution(self, model: str, version: str, *, batch_size: int) -> None:
        """One computation of ``batch_size`` requests ran for ``model``."""

    def snapshot(self, models: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        """Triton's ``model_stats`` entries for these ``(name, version)`` pairs."""


_NS = 1e-9  # counters hold seconds (Prometheus' unit); Triton's statistics want nanoseconds
_PREFIX = "lossreg_inference_"


def _duration(count: float = 0, seconds: float = 0.0) -> dict[str, int]:
    return {"count": int(count), "ns": round(seconds / _NS)}


@dataclasses.dataclass(frozen=True)
class _Model:
    """One model's counters, bound to its labels once (``labels()`` is the costly part)."""

    success: Any
    fail: Any
    durations: dict[str, Any]  # Triton's inference_stats key -> seconds counter
    last: Any


@dataclasses.dataclass(frozen=True)
class _Batch:
    executions: Any
    durations: dict[str, Any]  # compute_input/infer/output -> seconds counter


class MetricStatistics:
    """Statistics as Prometheus counters in ``registry``; with ``path`` (the multiprocess
    directory, `metrics.Metrics.path`) a read sums every worker's files under it."""

    def __init__(self, registry: CollectorRegistry, path: str | None = None) -> None:
        self._path = path
        labels = ["loss", "version"]
        self._requests = Counter(
            f"{_PREFIX}requests",
            "Inference requests by outcome (Triton's statistics: success, fail)",
            [*labels, "outcome"],
            registry=registry,
        )
        self._seconds = Counter(
            f"{_PREFIX}duration_seconds",
            "Cumulative time of requests (stage success, fail) and of successful requests' "
            "stages (queue, compute_input, compute_infer, compute_output)",
            [*labels, "stage"],
            registry=registry,
        )
        self._executions = Counter(
            f"{_PREFIX}executions",
            "Computations run, by batch size (a dynamic batch of 8 requests is one)",
            [*labels, "batch_size"],
            registry=registry,
        )
        self._batch_seconds = Counter(
            f"{_PREFIX}batch_duration_seconds",
            "Cumulative compute stages of executions, by batch size",
            [*labels, "batch_size", "stage"],
            registry=registry,
        )
        self._last = Gauge(
            f"{_PREFIX}last_timestamp_seconds",
            "When the last successful inference ended (Unix time)",
            labels,
            registry=registry,
            multiprocess_mode="max",  # the latest over every worker, exited ones included
        )
        self._collected = (
            self._requests,
            self._seconds,
            self._executions,
            self._batch_seconds,
            self._last,
        )
        self._models: dict[tuple[str, str], _Model] = {}
        self._batches: dict[tuple[str, str, int], _Batch] = {}

    def _model(self, model: str, version: str) -> _Model:
        entry = self._models.get((model, version))
        if entry is None:  # a race creates it twice: labels() hands out the same children
            entry = self._models[(model, version)] = _Model(
                success=self._requests.labels(model, version, "success"),
                fail=self._requests.labels(model, version, "fail"),
                durations={k: self._seconds.labels(model, version, k) for k in _DURATIONS},
                last=self._last.labels(model, version),
            )
        return entry

    def _batch(self, model: str, version: str, size: int) -> _Batch:
        entry = self._batches.get((model, version, size))
        if entry is None:
            bs = str(size)
            entry = self._batches[(model, version, size)] = _Batch(
                executions=self._executions.labels(model, version, bs),
                durations={
                    k: self._batch_seconds.labels(model, version, bs, k) for k in _BATCH_DURATIONS
                },
            )
        return entry

    def record_request(
        self, model: str, version: str, *, ok: bool, total_ns: int, times: RequestTimes
    ) -> None:
        entry = self._model(model, version)
        if not ok:
            entry.fail.inc()
            entry.durations["fail"].inc(total_ns * _NS)
            return
        entry.success.inc()
        durations = entry.durations
        durations["success"].inc(total_ns * _NS)
        durations["queue"].inc(times.queue_ns * _NS)
        durations["compute_input"].inc(times.input_ns * _NS)
        durations["compute_infer"].inc(times.infer_ns * _NS)
        durations["compute_output"].inc(times.output_ns * _NS)
        entry.last.set(time.time())
        # A batch's compute counts once per execution (record_execution); each member saw the
        # whole batch's compute, and adds its share; its decoding and encoding add in full.
        batch = self._batch(model, version, times.batch_size).durations
        batch["compute_input"].inc(times.input_ns * _NS)
        batch["compute_infer"].inc(times.infer_ns // times.batch_size * _NS)
        batch["compute_output"].inc(times.output_ns * _NS)

    def record_execution(self, model: str, version: str, *, batch_size: int) -> None:
        self._batch(model, version, batch_size).executions.inc()

    def _samples(self) -> Iterator[Sample]:
        """This store's samples: its own values, or every worker's (counters: over all that
        ever ran; the last-inference gauge: the maximum)."""
        if self._path is None:
            families = [f for metric in self._collected for f in metric.collect()]
        else:
            files = glob.glob(os.path.join(self._path, "counter_*.db"))
            files += glob.glob(os.path.join(self._path, "gauge_max_*.db"))
            families = list(MultiProcessCollector.merge(files, accumulate=True))
        for family in families:
            if family.name.startswith(_PREFIX):
                yield from family.samples

    def snapshot(self, models: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for sample in self._samples():
            labels = sample.labels
            key = (labels["loss"], labels["version"])
            entry = seen.setdefault(key, {"counts": {}, "seconds": {}, "batches": {}, "last": 0.0})
            name, value = sample.name, sample.value
            if name == f"{_PREFIX}requests_total":
                entry["counts"][labels["outcome"]] = value
            elif name == f"{_PREFIX}duration_seconds_total":
                entry["seconds"][labels["stage"]] = value
            elif name == f"{_PREFIX}executions_total":
                batch = entry["batches"].setdefault(int(labels["batch_size"]), {})
                batch["count"] = value
            elif name == f"{_PREFIX}batch_duration_seconds_total":
                batch = entry["batches"].setdefault(int(labels["batch_size"]), {})
                batch[labels["stage"]] = value
            elif name == f"{_PREFIX}last_timestamp_seconds":
                entry["last"] = value
        return [_triton(name, version, seen.get((name, version))) for name, version in models]


def _triton(name: str, version: str, entry: dict[str, Any] | None) -> dict[str, Any]:
    """Triton's ``model_stats`` entry from one model's collected values."""
    entry = entry or {"counts": {}, "seconds": {}, "batches": {}, "last": 0.0}
    counts, seconds = entry["counts"], entry["seconds"]
    ok = counts.get("success", 0)
    # Every successful request has each stage once; a failure only its whole duration.
    stage_counts = {k: ok for k in _DURATIONS} | {"fail": counts.get("fail", 0)}
    batches = entry["batches"]
    return {
        "name": name,
        "version": version,
        "last_inference": int(entry["last"] * 1000),
        "inference_count": int(ok),
        "execution_count": int(sum(b.get("count", 0) for b in batches.values())),
        "inference_stats": {k: _duration(stage_counts[k], seconds.get(k, 0.0)) for k in _DURATIONS},
        "batch_stats": [
            {
                "batch_size": size,
                **{k: _duration(b.get("count", 0), b.get(k, 0.0)) for k in _BATCH_DURATIONS},
            }
            for size, b in sorted(batches.items())
        ],
    }
