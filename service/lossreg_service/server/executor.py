"""Bounded compute pools, one per device, so computation never blocks the event loop (except
the small, trusted computations the scheduler runs inline: `run_inline`).

Like Triton's instance groups: each device gets ``compute_threads`` worker threads (the number of
computations it runs at once) and a queue of at most ``max_queue`` waiting requests. Admission is
decided once per request (`ComputeExecutor.admit` -> `Admission`): a request arriving when every
worker and queue place is taken is refused at once with `ServerBusy` (503 + ``Retry-After``)
rather than piling up; an admitted one counts in the queue until a worker takes it. A request
goes to the device with the least work. The whole wait (queue + compute) is bounded by
``compute_timeout_s`` -> `ComputeTimeout` (504). A thread cannot be killed, so a computation
that overran is abandoned: its slot is given back at once and the pool gets a fresh
thread, so a loss that hangs cannot take a device's capacity with it (the abandoned thread ends
whenever its computation does, and is counted in ``DevicePool.abandoned``). The computation is
also told to stop (`engine.cancel`): it ends at its next checkpoint, between terms or batch items.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from lossreg.errors import ComputeTimeout, ServerBusy, ServerNotReady

from ..engine import resolve_device
from ..engine.cancel import cancellable
from .metrics import Metrics
from .readiness import device_failure

log = logging.getLogger("lossreg.server")

T = TypeVar("T")

__all__ = ["Admission", "ComputeExecutor", "DevicePool", "resolve_devices"]


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome so a timed-out, abandoned failure is not logged as unretrieved."""
    if not future.cancelled():
        future.exception()


