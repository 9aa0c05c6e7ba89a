"""The dynamic batcher: concurrent small requests that can share a computation get one.

Like Triton's dynamic batcher. Requests are grouped by a key (the loss, its parameters, the
gradients asked for, every input's name, shape and dtype): items with the same key can be
stacked. Each key has a queue and, while it holds requests, one drainer task that

1. waits up to ``max_delay_s`` after the oldest request for the batch to fill (Triton's
   ``max_queue_delay_microseconds``; 0: no waiting),
2. waits for a free worker of the least busy device, so requests keep joining the batch while
   every worker is busy (under load batches grow by themselves, at no added latency),
3. takes up to ``max_size`` requests and hands them to the worker as one call, then goes back
   to 1 for the rest while that batch computes.

Admission control and timeouts are the executor's: a request comes with its `Admission` and
counts in its device's queue until its batch is taken by a worker, and each request gets
`ComputeTimeout` after ``compute_timeout_s``, whether it was still waiting or its batch overran.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from .executor import Admission, ComputeExecutor, DevicePool

__all__ = ["BatchFn", "DynamicBatcher"]

BatchFn = Callable[[Sequence[Any], torch.device], Sequence[Any]]
"""Computes a batch on a worker: items in, one result (or exception) per item out."""


@dataclasses.dataclass(eq=False)
class _Pending:
    item: Any
    future: asyncio.Future[Any]
    admission: Admission
    start: float


@dataclasses.dataclass(eq=False)
class _Queue:
    run: BatchFn
    label: str
    items: collections.deque[_Pending] = dataclasses.field(default_factory=collections.deque)
    full: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    drainer: asyncio.Task[None] | None = None


class DynamicBatcher:
    """Gathers requests with the same key into batches computed by one worker call.

    Args:
        executor: the compute pools (admission, workers, timeouts).
        max_size: the most requests in one batch.
        max_delay_s: how long the oldest request may wait for the batch to fill.
    """

    def __init__(self, executor: ComputeExecutor, *, max_size: int, max_delay_s: float) -> None:
        self.executor = executor
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self._queues: dict[Hashable, _Queue] = {}
        self._running: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches dispatched, and the requests they held (for tests, metrics)
        self.batched = 0

    async def submit(
        self,
        key: Hashable,
        item: Any,
        run: BatchFn,
        *,
        label: str = "",
        admission: Admission | None = None,
    ) -> Any:
        """Queue ``item`` under ``key`` and return its result (``run`` computes its batch).

        Args:
            key: what items must share to be stacked.
            item: this request's computation.
            run: computes a batch of items on a worker.
            label: the compute-time metric's label.
            admission: the request's ticket from `ComputeExecutor.admit` (taken here if None).

        Raises:
            ServerBusy: admitted here, and the device queue is full.
            ComputeTimeout: no result within the executor's timeout.
            Exception: whatever ``run`` returned for this item, or raised for its batch.
        """
        admission = admission if admission is not None else self.executor.admit()
        loop = asyncio.get_running_loop()
        pending = _Pending(item, loop.create_future(), admission, loop.time())
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(run, label)
        queue.items.append(pending)
        if queue.drainer is None:
            queue.drainer = loop.create_task(self._drain(key, queue))
        elif len(queue.items) >= self.max_size:
            queue.full.set()
        remaining = pending.start + self.executor.timeout_s - loop.time()
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), remaining)
        except asyncio.TimeoutError:
            raise self.executor.timed_out(admission.pool, "waiting for its batch") from None
        finally:
            if not pending.future.done():
                pending.future.cancel()  # the batch skips it; nobody waits for it anymore
            elif not pending.future.cancelled():
                pending.future.exception()  # retrieved, even if this wait gave up first
            if pending in queue.items:
                queue.items.remove(pending)
            self.executor.dispatched(admission)

    async def _drain(self, key: Hashable, queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        try:
            while queue.items:
                if self.max_delay_s > 0 and len(queue.items) < self.max_size:
                    wait = queue.items[0].start + self.max_delay_s - loop.time()
                    if wait > 0:
                        queue.full.clear()
                        try:
                            await asyncio.wait_for(queue.full.wait(), wait)
                        except asyncio.TimeoutError:
                            pass
                if not queue.items:
                    break
                pool = self.executor.pick()
                await pool.slots.acquire()
                batch: list[_Pending] = []
                while queue.items and len(batch) < self.max_size:
                    pending = queue.items.popleft()
                    self.executor.dispatched(pending.admission)
                    if not pending.future.done():
                        batch.append(pending)
                if not batch:
                    pool.slots.release()
                    continue
                task = loop.create_task(self._run(pool, queue, batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        finally:
            queue.drainer = None
            if self._queues.get(key) is queue:
                if queue.items:  # joined after the loop ended: drain again
                    queue.drainer = loop.create_task(self._drain(key, queue))
                else:
                    del self._queues[key]

    async def _run(self, pool: DevicePool, queue: _Queue, batch: list[_Pending]) -> None:
        self.batches += 1
        self.batched += len(batch)
        items = [p.item for p in batch]
        start = min(p.start for p in batch)
        metrics = self.executor.metrics
        waited = asyncio.get_running_loop().time() - start
        metrics.child(metrics.queue_seconds, pool.label).observe(waited)
        metrics.child(metrics.batch_size, pool.label).observe(len(batch))
        try:
            results = await self.executor.execute(
                pool, lambda device: queue.run(items, device), loss=queue.label, start=start
            )
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: every request hears it
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        for pending, result in zip(batch, results):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
