"""Where an admitted computation runs: inline, in a dynamic batch, or alone on a worker.

The one place that decides, so every transport (REST v2, ``/v1``, gRPC) and every kind of
request (one loss, a composition, a sweep) gets the same choice. After the request was admitted
(`ComputeExecutor.admit`, once) and, for a small body, decoded on the event loop:

- **inline**: a small computation (tensors of at most ``LOSSREG_INLINE_MAX_BYTES``) of a
  first-party loss on a CPU device runs on the event loop itself, when dynamic batching does
  not wait for company (``LOSSREG_BATCH_MAX_DELAY_US=0``) and no other request waits for the
  device. Handing it to a worker and back costs more than computing it, and first-party losses
  (torch.nn and the zoo, shipped with lossreg) are trusted not to hang; the size bound keeps a
  big tensor off the loop;
- **batched**: other small computations join the dynamic batcher (`batcher`): concurrent ones
  with the same loss, parameters and shapes share one worker call;
- **alone**: the rest runs on a worker with the executor's timeout: big bodies are decoded
  there too, so megabytes never stall the loop. Plugin losses always take a worker or a batch,
  so one that hangs answers 504 at its timeout while the loop serves everything else.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import orjson
import torch

from ..registry import Loss, LossSpec
from ..registry._registry import OWN_DISTRIBUTION
from ..settings import Settings
from .batcher import DynamicBatcher
from .dataplane import Computation, Result, compute, compute_batch, single, tensor_bytes
from .executor import Admission, ComputeExecutor
from .inference import Decoded
from .statistics import RequestTimes, StatisticsStore

__all__ = ["Scheduler", "batch_key", "first_party", "use_vmap"]

R = TypeVar("R")

_OWN_MODULES = "lossreg_service.losses."


def first_party(spec: LossSpec) -> bool:
    """Shipped with lossreg: its own distribution's entry point into its own loss modules
    (a plugin cannot claim this; a loss registered by hand is never first-party)."""
    return (spec.distribution or "").lower() == OWN_DISTRIBUTION and spec.entry_point.startswith(
        _OWN_MODULES
    )


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


def _version(loss: Loss) -> str:
    return loss.spec.version or "1"


def _timed(fn: Callable[[], R]) -> tuple[R, int]:
    start = time.perf_counter_ns()
    out = fn()
    return out, time.perf_counter_ns() - start


class Scheduler:
    """Runs admitted computations where they cost least (see the module docstring).

    Args:
        executor: the compute pools (admission, workers, timeouts).
        batcher: the dynamic batcher, or None when batching is off.
        settings: batching and inline limits, the non-finite policy.
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
        # Inline would take the place of batches that wait for company: only when none wait.
        self._inline_max = (
            settings.inline_max_bytes if batcher is None or batcher.max_delay_s == 0 else 0
        )

    def inline(self, loss: Loss, tensor_bytes: int, admission: Admission) -> bool:
        """Whether a computation of ``loss`` on ``tensor_bytes`` runs on the event loop: small,
        first-party, on the CPU, and nobody else waiting for the device (so it never overtakes
        a queued request, and under load requests keep batching and using the workers)."""
        return (
            0 < self._inline_max
            and tensor_bytes <= self._inline_max
            and admission.pool.waiting <= 1
            and admission.pool.device.type == "cpu"
            and first_party(loss.spec)
        )

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
        settings, executor, name = self.settings, self.executor, loss.spec.name
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
        nbytes = tensor_bytes(decoded.inputs, decoded.grad_loss)

        def compute_encode(device: torch.device) -> R:
            self._executed(loss)
            result = compute(computation, device)
            times.infer_ns = result.compute_ns
            answer, times.output_ns = _timed(lambda: encode(decoded, result))
            return answer

        if self.inline(loss, nbytes, admission):
            return executor.run_inline(admission, compute_encode, loss=name)
        if self.batcher is not None and nbytes <= settings.batch_max_bytes:
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