def resolve_devices(names: Sequence[str]) -> list[torch.device]:
    """Device settings -> devices: ``auto`` is every CUDA device if there is one, else the CPU.

    Raises:
        ValueError: a named device does not exist.
    """
    devices: list[torch.device] = []
    for name in names:
        if name == "auto":
            found = (
                [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
                if torch.cuda.is_available()
                else [torch.device("cpu")]
            )
        else:
            found = [resolve_device(name)]
        devices.extend(d for d in found if d not in devices)
    return devices


@dataclasses.dataclass
class DevicePool:
    """One device's workers, its slots and its waiting line."""

    device: torch.device
    threads: int
    max_queue: int
    executor: ThreadPoolExecutor
    slots: asyncio.Semaphore
    running: int = 0
    waiting: int = 0
    abandoned: int = 0  # computations given up after the timeout (their threads replaced)
    unusable: str | None = None  # why the device cannot compute (see readiness.py), or None
    unusable_since: float = 0.0  # time.monotonic() when it was found unusable

    @property
    def label(self) -> str:
        return str(self.device)

    @property
    def load(self) -> int:
        return self.running + self.waiting

    @property
    def full(self) -> bool:
        """No room for one more admitted request: every worker and queue place is taken
        (admitted requests still being read count as waiting)."""
        return self.load >= self.threads + self.max_queue


@dataclasses.dataclass(eq=False)
class Admission:
    """A request let in by `ComputeExecutor.admit`, the one admission decision it gets.

    A request refused is refused before its body is read, and a request admitted is never
    refused later for the same reason. It counts in its device's queue from when its body has
    arrived (`ComputeExecutor.enqueue`; at once when admitted with its body) until a worker takes
    its computation (or it ends): an upload holds no queue place, so slow clients trickling
    bodies cannot fill the queue and lock everyone else out (the body budget and the client
    timeouts bound uploads). The queue can therefore pass ``max_queue`` by the bodies that were
    arriving when it filled, never by more.
    """

    pool: DevicePool
    queued: bool = True  # counted in ``pool``'s queue now
    left: bool = False  # a worker took it, or it ended: never counted again


class ComputeExecutor:
    """Runs ``fn(device)`` on the least busy device's pool, with admission control and timeout.

    Args:
        devices: the devices to compute on, one pool each.
        threads: concurrent computations per device.
        max_queue: requests allowed to wait per device before `ServerBusy`.
        timeout_s: limit on queue wait + compute, -> `ComputeTimeout`.
        retry_after_s: the ``Retry-After`` advertised when busy.
        metrics: where queue/compute times and gauges go.
    """

    def __init__(
        self,
        devices: Sequence[torch.device],
        *,
        threads: int,
        max_queue: int,
        timeout_s: float,
        retry_after_s: float,
        metrics: Metrics,
    ) -> None:
        self.pools = [
            DevicePool(
                device=d,
                threads=threads,
                max_queue=max_queue,
                executor=ThreadPoolExecutor(threads, thread_name_prefix=f"lossreg-{d}"),
                slots=asyncio.Semaphore(threads),
            )
            for d in devices
        ]
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        for pool in self.pools:
            metrics.queued.labels(device=pool.label).set(0)
            metrics.running.labels(device=pool.label).set(0)

    @property
    def devices(self) -> list[torch.device]:
        return [p.device for p in self.pools]

    def _pick(self) -> DevicePool:
        usable = [p for p in self.pools if p.unusable is None] or self.pools
        return min(usable, key=lambda p: p.load)

    def pick(self) -> DevicePool:
        """The device with the least work (running + waiting)."""
        return self._pick()

    async def run(
        self,
        fn: Callable[[torch.device], T],
        *,
        loss: str = "",
        admission: Admission | None = None,
    ) -> T:
        """Run ``fn`` alone on a worker of the admitted device and await its result.

        Args:
            fn: the work, given the device.
            loss: the label of the compute-time metric.
            admission: the request's `admit` ticket (taken here when None).

        Raises:
            ServerBusy: admitted here, and the chosen device's queue is full.
            ComputeTimeout: queue wait plus compute took longer than ``timeout_s``.
        """
        admission = admission if admission is not None else self.admit()
        start = asyncio.get_running_loop().time()
        try:
            await self.acquire(admission.pool, start)
        finally:
            self.dispatched(admission)
        return await self.execute(admission.pool, fn, loss=loss, start=start)

    def run_inline(
        self, admission: Admission, fn: Callable[[torch.device], T], *, loss: str = ""
    ) -> T:
        """Run ``fn`` now, in the calling thread (the event loop), on the admitted device.

        Only for small computations of trusted code (see `scheduler`): they take less time than
        handing them to a worker and back, and cannot hang, so they need no timeout. Counted in
        the compute-time metric as a worker's computation is.
        """
        self.dispatched(admission)
        self.metrics.child(self.metrics.queue_seconds, admission.pool.label).observe(0.0)  # none
        start = time.perf_counter()
        try:
            return fn(admission.pool.device)
        finally:
            self.metrics.child(
                self.metrics.compute_seconds, loss or "-", admission.pool.label
            ).observe(time.perf_counter() - start)

    @contextlib.contextmanager
    def admitted(self, *, queued: bool = True) -> Iterator[Admission]:
        """`admit` for the duration of a request; it leaves the queue at the latest when the
        block ends (earlier when a worker takes its computation)."""
        admission = self.admit(queued=queued)
        try:
            yield admission
        finally:
            self.dispatched(admission)

    def dispatched(self, admission: Admission) -> None:
        """The admitted request left its device's queue (a worker took it, or it ended)."""
        admission.left = True
        if admission.queued:
            admission.queued = False
            self.hold(admission.pool, -1)

    def admit(self, *, queued: bool = True) -> Admission:
        """Admit one request to the device with the least work, counted in its queue (with
        ``queued=False`` only once `enqueue` says its body has arrived); or `ServerBusy` when
        even that device's queue is full.

        The one admission decision a request gets: `run`, the dynamic batcher and the inline
        path take the `Admission` and never check again.
        """
        pool = self._pick()
        if pool.unusable is not None:
            raise ServerNotReady(
                f"device {pool.label} is unusable ({pool.unusable}); retry later",
                retry_after=self.retry_after_s,
            )
        if pool.full:
            raise ServerBusy(
                f"all {pool.threads} workers of {pool.label} are busy and {pool.waiting} "
                "requests are queued; retry later",
                retry_after=self.retry_after_s,
            )
        admission = Admission(pool, queued=False)
        if queued:
            self.enqueue(admission)
        return admission

    def enqueue(self, admission: Admission) -> None:
        """Count an admitted request in its device's queue (its body has arrived); never
        refuses: the request was admitted."""
        if not (admission.queued or admission.left):
            admission.queued = True
            self.hold(admission.pool)

    def hold(self, pool: DevicePool, count: int = 1) -> None:
        """Count requests as waiting for ``pool`` (queue gauge, admission); `hold(pool, -1)`
        when they leave."""
        pool.waiting += count
        self.metrics.child(self.metrics.queued, pool.label).inc(count)

    async def acquire(self, pool: DevicePool, start: float) -> None:
        """Wait for one of ``pool``'s workers, until ``start + timeout_s`` (the request is
        counted in the queue by its `Admission`).

        Args:
            pool: the device pool.
            start: when the work was submitted (``loop.time()``): the timeout runs from there.

        Raises:
            ComputeTimeout: no worker was free in time.
        """
        loop = asyncio.get_running_loop()
        try:
            remaining = max(0.0, start + self.timeout_s - loop.time())
            await asyncio.wait_for(pool.slots.acquire(), remaining)
        except asyncio.TimeoutError:
            raise self.timed_out(pool, "waiting for a worker") from None
        self.metrics.child(self.metrics.queue_seconds, pool.label).observe(loop.time() - start)

    async def execute(
        self, pool: DevicePool, fn: Callable[[torch.device], T], *, loss: str, start: float
    ) -> T:
        """Run ``fn(device)`` on a worker of ``pool`` (whose slot `acquire` took) and await it.

        Raises:
            ComputeTimeout: it was still running at ``start + timeout_s``; the slot is given
                back and the worker replaced (see the module docstring).
        """
        loop = asyncio.get_running_loop()
        pool.running += 1
        self.metrics.child(self.metrics.running, pool.label).inc()
        context = contextvars.copy_context()  # the request id follows into the worker's logs
        released = False

        def release() -> None:  # once: at the end of the computation, or when abandoned
            nonlocal released
            if not released:
                released = True
                self._release(pool)

        def release_soon(_: object) -> None:
            # An abandoned computation may end after the server (and its loop) stopped.
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # closed between the check and the call
                    loop.call_soon_threadsafe(release)

        cancel = threading.Event()  # set at the timeout: the engine stops at its next checkpoint
        future = pool.executor.submit(context.run, self._timed, fn, pool, loss, cancel)
        future.add_done_callback(release_soon)
        result = asyncio.wrap_future(future)
        result.add_done_callback(_mark_retrieved)
        remaining = max(0.0, start + self.timeout_s - loop.time())
        try:
            return await asyncio.wait_for(asyncio.shield(result), remaining)
        except asyncio.TimeoutError:
            cancel.set()
            if not future.done():
                release()
                self._abandon_worker(pool)
            raise self.timed_out(pool, "computing") from None

    def _timed(
        self,
        fn: Callable[[torch.device], T],
        pool: DevicePool,
        loss: str,
        cancel: threading.Event,
    ) -> T:
        start = time.perf_counter()
        try:
            with cancellable(cancel):
                return fn(pool.device)
        except Exception as exc:
            if (why := device_failure(exc)) is None:
                raise
            if pool.unusable is None:
                pool.unusable_since = time.monotonic()
                pool.unusable = why  # readiness turns false until a device check passes
                log.error("device %s is unusable: %s", pool.label, why)
            # Not the request's fault: 503, so the client retries (on another replica).
            raise ServerNotReady(
                f"device {pool.label} failed ({why}); retry later", retry_after=self.retry_after_s
            ) from exc
        finally:
            self.metrics.child(self.metrics.compute_seconds, loss or "-", pool.label).observe(
                time.perf_counter() - start
            )

    def _release(self, pool: DevicePool) -> None:
        """Free the slot when the thread is really done (also after a timeout)."""
        pool.running -= 1
        self.metrics.child(self.metrics.running, pool.label).dec()
        pool.slots.release()

    def _abandon_worker(self, pool: DevicePool) -> None:
        """Give the pool a fresh executor; the old one's threads end with their current work."""
        pool.abandoned += 1
        old = pool.executor
        pool.executor = ThreadPoolExecutor(pool.threads, thread_name_prefix=f"lossreg-{pool.label}")
        old.shutdown(wait=False)
        log.warning(
            "abandoned a computation on %s still running after %.1fs; its worker is replaced "
            "(%d abandoned so far)",
            pool.label,
            self.timeout_s,
            pool.abandoned,
        )

    def timed_out(self, pool: DevicePool, stage: str) -> ComputeTimeout:
        """The 504 for a request on ``pool`` that passed the timeout while at ``stage``."""
        log.warning("request timed out after %.1fs %s on %s", self.timeout_s, stage, pool.label)
        return ComputeTimeout(
            f"the computation did not finish within {self.timeout_s:g} s "
            f"(LOSSREG_COMPUTE_TIMEOUT_S) while {stage} on {pool.label}",
            timeout_s=self.timeout_s,
        )

    def shutdown(self) -> None:
        """Stop accepting work; running computations finish in the background."""
        for pool in self.pools:
            pool.executor.shutdown(wait=False, cancel_futures=True)
