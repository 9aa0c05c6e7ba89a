"""Where an admitted computation runs: in a dynamic batch, or alone on a worker.

The one place that decides, so every transport (REST v2, ``/v1``, gRPC) and every kind of
request (one loss, a composition, a sweep) gets the same choice. After the request was admitted
(`ComputeExecutor.admit`, once) and, for a small body, decoded on the event loop:

- **batched**: small computations join the dynamic batcher (`batcher`): concurrent ones
  with the same loss, parameters and shapes share one worker call;
- **alone**: the rest runs on a worker with the executor's timeout: big bodies are decoded
  there too, so megabytes never stall the loop.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import orjson
import torch

from ..registry import Loss
from ..settings import Settings
from .batcher import DynamicBatcher
from .dataplane import Computation, Result, compute, compute_batch, single
from .executor import Admission, ComputeExecutor
from .inference import Decoded
from .statistics import RequestTimes, StatisticsStore

__all__ = ["Scheduler", "batch_key", "use_vmap"]

R = TypeVar("R")


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


def _tensor_bytes(decoded: Decoded) -> int:
    arrays = [a for a, _ in decoded.inputs.values()]
    if decoded.grad_loss is not None:
        arrays.append(decoded.grad_loss[0])
    return sum(a.nbytes for a in arrays)


def _version(loss: Loss) -> str:
    return loss.spec.version or "1"


def _timed(fn: Callable[[], R]) -> tuple[R, int]:
    start = time.perf_counter_ns()
    out = fn()
    return out, time.perf_counter_ns() - start


class Scheduler:
    """Runs admitted computations where they belong (see the module docstring).

    Args:
        executor: the compute pools (admission, workers, timeouts).
        batcher: the dynamic batcher, or None when batching is off.
        settings: batching limits, the non-finite policy.
        statistics: where executions are recorded.
        compute_dtype: the dtype losses compute in, or None for the inputs' own.
    """

    def __init__(
        self,
        executor: ComputeExecutor,
        batcher: DynamicBatcher | None,
        *,
        settings: Settings,
        statistics: StatisticsStore,
        compute_dtype: torch.dtype | None,
    ) -> None:
        self.executor = executor
        self.batcher = batcher
        self.settings = settings
        self.statistics = statistics
        self.compute_dtype = compute_dtype
        self._vmap = use_vmap(settings.batch_vmap, executor.devices)

    def admit(self) -> Admission:
        """The request's one admission decision (`ComputeExecutor.admit`)."""
        return self.executor.admit()

    def _computation(self, loss: Loss, decoded: Decoded) -> Computation:
        return Computation(
            single(loss, decoded.params),
            decoded.inputs,
            grad=decoded.plan.grad,
            grad_loss=decoded.grad_loss,
            compute_dtype=self.compute_dtype,
            nonfinite=decoded.nonfinite or self.settings.nonfinite,
        )

    def _executed(self, loss: Loss, batch_size: int = 1) -> None:
        self.statistics.record_execution(loss.spec.name, _version(loss), batch_size=batch_size)

    def _batch(
        self, loss: Loss, computations: Sequence[Any], device: torch.device
    ) -> list[Result | Exception]:
        self._executed(loss, len(computations))
        return compute_batch(loss, computations, device, vmap=self._vmap)

    async def infer(
        self,
        admission: Admission,
        loss: Loss,
        decode: Callable[[], Decoded],
        encode: Callable[[Decoded, Result], R],
        *,
        size: int,
        times: RequestTimes,
    ) -> R:
        """Decode, compute and encode one inference of ``loss``, each where it belongs.

        Args:
            admission: the request's ticket.
            loss: the loss to evaluate.
            decode: the transport's request -> `Decoded` (checked).
            encode: the transport's answer from the decoded request and its `Result`.
            size: the request's size in bytes: small ones are decoded on the loop.
            times: where the stages' durations go.
        """
        settings, name = self.settings, loss.spec.name
        if size > settings.batch_max_bytes:  # big: decode, compute and encode on a worker

            def work(device: torch.device) -> R:
                decoded, times.input_ns = _timed(decode)
                self._executed(loss)
                result = compute(self._computation(loss, decoded), device)
                times.infer_ns = result.compute_ns
                answer, times.output_ns = _timed(lambda: encode(decoded, result))
                return answer

            return await self._alone(admission, work, name, times)

        decoded, times.input_ns = _timed(decode)  # small: microseconds on the loop
        computation = self._computation(loss, decoded)
        tensor_bytes = _tensor_bytes(decoded)

        def compute_encode(device: torch.device) -> R:
            self._executed(loss)
            result = compute(computation, device)
            times.infer_ns = result.compute_ns
            answer, times.output_ns = _timed(lambda: encode(decoded, result))
            return answer

        if self.batcher is not None and tensor_bytes <= settings.batch_max_bytes:
            waited = time.perf_counter_ns()
            result: Result = await self.batcher.submit(
                batch_key(loss, decoded, computation.nonfinite),
                computation,
                functools.partial(self._batch, loss),
                label=name,
                admission=admission,
            )
            times.infer_ns, times.batch_size = result.compute_ns, result.batch_size
            times.queue_ns = max(0, time.perf_counter_ns() - waited - result.compute_ns)
            answer, times.output_ns = _timed(lambda: encode(decoded, result))
            return answer
        # big tensors in shared memory, or batching off: compute and encode on a worker
        return await self._alone(admission, compute_encode, name, times)

    async def run(
        self,
        admission: Admission,
        work: Callable[[torch.device], R],
        *,
        label: str,
        times: RequestTimes,
        losses: Sequence[Loss],
    ) -> R:
        """Run ``work`` (decode, compute and encode of a composition or a sweep) alone on a
        worker; one execution is recorded for each loss in ``losses`` once it has run (``work``
        may fill the list as it reads the request). ``work`` fills ``times``' stages; the rest
        of the wait is the queue's."""

        def counted(device: torch.device) -> R:
            answer = work(device)
            for loss in dict.fromkeys(losses):
                self._executed(loss)
            return answer

        return await self._alone(admission, counted, label, times)

    async def _alone(
        self,
        admission: Admission,
        work: Callable[[torch.device], R],
        label: str,
        times: RequestTimes,
    ) -> R:
        before = times.input_ns + times.infer_ns + times.output_ns
        waited = time.perf_counter_ns()
        answer = await self.executor.run(work, loss=label, admission=admission)
        spent = times.input_ns + times.infer_ns + times.output_ns - before  # on the worker
        times.queue_ns = max(0, time.perf_counter_ns() - waited - spent)
        return answer
