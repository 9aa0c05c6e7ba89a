"""Request bodies in, response bodies out, with the size cap and content codings.

Bodies are read as they stream in and refused (413) as soon as they pass the cap: first on the
declared ``Content-Length``, then on the bytes actually received, and again after
``Content-Encoding: gzip|deflate`` decompression (so a small bomb cannot expand past it).
The result is a ``bytearray``: tensors sliced from it are writable, so numpy and torch use the
bytes in place without a copy (and without torch's warning about read-only buffers).

Responses are sent as chunks (JSON header, then each tensor's bytes) without joining them, and
compressed with gzip or deflate when the client's ``Accept-Encoding`` asks and the body is big
enough to be worth it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import logging
import os
import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from lossreg.errors import InvalidRequest, PayloadTooLarge, ServerBusy
from lossreg.protocol import HEADER_LENGTH, Buffer

if TYPE_CHECKING:
    from prometheus_client import Gauge

    from ..settings import Settings

__all__ = [
    "BodyBudget",
    "ChunkedResponse",
    "CompressedResponse",
    "encoded_response",
    "read_body",
    "release_request",
]

log = logging.getLogger("lossreg.server")

_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 32 + 15}


def machine_memory_bytes() -> int:
    """Physical memory, or the container's cgroup limit when that is lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                total = min(total, int(f.read().strip()))
    return total


@dataclasses.dataclass
class _Upload:
    """A body being received: how far it got, for `BodyBudget` to find the slow ones."""

    started: float
    received: int = 0
    shed: bool = False


class BodyBudget:
    """The request-body bytes one worker receives or holds at once, across all connections.

    A body reserves its declared length before a byte is read (a chunked or compressed one, as
    it grows); past the budget the request is answered 503 + ``Retry-After`` at once, so memory
    stays under the budget plus a constant whatever the number of uploading clients. The
    reservation is given back when the response has been sent (`release_request`).

    So that slow clients cannot sit on the budget (declare 256 MiB, send a byte a minute), a
    body that does not fit first sheds the uploads running slower than ``min_rate`` bytes/s
    (slowest first): they give back what they have not received yet and are answered 503.
    """

    def __init__(
        self,
        limit: int,
        retry_after_s: float,
        gauge: Gauge | None = None,
        *,
        min_rate: float = 0.0,
    ) -> None:
        self.limit = limit
        self.used = 0
        self.retry_after_s = retry_after_s
        self.min_rate = min_rate
        self._gauge = gauge
        self._uploads: dict[int, tuple[dict[str, Any], _Upload]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, gauge: Gauge | None = None) -> BodyBudget:
        limit = settings.max_body_bytes_in_flight or machine_memory_bytes() // (
            4 * settings.workers
        )
        return cls(limit, settings.retry_after_s, gauge, min_rate=settings.client_body_min_rate)

    def reserve(self, state: dict[str, Any], size: int) -> None:
        """Count ``size`` more bytes for the request whose ``scope["state"]`` is ``state``.

        Raises:
            PayloadTooLarge: the body alone is over the whole budget (it could never fit).
            ServerBusy: the budget is taken by other bodies now.
        """
        held = state.get(_RESERVED, 0)
        if held + size > self.limit:
            raise PayloadTooLarge(
                f"request body of at least {held + size} bytes is over this worker's budget "
                f"for bodies in flight, {self.limit} bytes (LOSSREG_MAX_BODY_BYTES_IN_FLIGHT)",
                field="body",
                limit=self.limit,
            )
        if self.used + size > self.limit:
            self._shed_slow(self.used + size - self.limit)
        if self.used + size > self.limit:
            raise ServerBusy(
                f"{self.used} bytes of request bodies are in flight, the budget is {self.limit} "
                "(LOSSREG_MAX_BODY_BYTES_IN_FLIGHT); retry later",
                retry_after=self.retry_after_s,
            )
        self._add(state, size)
        state[_BUDGET] = self

    def start_upload(self, state: dict[str, Any]) -> _Upload:
        """Track the body of this request while it is received (see `_shed_slow`)."""
        upload = _Upload(time.monotonic())
        self._uploads[id(state)] = (state, upload)
        state[_BUDGET] = self
        return upload

    def end_upload(self, state: dict[str, Any]) -> None:
        self._uploads.pop(id(state), None)

    def _add(self, state: dict[str, Any], size: int) -> None:
        self.used += size
        state[_RESERVED] = state.get(_RESERVED, 0) + size
        if self._gauge is not None:
            self._gauge.set(self.used)

    def _shed_slow(self, need: int) -> None:
        if self.min_rate <= 0:
            return
        now = time.monotonic()
        slow = []
        for state, upload in self._uploads.values():
            elapsed = now - upload.started
            spare = state.get(_RESERVED, 0) - upload.received
            if not upload.shed and spare > 0 and elapsed >= 1.0:
                rate = upload.received / elapsed
                if rate < self.min_rate:
                    slow.append((rate, state, upload, spare))
        for _, state, upload, spare in sorted(slow, key=lambda item: item[0]):
            if need <= 0:
                break
            upload.shed = True
            self._add(state, -spare)
            need -= spare
            log.info("shed a request body arriving under %d bytes/s", self.min_rate)

    def release(self, state: dict[str, Any]) -> None:
        self.end_upload(state)
        size = state.pop(_RESERVED, 0)
        self.used -= size
        if self._gauge is not None:
            self._gauge.set(self.used)


