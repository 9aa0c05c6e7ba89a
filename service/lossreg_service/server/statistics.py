"""Per-model inference statistics in Triton's shape (the ``statistics`` extension).

`StatisticsStore` is the one interface the dataplane records into and the statistics routes read
from; `LocalStatistics` keeps the numbers of this process (with ``LOSSREG_WORKERS > 1`` each
worker answers with its own). A store shared by every worker can replace it without touching
the callers.

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
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["LocalStatistics", "RequestTimes", "StatisticsStore"]

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


def _duration() -> dict[str, int]:
    return {"count": 0, "ns": 0}


@dataclasses.dataclass
class _Model:
    last_inference: int = 0  # ms since the epoch
    inference_count: int = 0
    execution_count: int = 0
    stats: dict[str, dict[str, int]] = dataclasses.field(
        default_factory=lambda: {k: _duration() for k in _DURATIONS}
    )
    batches: dict[int, dict[str, dict[str, int]]] = dataclasses.field(default_factory=dict)

    def batch(self, size: int) -> dict[str, dict[str, int]]:
        entry = self.batches.get(size)
        if entry is None:
            entry = self.batches[size] = {k: _duration() for k in _BATCH_DURATIONS}
        return entry


class LocalStatistics:
    """This process's statistics, behind a lock (workers record from several threads)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], _Model] = {}
        self._lock = threading.Lock()

    def _model(self, model: str, version: str) -> _Model:
        entry = self._models.get((model, version))
        if entry is None:
            entry = self._models[(model, version)] = _Model()
        return entry

    def record_request(
        self, model: str, version: str, *, ok: bool, total_ns: int, times: RequestTimes
    ) -> None:
        with self._lock:
            entry = self._model(model, version)
            outcome = entry.stats["success" if ok else "fail"]
            outcome["count"] += 1
            outcome["ns"] += total_ns
            if not ok:
                return
            entry.inference_count += 1
            entry.last_inference = time.time_ns() // 1_000_000
            for key, ns in (
                ("queue", times.queue_ns),
                ("compute_input", times.input_ns),
                ("compute_infer", times.infer_ns),
                ("compute_output", times.output_ns),
            ):
                entry.stats[key]["count"] += 1
                entry.stats[key]["ns"] += ns
            # A batch's compute counts once per execution (record_execution); its members'
            # decoding and encoding add to its time.
            batch = entry.batch(times.batch_size)
            batch["compute_input"]["ns"] += times.input_ns
            batch["compute_output"]["ns"] += times.output_ns
            if times.batch_size == 1:
                batch["compute_infer"]["ns"] += times.infer_ns
            else:
                batch["compute_infer"]["ns"] += times.infer_ns // times.batch_size

    def record_execution(self, model: str, version: str, *, batch_size: int) -> None:
        with self._lock:
            entry = self._model(model, version)
            entry.execution_count += 1
            for duration in entry.batch(batch_size).values():
                duration["count"] += 1

    def snapshot(self, models: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        out = []
        with self._lock:
            for name, version in models:
                entry = self._models.get((name, version)) or _Model()
                out.append(
                    {
                        "name": name,
                        "version": version,
                        "last_inference": entry.last_inference,
                        "inference_count": entry.inference_count,
                        "execution_count": entry.execution_count,
                        "inference_stats": {k: dict(v) for k, v in entry.stats.items()},
                        "batch_stats": [
                            {"batch_size": size, **{k: dict(v) for k, v in stats.items()}}
                            for size, stats in sorted(entry.batches.items())
                        ],
                    }
                )
        return out
