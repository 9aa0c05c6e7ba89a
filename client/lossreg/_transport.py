"""`HTTPTransport`: the sync client's default transport, plain HTTP/1.1 on ``http.client``.

httpx's default transport runs every byte through h11 in pure Python: a body is joined into
one bytes object before it is sent, and an answer arrives in 64 KiB reads, each copied into
h11's buffer and out again. For a 16 MB tensor that is most of the time a request takes. This
transport keeps httpx's API (`Client` still builds and reads ``httpx`` requests and responses)
and moves the bytes with the standard library instead:

- the request's chunks (memoryviews of the caller's arrays) go to ``socket.sendall`` as they
  are; a small body is sent in the same write as the headers;
- an answer with a ``Content-Length`` is read with ``readinto`` straight into one buffer,
  aligned as the client's answer reader wants it, so the reader adopts it without a copy;
- big answer buffers are recycled once the caller has dropped every array viewing them: fresh
  memory costs a page fault per 4 KiB (on a VM, ~8 ms for a 16 MB answer, more than the
  transfer), memory already mapped costs nothing;
- keep-alive connections are pooled per origin (thread-safe), and a pooled connection the
  server closed in the meantime is retried once on a fresh one.

It serves ``http://`` URLs (TCP, or a Unix socket with ``uds=``); https goes through httpx's
own transport. Errors are raised as the httpx exceptions the client already maps.
"""

from __future__ import annotations

import http.client
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import numpy as np

from ._wire import Chunks, new_buffer
from .protocol import HEADER_LENGTH, announced_header_length

__all__ = ["HTTPTransport", "default_transport"]

_SMALL = 64 * 1024  # bodies up to this size go out in the same write as the headers
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_ALIGN = 64

_Key = tuple[str, int | None]
"""A connection pool's key: the server's host and port."""
Timeouts = Mapping[str, float | None]
"""httpx's per-request ``timeout`` extension: seconds by phase (connect, read, write, pool)."""


class _Buffers:
    """Answer buffers of at least ``min_size`` bytes, reused once nothing views them.

    A buffer is free when the pool holds the only reference to it: every array (and torch
    tensor) made from an answer keeps its buffer alive, so a caller still using a result keeps
    its buffer out of reuse. At most ``keep`` buffers are kept.
    """

    def __init__(self, keep: int = 4, min_size: int = 1 << 20) -> None:
        self.keep = keep
        self.min_size = min_size
        self._pool: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, size: int, header_length: int | None) -> np.ndarray:
        """A writable ``uint8`` array of ``size`` bytes, its binary part 64-byte aligned."""
        if size < self.min_size:
            return new_buffer(size, header_length)
        with self._lock:
            raw = next((b for b in self._pool if self._fits(b, size)), None)
            if raw is None:
                raw = np.empty(size + _ALIGN, dtype=np.uint8)
                free = [b for b in self._pool if sys.getrefcount(b) <= 3]
                if len(self._pool) >= self.keep and free:
                    self._pool.remove(free[0])
                if len(self._pool) < self.keep:
                    self._pool.append(raw)
            offset = (-(raw.ctypes.data + (header_length or 0))) % _ALIGN
            return raw[offset : offset + size]

    @staticmethod
    def _fits(raw: np.ndarray, size: int) -> bool:
        # referents: the pool's list, the generator's variable, getrefcount's argument
        return sys.getrefcount(raw) <= 4 and size + _ALIGN <= raw.size <= 2 * size + _ALIGN


class _Connection(http.client.HTTPConnection):
    """``http.client``'s connection, sending a small body in the same write as the headers
    (``http.client`` writes them separately: two packets and, on the server, two reads)."""

    _held: bytes | None = None

    def send_with_body(self, body: bytes) -> None:
        self._held = b""
        self.endheaders()  # calls send(headers), which holds them
        head, self._held = self._held, None
        super().send(head + body)

    def send(self, data: Any) -> None:
        if self._held == b"":
            self._held = bytes(data)
            return
        super().send(data)


class _UnixConnection(_Connection):
    """An HTTP connection over a Unix domain socket."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _ResponseStream(httpx.SyncByteStream):
    """The answer's body: one buffer read in place when its length is known, else pieces."""

    def __init__(
        self,
        transport: HTTPTransport,
        key: _Key,
        conn: _Connection,
        response: http.client.HTTPResponse,
        header_length: int | None,
    ) -> None:
        self._transport = transport
        self._header_length = header_length
        self._key = key
        self._conn = conn
        self._response = response
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        response = self._response
        try:
            if response.length is not None:
                remaining = response.length
                if remaining:
                    body = self._transport._buffers.take(remaining, self._header_length)
                    view = body.data
                    while remaining:
                        got = response.readinto(view[len(body) - remaining :])
                        if not got:
                            raise httpx.RemoteProtocolError(
                                f"the server closed the connection {remaining} bytes before "
                                "the end of the answer"
                            )
                        remaining -= got
                    yield view  # type: ignore[misc]  # a bytes-like object
            else:
                while chunk := response.read(1 << 20):
                    yield chunk
            self._done = True
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out reading the answer") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        reusable = self._done and not self._response.will_close
        self._response.close()
        if reusable:
            self._transport._release(self._key, self._conn)
        else:
            self._conn.close()


