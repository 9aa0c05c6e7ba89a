"""Process-wide tuning, applied once when the server starts (`configure_compute`).

- torch's intra-op threads: by default the cores shared by the computations that can run at
  once, so threads never outnumber cores;
- freed tensor memory stays mapped for the next request (glibc);
- autograd is warmed up, and what start-up built is frozen out of the garbage collector's
  sight;
- then the dynamic batcher is built.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

import torch

from ..settings import Settings
from .batcher import DynamicBatcher
from .executor import ComputeExecutor

__all__ = ["configure_compute", "intra_op_threads"]


def configure_compute(executor: ComputeExecutor, settings: Settings) -> DynamicBatcher | None:
    """Set torch's intra-op threads, warm autograd up, and build the dynamic batcher (None
    when ``batch_max_size`` is 1)."""
    torch.set_num_threads(intra_op_threads(settings))
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
    """``intra_op_threads``, or by default the cores shared by the computations that can run
    at once: more threads than cores makes OpenMP spin-wait, and small ops pay for it most."""
    if settings.intra_op_threads:
        return settings.intra_op_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // (settings.workers * settings.compute_threads))


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


_frozen = False


def _freeze_startup_objects() -> None:
    """Move what start-up built (torch, the registry: ~200k objects) out of the collector's
    sight, once per process. Each full collection would otherwise scan them all: ~120 ms
    stalls, every second or so under load."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True
