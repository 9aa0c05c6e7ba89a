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
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import anyio
import httpx

from ._config import Retries
from ._wire import Answer, error_from_answer, map_httpx_error
from .errors import ServerBusy

__all__ = ["Exchange", "Outcome", "RetryState", "is_retryable", "parse_retry_after"]

T = TypeVar("T")

Outcome = Answer | httpx.RequestError
"""What one attempt came to: an answer (any status), or a request that got none."""

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


class Exchange(Generic[T]):
    """The attempts of one logical request, sans I/O: the one retry loop of both clients.

    Iterating gives ``(wait, request)`` pairs: wait ``wait`` seconds (None: the first attempt,
    no wait), send ``request``, and `record` what came of it. Iteration stops at a successful
    answer, whose parsed value `result` returns, or raises the error to give up with: the
    server's own (a 4xx, a 503 retried ``total`` times) or a `TransportError`/`TimeoutError`
    for a request that got no answer. Only the waiting and the sending differ between
    `Client` and `AsyncClient`::

        for wait, request in exchange:
            if wait is not None:
                sleep(wait)
            exchange.record(send(request))
        return exchange.result()

    Args:
        build: a fresh request for each attempt (the same body and request id each time).
        retries: the policy.
        parse: the successful answer -> the result.
        rng: the jitter's source of uniform numbers in [0, 1) (tests pass a fixed one).
    """

    def __init__(
        self,
        build: Callable[[], httpx.Request],
        retries: Retries,
        parse: Callable[[Answer], T],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._build = build
        self._parse = parse
        self._state = RetryState(retries, rng)
        self._outcome: Outcome | None = None
        self._answer: Answer | None = None

    def record(self, outcome: Outcome) -> None:
        """What the attempt just sent came to."""
        self._outcome = outcome

    def __iter__(self) -> Iterator[tuple[float | None, httpx.Request]]:
        wait: float | None = None
        while self._answer is None:
            self._outcome = None
            yield wait, self._build()
            wait = self._next_wait()

    def _next_wait(self) -> float | None:
        """Seconds to wait before the next attempt; None after a success; raises to give up."""
        outcome = self._outcome
        if outcome is None:
            raise RuntimeError("Exchange: record() the outcome of each request before the next")
        if isinstance(outcome, httpx.RequestError):
            delay = self._state.next_delay(outcome)
            if delay is None:
                raise map_httpx_error(outcome, self._state.attempt + 1) from outcome
            return delay
        if outcome.response.is_success:
            self._answer = outcome
            return None
        error = error_from_answer(outcome.response, outcome.body)
        retry_after = error.retry_after if isinstance(error, ServerBusy) else None
        delay = self._state.next_delay(error, retry_after)
        if delay is None:
            raise error
        return delay

    def result(self) -> T:
        """The parsed successful answer (after iteration ended)."""
        if self._answer is None:
            raise RuntimeError("Exchange: no successful answer yet")
        return self._parse(self._answer)


def sleep(seconds: float) -> None:
    """Wait before a retry (a module function so tests can replace it)."""
    time.sleep(seconds)


async def async_sleep(seconds: float) -> None:
    """Wait before a retry without blocking the event loop (asyncio or trio)."""
    await anyio.sleep(seconds)
