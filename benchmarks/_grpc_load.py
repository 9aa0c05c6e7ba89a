"""gRPC load: ``tritonclient.grpc.aio`` keeping ``streams`` inference calls in flight on one
channel (HTTP/2 streams, as gRPC clients multiplex) for a fixed time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from ._cases import Case
from ._load import LoadResult

__all__ = ["run_grpc_load"]


def _inputs(module: Any, case: Case) -> list[Any]:
    out = []
    for name, array in case.inputs.items():
        entry = module.InferInput(name, list(array.shape), _datatype(array))
        entry.set_data_from_numpy(array)
        out.append(entry)
    return out


def _datatype(array: np.ndarray) -> str:
    return {"float32": "FP32", "int64": "INT64", "int32": "INT32"}[array.dtype.name]


def run_grpc_load(target: str, case: Case, *, streams: int, seconds: float) -> LoadResult:
    """Requests per second and latency percentiles of ``case`` over ``streams`` concurrent
    calls (errors counted, not raised)."""
    import tritonclient.grpc.aio as grpcaio

    async def run() -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        async with grpcaio.InferenceServerClient(target) as client:
            inputs = _inputs(grpcaio, case)
            params = case.params or None
            await client.infer(case.loss, inputs, parameters=params)  # warm the channel
            start = time.perf_counter()
            deadline = start + seconds

            async def stream() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    try:
                        await client.infer(case.loss, inputs, parameters=params)
                    except Exception:  # noqa: BLE001 - counted, as wrk counts non-2xx
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*(stream() for _ in range(streams)))
            return latencies, errors, time.perf_counter() - start

    latencies, errors, elapsed = asyncio.run(run())
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return LoadResult(
        tool="tritonclient.grpc.aio",
        connections=streams,
        requests=len(latencies),
        seconds=elapsed,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        errors=errors,
    )
