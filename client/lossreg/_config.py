"""Client configuration objects: `Timeout` and `Retries`, compared and printed like values.

Both accept the shorthand a person would type (a number, None, or another instance), in the manner
of ``httpx.Timeout``::

    Timeout(None)               # No timeouts.
    Timeout(5.0)                # 5s on every operation.
    Timeout(60.0, connect=5.0)  # 5s to connect, 60s for everything else.

    Retries(0)                  # Never retry.
    Retries(5, backoff=0.1)     # Up to 5 retries, waiting about 0.1s, 0.2s, 0.4s, ...
"""

from __future__ import annotations

import enum
from typing import Final

import httpx

__all__ = ["DEFAULT_RETRIES", "DEFAULT_TIMEOUT", "Retries", "Timeout"]


class _Unset(enum.Enum):
    """The type of an argument not given (None is a value: "no limit")."""

    UNSET = "UNSET"


_UNSET: Final = _Unset.UNSET


class Timeout:
    """Seconds allowed for each phase of a request (None: no limit).

    Loss evaluation on a busy server can take a while, so the default allows 60s to read an
    answer but only 5s to connect: a server that is down is noticed (and retried) quickly.

    Args:
        timeout: the default for every phase, or a `Timeout` to copy.
        connect: seconds to establish a connection.
        read: seconds to wait for a chunk of the response.
        write: seconds to send a chunk of the request.
        pool: seconds to wait for a free connection from the pool.
    """

    connect: float | None
    read: float | None
    write: float | None
    pool: float | None

    def __init__(
        self,
        timeout: float | None | Timeout | _Unset = _UNSET,
        *,
        connect: float | None | _Unset = _UNSET,
        read: float | None | _Unset = _UNSET,
        write: float | None | _Unset = _UNSET,
        pool: float | None | _Unset = _UNSET,
    ) -> None:
        if isinstance(timeout, Timeout):
            if any(v is not _UNSET for v in (connect, read, write, pool)):
                raise ValueError("Timeout(Timeout(...), connect=...) is ambiguous; pass one")
            self.connect, self.read = timeout.connect, timeout.read
            self.write, self.pool = timeout.write, timeout.pool
            return
        if timeout is _UNSET and _UNSET in (connect, read, write, pool):
            raise ValueError(
                "Timeout needs a default (Timeout(5.0)) or all four of connect, read, write, pool"
            )
        default = None if timeout is _UNSET else timeout
        for name, value in (
            ("timeout", default),
            ("connect", connect),
            ("read", read),
            ("write", write),
            ("pool", pool),
        ):
            _check_seconds(name, value)
        self.connect = default if connect is _UNSET else connect
        self.read = default if read is _UNSET else read
        self.write = default if write is _UNSET else write
        self.pool = default if pool is _UNSET else pool

    def as_dict(self) -> dict[str, float | None]:
        return {"connect": self.connect, "read": self.read, "write": self.write, "pool": self.pool}

    def as_httpx(self) -> httpx.Timeout:
        """The same limits as an ``httpx.Timeout``."""
        return httpx.Timeout(**self.as_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timeout) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().values()))

    def __repr__(self) -> str:
        values = {self.connect, self.read, self.write, self.pool}
        if len(values) == 1:
            return f"Timeout(timeout={self.connect})"
        return (
            f"Timeout(connect={self.connect}, read={self.read}, "
            f"write={self.write}, pool={self.pool})"
        )


class Retries:
    """How often, and how patiently, to retry a request the server could not take.

    Retried: 503 answers (the server is busy, not ready, or out of device memory) and connection
    failures (refused, reset, dropped). Loss evaluation has no side effects, so every request
    is safe to repeat. Waits grow as ``backoff * 2**attempt`` (capped at ``max_backoff``), with
    random jitter so that many clients do not retry in lockstep; a ``Retry-After`` from the
    server overrides the computed wait (capped at ``max_retry_after``).

    Args:
        total: retries after the first attempt (0: never retry), or a `Retries` to copy.
        backoff: the first wait, in seconds.
        max_backoff: the longest computed wait.
        jitter: the fraction of each wait drawn at random (0: none, 1: anywhere in [0, wait]).
        max_retry_after: the longest wait a server's ``Retry-After`` may impose.
    """

    total: int
    backoff: float
    max_backoff: float
    jitter: float
    max_retry_after: float

    def __init__(
        self,
        total: int | Retries = 3,
        *,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
        jitter: float = 0.5,
        max_retry_after: float = 60.0,
    ) -> None:
        if isinstance(total, Retries):
            backoff, max_backoff = total.backoff, total.max_backoff
            jitter, max_retry_after = total.jitter, total.max_retry_after
            total = total.total
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"Retries total must be a non-negative integer, got {total!r}")
        for name, value in (
            ("backoff", backoff),
            ("max_backoff", max_backoff),
            ("max_retry_after", max_retry_after),
        ):
            _check_seconds(name, value, allow_none=False)
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"Retries jitter must be in [0, 1], got {jitter!r}")
        self.total = total
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.jitter = float(jitter)
        self.max_retry_after = float(max_retry_after)

    def as_dict(self) -> dict[str, float]:
        return {
            "total": self.total,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "jitter": self.jitter,
            "max_retry_after": self.max_retry_after,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Retries) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().values()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"Retries({args})"


def _check_seconds(name: str, value: object, *, allow_none: bool = True) -> None:
    if value is _UNSET or (value is None and allow_none):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")


DEFAULT_TIMEOUT = Timeout(60.0, connect=5.0)
"""5s to connect, 60s for the rest (the server's own compute timeout is 60s)."""

DEFAULT_RETRIES = Retries(3)
"""Three retries, waiting about 0.25s, 0.5s and 1s (or what ``Retry-After`` says)."""
