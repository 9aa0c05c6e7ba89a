"""How connections enter the server: uvicorn's httptools protocol with the limits it lacks.

uvicorn bounds neither the request head nor slow clients: httptools grows a long header value
by repeated concatenation (a 64 MiB value costs seconds of event loop), a connection that sends
nothing, or one byte a minute, is held forever, and idle connections can use up every file
descriptor. `GuardedHttpToolsProtocol` adds, per connection (the defaults follow nginx):

- the head (request line + headers) is capped in bytes and in header count -> 431, checked as
  the bytes arrive, so the parser never works on more than the cap plus one read;
- ``client_header_timeout_s`` from the connection (or the request's first byte) to the end of
  the head, and ``client_body_timeout_s`` between two reads of a body -> the connection closes;
- a response's head and a small body leave in one send (`_CoalescingTransport`);
- at most ``max_connections`` per worker: a new connection past it closes the one that has
  waited longest on its client (idle keep-alive, a slow head or body), so health checks and
  real clients still get in; only when every connection is computing is the new one refused
  with 503.

`uvicorn_options` gives `uvicorn.run`/`uvicorn.Config` these and the keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
from typing import Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..settings import Settings

__all__ = ["ConnectionLimits", "GuardedHttpToolsProtocol", "protocol_for", "uvicorn_options"]

log = logging.getLogger("lossreg.server")

_FD_HEADROOM = 128  # descriptors kept for the listening socket, files, pipes, libraries


def default_max_connections() -> int:
    """The soft file-descriptor limit less a headroom (at least 16)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, soft - _FD_HEADROOM)


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """The per-connection limits, from `Settings`."""

    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.client_header_timeout_s,
            body_timeout_s=settings.client_body_timeout_s,
            max_connections=settings.max_connections or default_max_connections(),
        )


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a head that broke a limit."""


_REASONS = {431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head limits, client timeouts and a connection cap."""

    limits: ClassVar[ConnectionLimits | None] = None
    """Set by `protocol_for`; when None (``lossreg serve``'s workers) read from `Settings()`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self).limits is None:
            type(self).limits = ConnectionLimits.from_settings(Settings())
        self._limits: ConnectionLimits = type(self).limits  # type: ignore[assignment]
        self._in_head = True  # waiting for (the rest of) a request head
        self._in_body = False  # receiving a request body
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: tuple[int, str] | None = None
        self._last_read = self.loop.time()
        self._timer: Any = None

    # -- connection life ---------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        if len(self.connections) >= self._limits.max_connections and not self._make_room():
            super().connection_made(transport)
            self._refuse(503, "too many open connections; retry later")
            return
        super().connection_made(transport)
        # what responses write to; the rest of the transport's interface is passed through
        self.transport = cast(asyncio.Transport, _CoalescingTransport(transport, self.loop))
        self._last_read = self.loop.time()
        self._arm(self._limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting_on_client(self) -> bool:
        """Idle between requests, or still receiving a head or a body: safe to shed."""
        cycle = self.cycle
        return cycle is None or cycle.response_complete or self._in_body

    def _make_room(self) -> bool:
        """Close the connection that has waited longest on its client; False if none is."""
        candidates = [
            c
            for c in self.connections
            if isinstance(c, GuardedHttpToolsProtocol)
            and c._waiting_on_client()
            and not c.transport.is_closing()
        ]
        if not candidates:
            return False
        oldest = min(candidates, key=lambda c: c._last_read)
        oldest._disarm()
        oldest.transport.close()
        oldest.connections.discard(oldest)  # closing is asynchronous; make room now
        return True

    # -- bytes in ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._last_read = self.loop.time()
        counting = self._in_head
        if counting:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return  # no WebSocket here (ws="none"): the request was served as plain HTTP
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
            else:
                log.info("invalid HTTP request received; answered 400")
                self.send_400_response("Invalid HTTP request received.")
            return
        if counting and self._in_head and self._head_bytes > self._limits.max_header_bytes:
            self._refuse(431, self._head_message())

    def _head_message(self) -> str:
        return f"request head over {self._limits.max_header_bytes} bytes (LOSSREG_MAX_HEADER_BYTES)"

    # -- parser callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._timer is None:
            self._arm(self._limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self._limits.max_header_bytes:
            self._refusal = (431, self._head_message())
            raise _HeadRefused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._limits.max_headers:
            self._refusal = (431, f"more than {self._limits.max_headers} header fields "
                             "(LOSSREG_MAX_HEADERS)")  # fmt: skip
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._header_count = 0
        self._disarm()
        self._in_body = any(
            (name == b"content-length" and value.strip() not in (b"", b"0"))
            or name == b"transfer-encoding"
            for name, value in self.headers
        )
        if self._in_body:
            self._arm(self._limits.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._in_head = True  # what comes next is the head of a pipelined request
        self._disarm()
        super().on_message_complete()

    # -- timeouts ----------------------------------------------------------------------------
    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._in_body:
            limit = self._limits.body_timeout_s
            idle = self.loop.time() - self._last_read
            if idle < limit or self.flow.read_paused:  # data came, or the app is the slow one
                self._arm(max(limit - idle, 0.05))
                return
            log.info("closed a connection whose body stalled for %.0f s", limit)
        elif self._in_head and (self.cycle is None or self.cycle.response_complete):
            log.info("closed a connection that sent no complete request head in time")
        else:
            return
        self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a plain-text ``message`` and close the connection."""
        self._disarm()
        log.info("refused a connection: %s %s", status, message)
        body = message.encode("ascii", "replace")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, _REASONS.get(status, b""), len(body), body)
        )
        self.transport.close()


class _CoalescingTransport:
    """The connection's transport, sending the small writes of one event-loop step together.

    uvicorn writes a response's head and its body separately: two ``send`` calls and two TCP
    segments (so two wake-ups of the client) for every small answer. Writes up to
    ``_HOLD_MOST`` bytes are held and go out at the next write or at the end of the loop's
    current step, whichever comes first; bigger ones go at once, after what is held. Closing
    sends what is held first; everything else is the transport's own.
    """

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes) -> None:
        size = len(data)
        if self._held_bytes + size > _HOLD_MOST:
            self._flush()
            self._transport.write(data)
            return
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(bytes(data))
        self._held_bytes += size

    def _flush(self) -> None:
        if self._held:
            data = b"".join(self._held) if len(self._held) > 1 else self._held[0]
            self._held.clear()
            self._held_bytes = 0
            if not self._transport.is_closing():
                self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size()) + self._held_bytes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


_HOLD_MOST = 64 * 1024


def protocol_for(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for a server whose settings are given (not the environment's)."""
    limits = ConnectionLimits.from_settings(settings)
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def uvicorn_options(settings: Settings, *, in_process: bool = False) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config`: the guarded protocol (by import
    path, so worker processes build it from their own environment; by class when
    ``in_process``) and the keep-alive timeout."""
    http: Any = (
        protocol_for(settings)
        if in_process
        else f"{GuardedHttpToolsProtocol.__module__}:{GuardedHttpToolsProtocol.__name__}"
    )
    return {"http": http, "ws": "none", "timeout_keep_alive": settings.keep_alive_timeout_s}
