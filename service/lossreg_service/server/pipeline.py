"""One KServe v2 inference, whatever the transport: decode, compute (batched or not), encode.

`infer` is the transport-neutral dataplane: REST v2 (`run_inference`) and gRPC hand it a
decoder and an encoder of their own wire and it does the rest, so both share admission, the
dynamic batcher (their requests batch together), the timeout, the non-finite policy and the
statistics. Two paths, chosen by the request's size:

- small bodies (at most ``LOSSREG_BATCH_MAX_BYTES``) are decoded on the event loop (tens of
  microseconds). With small tensors too, dynamic batching groups them with concurrent requests
  that have the same loss, parameters and shapes (`batch_key`), one worker call computes the
  batch, and each answer is encoded back on the loop. A small body can still name big tensors
  (in shared memory): those are computed, and written back, on a worker;
- big bodies: decoding, evaluation and encoding all happen on a worker, so a 16 MB tensor or
  megabytes of JSON numbers never stall the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, TypeVar

import orjson
import torch
from starlette.requests import Request
from starlette.responses import Response

from lossreg.protocol import HEADER_LENGTH

from ..registry import Loss
from ..settings import Settings
from .batcher import DynamicBatcher
from .body import encoded_response, read_admitted_body
from .dataplane import Computation, Result, compute, compute_batch, single
from .deps import registry_when_loaded
from .executor import ComputeExecutor
from .inference import Decoded, decode_request, encode_response
from .shm import regions
from .statistics import RequestTimes, StatisticsStore

__all__ = [
    "DataPlane",
    "batch_key",
    "dataplane",
    "infer",
    "observe",
    "resolve_loss",
    "run_inference",
    "use_vmap",
]

R = TypeVar("R")

_JOIN_BELOW = 64 * 1024  # answers up to this size are sent as one chunk


def use_vmap(setting: str, devices: Sequence[torch.device]) -> bool:
    """``batch_vmap``: auto means vmap on CUDA devices only."""
    if setting == "auto":
        return any(d.type == "cuda" for d in devices)
    return setting == "on"


def batch_key(loss: Loss, decoded: Decoded, nonfinite: str) -> Hashable:
    """What requests must share to be stacked into one batch."""
    return (
        loss.spec.name,
        orjson.dumps(decoded.params, option=orjson.OPT_SORT_KEYS),
        None if decoded.plan.grad is None else tuple(decoded.plan.grad),
        nonfinite,
        tuple(sorted((n, a.shape, dt) for n, (a, dt) in decoded.inputs.items())),
        None if decoded.grad_loss is None else (decoded.grad_loss[0].shape, decoded.grad_loss[1]),
    )


def _computation(
    loss: Loss, decoded: Decoded, compute_dtype: torch.dtype | None, nonfinite: str
) -> Computation:
    return Computation(
        single(loss, decoded.params),
        decoded.inputs,
        grad=decoded.plan.grad,
        grad_loss=decoded.grad_loss,
        compute_dtype=compute_dtype,
        nonfinite=nonfinite,
    )


def _tensor_bytes(decoded: Decoded) -> int:
    arrays = [a for a, _ in decoded.inputs.values()]
    if decoded.grad_loss is not None:
        arrays.append(decoded.grad_loss[0])
    return sum(a.nbytes for a in arrays)


@dataclasses.dataclass(frozen=True)
class DataPlane:
    """What every transport's inference shares, built once in the app's lifespan."""

    settings: Settings
    executor: ComputeExecutor
    batcher: DynamicBatcher | None
    compute_dtype: torch.dtype | None
    statistics: StatisticsStore


def _version(loss: Loss) -> str:
    return loss.spec.version or "1"


@contextlib.contextmanager
def observe(statistics: StatisticsStore, loss: Loss) -> Iterator[RequestTimes]:
    """Time one request for ``loss`` and record it as a success or, if it raises, a failure."""
    times = RequestTimes()
    start = time.perf_counter_ns()
    ok = False
    try:
        yield times
        ok = True
    finally:
        statistics.record_request(
            loss.spec.name,
            _version(loss),
            ok=ok,
            total_ns=time.perf_counter_ns() - start,
            times=times,
        )


def _batch(
    plane: DataPlane,
    loss: Loss,
    vmap: bool,
    computations: Sequence[Any],
    device: torch.device,
) -> list[Result | Exception]:
    plane.statistics.record_execution(loss.spec.name, _version(loss), batch_size=len(computations))
    return compute_batch(loss, computations, device, vmap=vmap)


def _timed(fn: Callable[[], R]) -> tuple[R, int]:
    start = time.perf_counter_ns()
    out = fn()
    return out, time.perf_counter_ns() - start


async def infer(
    plane: DataPlane,
    loss: Loss,
    decode: Callable[[], Decoded],
    encode: Callable[[Decoded, Result], R],
    *,
    size: int,
    times: RequestTimes | None = None,
) -> R:
    """Answer one inference request for ``loss``, whatever its transport.

    Args:
        plane: the shared executor, batcher, settings and statistics.
        loss: the loss to evaluate.
        decode: the transport's request -> `Decoded` (checked).
        encode: the transport's answer from the decoded request and its `Result`.
        size: the request's size in bytes: small ones are decoded on the loop and may batch.
        times: where the stages' durations go (`observe`).
    """
    times = times if times is not None else RequestTimes()
    settings, executor, batcher = plane.settings, plane.executor, plane.batcher
    name, version = loss.spec.name, _version(loss)

    if size <= settings.batch_max_bytes:  # small: decoding it here costs microseconds
        decoded, times.input_ns = _timed(decode)
        nonfinite = decoded.nonfinite or settings.nonfinite
        computation = _computation(loss, decoded, plane.compute_dtype, nonfinite)
        if batcher is not None and _tensor_bytes(decoded) <= settings.batch_max_bytes:
            vmap = use_vmap(settings.batch_vmap, executor.devices)
            waited = time.perf_counter_ns()
            result: Result = await batcher.submit(
                batch_key(loss, decoded, nonfinite),
                computation,
                functools.partial(_batch, plane, loss, vmap),
                label=name,
            )
            times.infer_ns, times.batch_size = result.compute_ns, result.batch_size
            times.queue_ns = max(0, time.perf_counter_ns() - waited - result.compute_ns)
            answer, times.output_ns = _timed(lambda: encode(decoded, result))
            return answer

        # big tensors in shared memory, or batching off: compute and encode on a worker
        def compute_encode(device: torch.device) -> R:
            plane.statistics.record_execution(name, version, batch_size=1)
            result = compute(computation, device)
            times.infer_ns = result.compute_ns
            answer, times.output_ns = _timed(lambda: encode(decoded, result))
            return answer

        waited = time.perf_counter_ns()
        answer = await executor.run(compute_encode, loss=name)
        times.queue_ns = max(0, time.perf_counter_ns() - waited - times.infer_ns - times.output_ns)
        return answer

    def work(device: torch.device) -> R:
        decoded, times.input_ns = _timed(decode)
        nonfinite = decoded.nonfinite or settings.nonfinite
        plane.statistics.record_execution(name, version, batch_size=1)
        result = compute(_computation(loss, decoded, plane.compute_dtype, nonfinite), device)
        times.infer_ns = result.compute_ns
        answer, times.output_ns = _timed(lambda: encode(decoded, result))
        return answer

    waited = time.perf_counter_ns()
    answer = await executor.run(work, loss=name)
    spent = times.input_ns + times.infer_ns + times.output_ns
    times.queue_ns = max(0, time.perf_counter_ns() - waited - spent)
    return answer


async def resolve_loss(request: Request, name: str) -> Loss:
    """The loss an inference request names (waiting while the registry loads); marks the
    request as a computation (metrics, logs)."""
    request.state.compute = True
    loss: Loss = (await registry_when_loaded(request.app)).get(name)
    request.state.loss = loss.spec.name
    return loss


def dataplane(app: Any) -> DataPlane:
    """The app's `DataPlane` (built in the lifespan)."""
    return app.state.dataplane


async def run_inference(request: Request, loss: Loss) -> Response:
    """Answer one REST v2 inference request for ``loss``: read the admitted body, `infer`, and
    send the JSON (+ binary) answer."""
    plane = dataplane(request.app)
    settings = plane.settings
    with observe(plane.statistics, loss) as times:
        body = await read_admitted_body(request, plane.executor, settings.max_request_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        shm = regions(request.app)
        chunks, length = await infer(
            plane,
            loss,
            lambda: decode_request(loss.spec, body, header_length, shm),
            lambda decoded, result: encode_response(
                loss.spec, decoded, result.loss, result.grads, result.nonfinite
            ),
            size=len(body),
            times=times,
        )
    if len(chunks) > 1 and sum(len(memoryview(c).cast("B")) for c in chunks) <= _JOIN_BELOW:
        chunks = [b"".join(chunks)]  # one write instead of one per tensor
    return encoded_response(
        request, chunks, header_length=length, min_bytes=settings.compress_min_bytes
    )
