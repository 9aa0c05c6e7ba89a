"""A direct route for ``POST /v2/models/{name}/infer``, the one hot path, around FastAPI's router.

For a small inference request FastAPI's routing, dependency solving and ``Request`` plumbing
cost about as much as decoding, computing and encoding it. This pure-ASGI middleware sits
inside `RequestContextMiddleware` (so request ids, metrics, the access log and the 500
fallback are unchanged) and answers that one route by calling the same functions the FastAPI
route calls: `require_api_key`, the pipeline's `resolve_loss` and `run_inference`, and the
app's registered exception handlers for errors. Every other request, the versioned infer
route included, goes to FastAPI as before; the FastAPI route stays for the OpenAPI document.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import require_api_key
from .pipeline import resolve_loss, run_inference

__all__ = ["InferFastPath"]

_INFER = re.compile(r"^/v2/models/([^/]+)/infer$")
_TEMPLATE = "/v2/models/{name}/infer"


class InferFastPath:
    """Answers ``POST /v2/models/{name}/infer`` itself; passes everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._route: APIRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            _INFER.match(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if match is None:
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        scope["route"] = self._route or self._find_route(app)
        scope["path_params"] = {"name": match.group(1)}
        request = Request(scope, receive, send)
        try:
            await require_api_key(request)
            response = await run_inference(request, await resolve_loss(request, match.group(1)))
        except Exception as exc:
            handler = _handler(app, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _find_route(self, app: Any) -> APIRoute | None:
        for route in app.routes:
            if isinstance(route, APIRoute) and route.path == _TEMPLATE:
                self._route = route
        return self._route


def _handler(app: Any, exc: Exception) -> Any:
    """The exception handler FastAPI would pick for ``exc`` (most specific class first)."""
    handlers = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers and cls is not Exception:
            return handlers[cls]
    return None
