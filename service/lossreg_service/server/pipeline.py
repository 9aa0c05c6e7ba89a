"""One inference, whatever the transport: admit it once, read it, schedule it, answer it.

`infer` is the transport-neutral dataplane: REST v2 (`run_inference`), ``/v1`` and gRPC hand it
a decoder and an encoder of their own wire; the `Scheduler` decides where the work runs (inline,
in a dynamic batch with other transports' requests, or alone on a worker), and the statistics
record it. Admission is the executor's, decided once per request (`DataPlane.admitted`): REST
takes it before reading the body, so a full queue refuses before a byte is received.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from lossreg.protocol import HEADER_LENGTH

from ..registry import Loss
from ..settings import Settings
from .body import encoded_response, read_body
from .dataplane import Result
from .deps import registry_when_loaded
from .executor import Admission, ComputeExecutor
from .inference import Decoded, decode_request, encode_response
from .scheduler import Scheduler, batch_key, use_vmap
from .shm import regions
from .statistics import RequestTimes, StatisticsStore

__all__ = [
    "DataPlane",
    "Observed",
    "batch_key",
    "dataplane",
    "infer",
    "observe",
    "observe_losses",
    "resolve_loss",
    "run_inference",
    "use_vmap",
]

R = TypeVar("R")

_JOIN_BELOW = 64 * 1024  # answers up to this size are sent as one chunk


@dataclasses.dataclass(frozen=True)
class DataPlane:
    """What every transport's inference shares, built once in the app's lifespan."""

    settings: Settings
    scheduler: Scheduler
    statistics: StatisticsStore

    @property
    def executor(self) -> ComputeExecutor:
        return self.scheduler.executor

    @contextlib.contextmanager
    def admitted(self, *, body_to_read: bool = False) -> Iterator[Admission]:
        """Admit one request (503 when its device's queue is full) for the block's duration;
        with ``body_to_read`` it joins the queue only once `read_body` has its body."""
        with self.executor.admitted(queued=not body_to_read) as admission:
            yield admission

    async def read_body(self, request: Request, admission: Admission) -> bytearray:
        """The admitted request's body (at most ``LOSSREG_MAX_REQUEST_BYTES``); from now on it
        counts in its device's queue (an upload holds no place there: see `Admission`)."""
        body = await read_body(request, self.settings.max_request_bytes)
        self.executor.enqueue(admission)
        return body


def _version(loss: Loss) -> str:
    return loss.spec.version or "1"


@contextlib.contextmanager
def observe(statistics: StatisticsStore, loss: Loss) -> Iterator[RequestTimes]:
    """Time one request for ``loss`` and record it as a success or, if it raises, a failure."""
    with observe_losses(statistics, [loss]) as observed:
        yield observed.times


@dataclasses.dataclass
class Observed:
    """One request's stages, and the losses it counts for (filled in as it is read)."""

    times: RequestTimes
    losses: list[Loss]


@contextlib.contextmanager
def observe_losses(statistics: StatisticsStore, losses: list[Loss]) -> Iterator[Observed]:
    """Time one request and record it, a success or (if it raises) a failure, once for each
    distinct loss in ``losses``; a composition adds its terms' losses as it reads them.

    Each loss gets the request's whole duration, queue, decoding and encoding, and an equal
    share of its compute (so summed over the losses it is the request's compute once).
    """
    observed = Observed(RequestTimes(), losses)
    start = time.perf_counter_ns()
    ok = False
    try:
        yield observed
        ok = True
    finally:
        total = time.perf_counter_ns() - start
        distinct = list(dict.fromkeys(observed.losses))
        times = observed.times
        if len(distinct) > 1:
            times = dataclasses.replace(times, infer_ns=times.infer_ns // len(distinct))
        for loss in distinct:
            statistics.record_request(
                loss.spec.name, _version(loss), ok=ok, total_ns=total, times=times
            )


async def infer(
    plane: DataPlane,
    loss: Loss,
    decode: Callable[[], Decoded],
    encode: Callable[[Decoded, Result], R],
    *,
    size: int,
    times: RequestTimes | None = None,
    admission: Admission | None = None,
) -> R:
    """Answer one inference request for ``loss``, whatever its transport.

    Args:
        plane: the shared scheduler, settings and statistics.
        loss: the loss to evaluate.
        decode: the transport's request -> `Decoded` (checked).
        encode: the transport's answer from the decoded request and its `Result`.
        size: the request's size in bytes: small ones are decoded on the loop and may batch.
        times: where the stages' durations go (`observe`).
        admission: the request's admission when the transport took it before reading the
            request (REST); else it is admitted here.
    """
    times = times if times is not None else RequestTimes()
    if admission is not None:
        return await plane.scheduler.infer(admission, loss, decode, encode, size=size, times=times)
    with plane.admitted() as admitted:
        return await plane.scheduler.infer(admitted, loss, decode, encode, size=size, times=times)


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
    with observe(plane.statistics, loss) as times, plane.admitted(body_to_read=True) as admission:
        body = await plane.read_body(request, admission)
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
            admission=admission,
        )
    if len(chunks) > 1 and sum(len(memoryview(c).cast("B")) for c in chunks) <= _JOIN_BELOW:
        chunks = [b"".join(chunks)]  # one write instead of one per tensor
    return encoded_response(
        request, chunks, header_length=length, min_bytes=settings.compress_min_bytes
    )
