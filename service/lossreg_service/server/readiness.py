"""Readiness: whether this server should be sent traffic now, and if not, why.

``GET /v2/health/ready`` is 200 only when all of these hold (503 with the reasons otherwise),
so Kubernetes, KServe and load balancers route only to a server that can answer:

- the registry has loaded: the server listens at once and discovers plugins in the background,
  so liveness answers while a slow plugin imports; requests that arrive meanwhile wait for the
  load (as they would in the listen queue), up to ``LOSSREG_COMPUTE_TIMEOUT_S`` (with
  ``LOSSREG_STRICT_PLUGINS`` the load happens before the port opens instead, and a failure
  stops start-up);
- every configured device is usable: each is checked with a tiny computation at start, and a
  computation that fails with a device error (a CUDA error, not an out-of-memory one) marks its
  device unusable until a re-check every `DEVICE_CHECK_INTERVAL_S` passes;
- the server is not shutting down: on SIGTERM it turns unready and keeps serving for
  ``LOSSREG_DRAIN_S`` seconds, so load balancers stop sending before it stops listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..settings import Settings
    from .executor import ComputeExecutor, DevicePool
    from .metrics import Metrics

__all__ = ["DEVICE_CHECK_INTERVAL_S", "Readiness", "check_device", "device_failure", "lifecycle"]

log = logging.getLogger("lossreg.server")

DEVICE_CHECK_INTERVAL_S = 2.0
MEMORY_REFRESH_S = 5.0
_DEVICE_ERROR_MARKS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "device-side assert")


def device_failure(exc: BaseException) -> str | None:
    """Why ``exc`` (or what caused it) says the device itself is broken; None if it does not.

    Out-of-memory is not a broken device (the next, smaller request may fit)."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, torch.cuda.OutOfMemoryError):
            return None
        if (accelerator_error is not None and isinstance(current, accelerator_error)) or (
            isinstance(current, RuntimeError)
            and any(mark in str(current) for mark in _DEVICE_ERROR_MARKS)
        ):
            return f"{type(current).__name__}: {str(current).splitlines()[0][:200]}"
        current = current.__cause__ or current.__context__
    return None


def check_device(device: torch.device) -> None:
    """A tiny computation on ``device``, synchronised; raises if the device cannot compute."""
    total = (torch.ones(16, device=device) * 2).sum().item()
    if total != 32:
        raise RuntimeError(f"{device} computed 2 * 16 ones as {total}")


class Readiness:
    """The server's readiness and the reasons it is not ready."""

    def __init__(self) -> None:
        self.loading = True
        self.load_error: str | None = None
        self.load_ended = asyncio.Event()  # set once the registry has loaded or failed to
        self.draining = False
        self.executor: ComputeExecutor | None = None

    def unusable(self) -> dict[str, str]:
        """Device -> why it cannot compute, for the configured devices that cannot."""
        pools = self.executor.pools if self.executor is not None else []
        return {p.label: p.unusable for p in pools if p.unusable is not None}

    @property
    def ready(self) -> bool:
        return not (self.loading or self.draining or self.unusable())

    def reasons(self) -> list[str]:
        """Why the server is not ready (empty when it is)."""
        out = []
        if self.loading:
            out.append(self.load_error or "loading the loss registry")
        out += [f"device {d} is unusable ({why})" for d, why in self.unusable().items()]
        if self.draining:
            out.append("shutting down")
        return out


async def _check(pool: DevicePool, timeout_s: float) -> str | None:
    """Run `check_device` on one of the pool's workers; why it failed, or None."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.run_in_executor(pool.executor, check_device, pool.device), timeout_s
        )
    except asyncio.TimeoutError:
        return f"a check computation did not finish within {timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure means the device cannot serve
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return None


async def _check_devices(executor: ComputeExecutor, *, only_unusable: bool) -> None:
    for pool in executor.pools:
        if only_unusable and (
            pool.unusable is None
            or time.monotonic() - pool.unusable_since < DEVICE_CHECK_INTERVAL_S
        ):
            continue  # re-check a device only after it has been out for a whole interval
        why = await _check(pool, executor.timeout_s)
        if why is None and pool.unusable is not None:
            log.warning("device %s is usable again", pool.label)
        elif why is not None and pool.unusable is None:
            log.error("device %s is unusable: %s", pool.label, why)
            pool.unusable_since = time.monotonic()
        pool.unusable = why


async def _watch_devices(executor: ComputeExecutor) -> None:
    while True:
        await asyncio.sleep(DEVICE_CHECK_INTERVAL_S / 4)
        await _check_devices(executor, only_unusable=True)


async def _refresh_memory(metrics: Metrics) -> None:
    while True:
        await asyncio.sleep(MEMORY_REFRESH_S)
        metrics.refresh_memory()


async def _load(app: FastAPI, settings: Settings, readiness: Readiness) -> None:
    try:
        registry = await asyncio.to_thread(settings.build_registry)
    except Exception as exc:  # noqa: BLE001 - stays unready, and says why
        log.exception("the loss registry failed to load")
        readiness.load_error = f"the loss registry failed to load: {type(exc).__name__}: {exc}"
        readiness.load_ended.set()
        return
    app.state.registry = registry
    readiness.load_ended.set()
    await _check_devices(app.state.executor, only_unusable=False)
    readiness.loading = False
    devices = ", ".join(p.label for p in app.state.executor.pools)
    log.info("serving %d losses on %s", len(registry), devices)


def _drain_on_sigterm(readiness: Readiness, drain_s: float) -> None:
    """On SIGTERM, turn unready and keep serving ``drain_s`` seconds before the server's own
    handler (uvicorn's: stop listening, finish in-flight requests) runs; a second SIGTERM
    stops at once. Only the main thread may set signal handlers (not a test's server thread)."""
    if drain_s <= 0 or threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    stop = signal.getsignal(signal.SIGTERM)
    if not callable(stop):
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        if readiness.draining:
            stop(signum, frame)
            return
        readiness.draining = True
        log.info("SIGTERM: not ready; draining for %g s before shutting down", drain_s)
        loop.call_soon_threadsafe(loop.call_later, drain_s, stop, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


@contextlib.asynccontextmanager
async def lifecycle(
    app: FastAPI, settings: Settings, readiness: Readiness, metrics: Metrics
) -> AsyncIterator[None]:
    """The app's life after its executor exists: load the registry (in the background unless
    plugins are strict), check and watch devices, refresh memory gauges, drain on SIGTERM."""
    readiness.executor = app.state.executor
    tasks: list[asyncio.Task[None]] = []
    if settings.strict_plugins:
        app.state.registry = settings.build_registry()  # a failure stops start-up
        readiness.load_ended.set()
        await _check_devices(app.state.executor, only_unusable=False)
        readiness.loading = False
    else:
        tasks.append(asyncio.create_task(_load(app, settings, readiness)))
    tasks.append(asyncio.create_task(_watch_devices(app.state.executor)))
    if metrics.multiprocess:
        tasks.append(asyncio.create_task(_refresh_memory(metrics)))
    _drain_on_sigterm(readiness, settings.drain_s)
    try:
        yield
    finally:
        readiness.draining = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        metrics.mark_dead()
