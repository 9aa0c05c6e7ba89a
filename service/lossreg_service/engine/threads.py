"""How many intra-op threads one computation gets: one when it is small, every allowed core
when it is big.

torch enters its OpenMP pool for some ops whatever their size (``log_softmax``, so
``cross_entropy``, and its backward). Waking that pool costs tens of microseconds a region,
more with ``OMP_WAIT_POLICY=PASSIVE`` (what ``lossreg serve`` sets, so idle workers do not
spin): a CE 32x10 value+gradient took ~300 us on 2 threads and ~40 us on one, while a 16 MB
one is ~2x faster on 2 cores than on one. So the thread count follows the computation's
size. ``torch.set_num_threads`` sets the calling thread's OpenMP count (sub-microsecond), so
computations on other threads keep theirs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["SMALL_BYTES", "set_most_threads", "threads_for"]

SMALL_BYTES = 256 * 1024
"""Computations whose tensors total at most this run on one thread (torch's grain size, 32k
elements, is 128 KiB of float32: ops on less do not split their work anyway)."""

_most = 0  # 0: leave torch's setting alone


def set_most_threads(threads: int) -> None:
    """The intra-op threads a big computation may use (the server's ``intra_op_threads``)."""
    global _most
    _most = threads
    torch.set_num_threads(threads)


@contextlib.contextmanager
def threads_for(nbytes: int) -> Iterator[None]:
    """Run the block with one intra-op thread when ``nbytes`` (the computation's tensors) is
    small, else with `set_most_threads`'s count."""
    wanted = 1 if nbytes <= SMALL_BYTES else _most
    current = torch.get_num_threads()
    if wanted == 0 or wanted == current:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(current)
