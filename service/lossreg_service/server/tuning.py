"""Process-wide tuning, applied once when the server starts (`configure_compute`).

- torch's intra-op threads: by default every core for a big computation, so one that runs
  alone (the common case: a request at a time per worker) is as fast as in-process; a small
  one runs on one thread (`engine.threads`);
- freed tensor memory stays mapped for the next request (glibc);
- autograd is warmed up, and what start-up built is frozen out of the garbage collector's
  sight;
- then the dynamic batcher is built.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

import torch

from ..engine.threads import set_most_threads
from ..settings import Settings, cpu_cores
from .batcher import DynamicBatcher
from .executor import ComputeExecutor

__all__ = ["configure_compute", "intra_op_threads"]


def configure_compute(executor: ComputeExecutor, settings: Settings) -> DynamicBatcher | None:
    """Set torch's intra-op threads, warm autograd up, and build the dynamic batcher (None
    when ``batch_max_size`` is 1)."""
    set_most_threads(intra_op_threads(settings))
    _keep_freed_memory()
    _warm_up()
    _freeze_startup_objects()
    if settings.batch_max_size <= 1:
        return None
    return DynamicBatcher(
        executor,
        max_size=settings.batch_max_size,
        max_delay_s=settings.batch_max_delay_us / 1e6,
    )


def intra_op_threads(settings: Settings) -> int:
    """``intra_op_threads``, or by default every core.

    Dividing the cores among the computations that can run at once (workers x compute
    threads) left a lone 16 MB request one thread: 2x slower on 2 cores. Small computations
    run on one thread whatever this says (`engine.threads.threads_for`); only big ones
    running at the same moment share (oversubscribe) the cores.
    """
    return settings.intra_op_threads or cpu_cores()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _keep_freed_memory() -> None:
    """Keep freed tensor memory mapped for the next request (glibc only).

    By default glibc gives blocks over 128 KiB back to the OS when they are freed, so the next
    request's 16 MB tensors are fresh pages again: a page fault per 4 KiB, several ms per
    16 MB on a VM, more than computing it. Blocks up to 32 MB (glibc's most) now come from
    the heap, and the heap is trimmed only past 512 MB free.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    mallopt(_M_TRIM_THRESHOLD, 512 * 1024 * 1024)


def _warm_up() -> None:
    """Run autograd once: its first ``grad(..., grad_outputs=...)`` imports torch's symbolic
    shapes (and sympy, ~500 modules), which would otherwise stall the first request."""
    x = torch.zeros(2, requires_grad=True)
    torch.autograd.grad(x.sum(), [x], grad_outputs=torch.ones(()))


def _freeze_startup_objects() -> None:
    """Move what start-up built (torch, the registry: ~200k objects) out of the collector's
    sight, once per process. Each full collection would otherwise scan them all: ~120 ms
    stalls, every second or so under load. Whether it happened is the collector's own state
    (its permanent generation), not a flag of this module."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
