"""Retrying what a server could not take: 503 answers and dropped or refused connections.

Evaluating a loss has no side effects, so any request may be sent again. What is retried:

- a `ServerBusy` answer (503: queue full, not ready yet, device out of memory), waiting what its
  ``Retry-After`` says when it says something;
- a connection that could not be made or was lost before the answer (server down, restarting,
  connection reset), with exponential backoff and jitter.

Not retried: timeouts while waiting for an answer (the computation may be what is slow), every
4xx, and `LossUnavailable` (503, but its plugin will not load however long one waits).
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable

import anyio
import httpx

from ._config import Retries
from .errors import ServerBusy

__all__ = ["RetryState", "is_retryable", "parse_retry_after"]

logger = logging.getLogger("lossreg.client")

RETRYABLE_HTTPX_ERRORS: tuple[type[httpx.HTTPError], ...] = (
    httpx.ConnectError,  # refused: nothing listens (yet)
    httpx.ConnectTimeout,  # the host does not answer the handshake
    httpx.ReadError,  # reset while reading the answer
    httpx.WriteError,  # reset while sending the request
    httpx.RemoteProtocolError,  # the server closed the connection without answering
)
"""httpx failures that mean "the request did not get an answer", not "the answer was slow"."""


def is_retryable(error: BaseException) -> bool:
    """Whether sending the same request again may succeed."""
    return isinstance(error, (ServerBusy, *RETRYABLE_HTTPX_ERRORS))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date).

    Returns None for a missing or unreadable value, so the computed backoff applies.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds == float("inf"):  # NaN or infinite: ignore it
        return None
    return max(0.0, seconds)


class RetryState:
    """The retry bookkeeping of one logical request (one per call to the server).

    Args:
        retries: the policy.
        rng: a source of uniform numbers in [0, 1) for the jitter (tests pass a fixed one).
    """

    def __init__(self, retries: Retries, rng: Callable[[], float] = random.random) -> None:
        self.retries = retries
        self.attempt = 0
        self._rng = rng

    def backoff(self) -> float:
        """The computed wait before the next retry: exponential, capped, jittered downwards."""
        base = min(self.retries.max_backoff, self.retries.backoff * (2.0**self.attempt))
        return base * (1.0 - self.retries.jitter * self._rng())

    def next_delay(self, error: BaseException, retry_after: float | None = None) -> float | None:
        """Seconds to wait before retrying after ``error``, or None to give up and raise it.

        Args:
            error: the httpx exception, or the `LossRegError` the server's answer maps to.
            retry_after: the server's ``Retry-After``, in seconds, when it sent one.
        """
        if self.attempt >= self.retries.total or not is_retryable(error):
            return None
        delay = self.backoff()
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retries.max_retry_after))
        self.attempt += 1
        logger.warning(
            "lossreg: retry %d/%d in %.2fs after %s: %s",
            self.attempt,
            self.retries.total,
            delay,
            type(error).__name__,
            error,
        )
        return delay


def sleep(seconds: float) -> None:
    """Wait before a retry (a module function so tests can replace it)."""
    time.sleep(seconds)


async def async_sleep(seconds: float) -> None:
    """Wait before a retry without blocking the event loop (asyncio or trio)."""
    await anyio.sleep(seconds)
