"""Cooperative cancellation: a computation past its timeout stops at its next checkpoint.

A thread cannot be killed, so the executor gives each computation a `threading.Event` (in a
context variable of the worker thread) and sets it when the request times out; the engine calls
`checkpoint()` between terms of a composition and between the items of a batch, so abandoned
work ends after the step it is in instead of running to the end. A loss that hangs inside torch
still never reaches a checkpoint: the executor gives its slot back anyway.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

__all__ = ["ComputationCancelled", "cancellable", "checkpoint"]

_EVENT: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "lossreg_cancel", default=None
)


class ComputationCancelled(Exception):  # noqa: N818 - a signal, not an error anyone answers
    """Raised at a checkpoint once the computation's request was given up (never sent: the
    client already has its 504)."""


def checkpoint() -> None:
    """Raise `ComputationCancelled` if the computation running in this thread was cancelled."""
    event = _EVENT.get()
    if event is not None and event.is_set():
        raise ComputationCancelled("cancelled: its request timed out")


@contextlib.contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Run the block with ``event`` as this thread's cancellation flag."""
    token = _EVENT.set(event)
    try:
        yield
    finally:
        _EVENT.reset(token)