_RESERVED = "body_bytes_reserved"
_BUDGET = "body_budget"


def release_request(state: dict[str, Any]) -> None:
    """Give back what the request with this ``scope["state"]`` reserved (its response is sent)."""
    budget = state.pop(_BUDGET, None)
    if budget is not None:
        budget.release(state)


def _shed(budget: BodyBudget) -> ServerBusy:
    return ServerBusy(
        f"the request body arrived slower than {budget.min_rate:g} bytes/s while other bodies "
        "waited for the budget (LOSSREG_CLIENT_BODY_MIN_RATE); retry later",
        retry_after=budget.retry_after_s,
    )


def _too_large(size: int | str, limit: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body {what} {size} bytes, over the limit of {limit} bytes "
        "(LOSSREG_MAX_REQUEST_BYTES)",
        field="body",
        limit=limit,
    )


async def read_body(request: Request, limit: int) -> bytearray:
    """The whole (decompressed) request body, refused past ``limit`` bytes.

    Raises:
        PayloadTooLarge: declared, received or decompressed size over ``limit``.
        InvalidRequest: an unknown ``Content-Encoding``, corrupt compressed data, or a client
            that disconnected before sending the whole body.
    """
    declared = (request.headers.get("content-length") or "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit, "declares")
    budget: BodyBudget | None = getattr(request.app.state, "body_budget", None)
    state = request.scope.setdefault("state", {})
    upload = None
    if budget is not None:
        if declared.isascii() and declared.isdigit():
            budget.reserve(state, int(declared))  # before a byte is read: 503 past the budget
        upload = budget.start_upload(state)
    coding = request.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("identity", "", *_CODINGS):
        raise InvalidRequest(
            f"unsupported Content-Encoding {coding!r}; use gzip, deflate or none",
            field="Content-Encoding",
        )
    decoder = zlib.decompressobj(_CODINGS[coding]) if coding in _CODINGS else None
    body = bytearray()
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(f"of more than {received}", limit, "is")
            if decoder is None:
                body += chunk
            else:
                # Off the event loop: one chunk of a bomb can inflate to the whole cap.
                await run_in_threadpool(_inflate, decoder, chunk, body, limit)
            if budget is not None and upload is not None:
                if upload.shed:
                    raise _shed(budget)
                upload.received = received
                if len(body) > state.get(_RESERVED, 0):  # chunked, or inflated
                    budget.reserve(state, len(body) - state.get(_RESERVED, 0))
        if decoder is not None:
            body += decoder.flush()
            if len(body) > limit:
                raise _too_large(len(body), limit, "decompresses to")
            if not decoder.eof:
                raise InvalidRequest(f"truncated {coding} request body", field="Content-Encoding")
    except zlib.error as exc:
        raise InvalidRequest(
            f"request body is not valid {coding} data: {exc}", field="Content-Encoding"
        ) from None
    except ClientDisconnect:
        # Nobody is left to read the answer; a 4xx keeps it out of the error log and metrics.
        raise InvalidRequest(
            f"the client disconnected after {received} bytes, before the body ended",
            field="body",
        ) from None
    finally:
        if budget is not None:
            budget.end_upload(state)
    return body


def _inflate(decoder: zlib._Decompress, chunk: bytes, body: bytearray, limit: int) -> None:
    data = chunk
    while data:
        room = limit - len(body) + 1  # one byte more than allowed reveals an overflow
        body += decoder.decompress(data, room)
        if len(body) > limit:
            raise _too_large(f"more than {limit}", limit, "decompresses to")
        data = decoder.unconsumed_tail


class ChunkedResponse(Response):
    """A response whose body is sent as a list of buffers, never joined into one."""

    def __init__(
        self,
        chunks: Sequence[Buffer],
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.chunks = [c for c in chunks if len(c)]
        super().__init__(b"", status_code, headers, media_type)
        self.headers["content-length"] = str(sum(len(memoryview(c).cast("B")) for c in chunks))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if not self.chunks:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        for i, chunk in enumerate(self.chunks):
            last = i == len(self.chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})


def _compress(chunks: Sequence[Buffer], coding: str) -> bytes:
    joined = b"".join(chunks)
    if coding == "gzip":
        return gzip.compress(joined, compresslevel=1)
    return zlib.compress(joined, level=1)


class CompressedResponse(Response):
    """A response compressed when it is sent, in a worker thread: gzip of a 16 MB body takes
    ~0.4 s, which on the event loop would stall every other request."""

    def __init__(
        self,
        chunks: Sequence[Buffer],
        coding: str,
        headers: dict[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.chunks, self.coding = chunks, coding
        super().__init__(b"", 200, headers, media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.body = await run_in_threadpool(_compress, self.chunks, self.coding)
        self.headers["content-length"] = str(len(self.body))
        await super().__call__(scope, receive, send)


def _accepted_coding(accept_encoding: str) -> str | None:
    """``gzip`` or ``deflate`` if the client accepts it (q > 0), gzip preferred."""
    accepted: dict[str, float] = {}
    for part in accept_encoding.lower().split(","):
        token, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        accepted[token.strip()] = q
    for coding in ("gzip", "deflate"):
        if accepted.get(coding, accepted.get("*", 0.0)) > 0:
            return coding
    return None


def encoded_response(
    request: Request,
    chunks: Sequence[Buffer],
    *,
    header_length: int | None = None,
    min_bytes: int = 1024,
    media_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Response:
    """Send ``chunks``: compressed if the client asked and it is big enough, else as they are.

    ``header_length`` becomes ``Inference-Header-Content-Length`` (binary tensor extension); it
    counts bytes of the uncompressed body, as Triton does.
    """
    out_headers = dict(headers or {})
    if header_length is not None:
        out_headers[HEADER_LENGTH] = str(header_length)
        media_type = "application/octet-stream"
    size = sum(len(memoryview(c).cast("B")) for c in chunks)
    coding = _accepted_coding(request.headers.get("accept-encoding", ""))
    if coding is None or size < min_bytes:
        return ChunkedResponse(chunks, headers=out_headers, media_type=media_type)
    out_headers["Content-Encoding"] = coding
    out_headers["Vary"] = "Accept-Encoding"
    return CompressedResponse(chunks, coding, headers=out_headers, media_type=media_type)