class HTTPTransport(httpx.BaseTransport):
    """Plain HTTP/1.1 with keep-alive, on the standard library (see the module docstring).

    Args:
        uds: connect to this Unix domain socket instead of the URL's host and port.
        max_idle: idle keep-alive connections kept per origin.
    """

    def __init__(self, *, uds: str | None = None, max_idle: int = 16) -> None:
        self._uds = uds
        self._max_idle = max_idle
        self._idle: dict[_Key, list[_Connection]] = {}
        self._lock = threading.Lock()
        self._buffers = _Buffers()

    # -- the pool ------------------------------------------------------------------------------

    def _connect(self, url: httpx.URL, timeout: Timeouts) -> _Connection:
        connect = timeout.get("connect")
        if self._uds:
            conn: _Connection = _UnixConnection(self._uds, connect)
        else:
            conn = _Connection(url.host, url.port or 80, timeout=connect)
        try:
            conn.connect()
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"timed out connecting to {url.host}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        return conn

    def _acquire(self, key: _Key) -> _Connection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def _release(self, key: _Key, conn: _Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._max_idle:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            pools, self._idle = self._idle, {}
        for idle in pools.values():
            for conn in idle:
                conn.close()

    def __del__(self) -> None:  # a client dropped without close(): no sockets left open
        try:
            self.close()
        except Exception:  # noqa: BLE001 - nothing to do about it at collection time
            pass

    # -- one exchange --------------------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"HTTPTransport serves http:// URLs, not {request.url}")
        timeout: Timeouts = request.extensions.get("timeout", {})
        key: _Key = (request.url.host, request.url.port)
        conn = self._acquire(key)
        if conn is not None:
            try:
                return self._exchange(conn, key, request, timeout, reused=True)
            except _Stale:
                if not isinstance(request.stream, (httpx.ByteStream, Chunks)):
                    raise httpx.RemoteProtocolError(
                        "the server closed a kept-alive connection before answering"
                    ) from None
        conn = self._connect(request.url, timeout)
        return self._exchange(conn, key, request, timeout, reused=False)

    def _exchange(
        self,
        conn: _Connection,
        key: _Key,
        request: httpx.Request,
        timeout: Timeouts,
        *,
        reused: bool,
    ) -> httpx.Response:
        try:
            if conn.sock is not None:
                conn.sock.settimeout(timeout.get("write"))
            self._send(conn, request)
            if conn.sock is not None:
                conn.sock.settimeout(timeout.get("read"))
            response = conn.getresponse()
        except _STALE as exc:
            conn.close()
            if reused:
                raise _Stale from exc
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout(str(exc) or "timed out waiting for the answer") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from exc
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.getheaders()]
        return httpx.Response(
            response.status,
            headers=headers,
            stream=_ResponseStream(self, key, conn, response, _header_length(response)),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason.encode()},
        )

    @staticmethod
    def _send(conn: _Connection, request: httpx.Request) -> None:
        target = request.url.raw_path.decode("ascii")
        conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
        chunked = False
        has_host = False
        for name, value in request.headers.raw:
            lower = name.lower()
            has_host |= lower == b"host"
            chunked |= lower == b"transfer-encoding" and value.lower() == b"chunked"
            conn.putheader(name.decode("latin-1"), value.decode("latin-1"))
        if not has_host:
            conn.putheader("Host", request.url.netloc.decode("ascii"))
        if not isinstance(request.stream, httpx.SyncByteStream):
            raise TypeError("HTTPTransport sends sync request bodies only")
        chunks = list(request.stream)
        size = sum(len(memoryview(c).cast("B")) for c in chunks)
        if chunked:
            framed: list[bytes] = []
            for chunk in chunks:
                if len(chunk):
                    framed += [f"{len(chunk):x}\r\n".encode(), chunk, b"\r\n"]
            chunks = [*framed, b"0\r\n\r\n"]
            size = -1
        if 0 <= size <= _SMALL:
            conn.send_with_body(b"".join(chunks))
            return
        conn.endheaders()
        for chunk in chunks:
            conn.send(chunk)


def _header_length(response: http.client.HTTPResponse) -> int | None:
    return announced_header_length(response.getheader(HEADER_LENGTH))


class _Stale(Exception):
    """A pooled connection turned out closed before it answered: retry on a fresh one."""


def default_transport(url: httpx.URL) -> httpx.BaseTransport | None:
    """`HTTPTransport` for an ``http://`` server; None (httpx's own) for anything else."""
    return HTTPTransport() if url.scheme == "http" else None
