"""Per-request bookkeeping as one pure ASGI middleware (no body buffering, no extra task).

- ``X-Request-ID`` on every response: the client's own (if sane) or a fresh one; it is in a
  context variable, so every log line of the request carries it (`RequestIdFilter`).
- One structured access-log record per request (method, route, status, duration, loss, outcome).
- Metrics: in-flight gauge, duration by route template, compute-request outcome by loss.
- The last line of defence: an unexpected exception becomes a logged 500 naming the request id
  (with the header), instead of the server's bare error page.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lossreg.protocol.limits import bounded

from .body import release_request
from .errors import internal_error_response
from .logs import RequestIdFilter, log_access, request_id_var
from .metrics import Metrics

__all__ = ["REQUEST_ID_HEADER", "RequestContextMiddleware", "RequestIdFilter", "request_id_var"]

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

log = logging.getLogger("lossreg.server")
access_log = logging.getLogger("lossreg.access")


class RequestContextMiddleware:
    """Request id, access log, metrics and the 500 fallback, for HTTP requests."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = _incoming_id(scope)
        request_id = sent if sent and _SANE_ID.match(sent) else new_request_id()
        token = request_id_var.set(request_id)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = False
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception(
                "unexpected error handling %s %s", scope["method"], bounded(scope["path"])
            )
            status = 500
            state.setdefault("error_code", "internal")
            if not started:
                await internal_error_response(request_id)(scope, receive, send_with_id)
        finally:
            release_request(state)  # the body budget this request held
            self.metrics.in_flight.dec()
            self._record(scope, state, status, time.perf_counter() - start)
            request_id_var.reset(token)

    def _record(self, scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path_format", None) or "<unmatched>"
        metrics = self.metrics
        metrics.child(metrics.request_seconds, template, scope["method"]).observe(seconds)
        loss = state.get("loss")
        outcome = state.get("error_code") or ("success" if status < 400 else f"http_{status}")
        if state.get("compute"):
            metrics.child(metrics.requests, loss or "<unknown>", outcome).inc()
        if not access_log.isEnabledFor(logging.INFO):
            return
        path = bounded(scope["path"])  # a quoted prefix; the formatter escapes what it holds
        log_access(
            "%s %s %s %.1fms",
            (scope["method"], path, status, seconds * 1000),
            {
                "method": scope["method"],
                "path": path,
                "route": template,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "loss": loss,
                "outcome": outcome,
            },
        )


_ID_PREFIX = uuid.uuid4().hex[:16]  # random per process: ids stay unique across workers
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A fresh id: the process's random prefix and a counter, 32 hex digits like a uuid4's
    (``uuid4()`` reads the OS's random source on every request: a syscall on the hot path)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _incoming_id(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            return value.decode("latin-1").strip()
    return None
