"""The one place where exceptions become HTTP responses.

Every `LossRegError` answers its class's status with ``to_dict()`` as the body, so ``error`` stays
the protocol's message string (tritonclient reads exactly that) and ``code``/``field`` let lossreg's
client re-raise the same class. FastAPI's own request validation errors and Starlette's routing
errors (404/405) get the same body shape. Anything unexpected is answered by
`internal_error_response` from the request-id middleware, logged with the request id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from lossreg.errors import (
    InvalidParameter,
    InvalidRequest,
    LossRegError,
    ServerBusy,
    Unauthorized,
    field_path,
)
from lossreg.protocol.limits import MAX_NAME_LENGTH, bounded

log = logging.getLogger("lossreg.server")

__all__ = [
    "add_exception_handlers",
    "error_response",
    "from_validation_error",
    "internal_error_response",
]


def error_response(
    status_code: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON error response (orjson, like every other body)."""
    return Response(
        orjson.dumps(body), status_code=status_code, media_type="application/json", headers=headers
    )


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return field_path(loc, skip=("body", "query", "path", "header")) or "body"


def from_validation_error(
    exc: ValidationError | RequestValidationError, what: str = "request"
) -> InvalidRequest:
    """The first problem of a pydantic/FastAPI validation error, naming the field.

    A malformed body is a 400 `InvalidRequest`; a bad query or path parameter a 422
    `InvalidParameter`.
    """
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(exc), "type": "invalid"}
    loc = tuple(first.get("loc", ()))
    field = bounded(_location(loc), MAX_NAME_LENGTH)  # a dict key may be the oversized name
    message = (
        f"{what}: unknown field {field!r}"
        if first.get("type") == "extra_forbidden"
        else f"{what}: {field}: {first.get('msg')}"
    )
    cls = InvalidParameter if loc and loc[0] in ("query", "path", "header") else InvalidRequest
    return cls(message, field=field)


def _headers(exc: LossRegError, request: Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(exc, ServerBusy) and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def _bound(exc: LossRegError) -> None:
    """Quote at most a bounded prefix of client text (a 10 MB name must not come back twice)."""
    exc.message = bounded(exc.message, 4 * MAX_NAME_LENGTH)
    if exc.field is not None:
        exc.field = bounded(exc.field, MAX_NAME_LENGTH)


async def _lossreg_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LossRegError)
    _bound(exc)
    request.state.error_code = exc.code
    level = logging.WARNING if exc.status_code >= 500 else logging.INFO
    log.log(
        level,
        "%s %s -> %s %s: %s",
        request.method,
        bounded(request.url.path),
        exc.status_code,
        exc.code,
        exc.message,
    )
    return error_response(exc.status_code, exc.to_dict(), _headers(exc, request))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return await _lossreg_error(request, from_validation_error(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    request.state.error_code = code
    message = bounded(f"{exc.detail}: {request.method} {request.url.path}", 4 * MAX_NAME_LENGTH)
    return error_response(
        exc.status_code, {"error": message, "code": code, "field": None}, exc.headers
    )


def internal_error_response(request_id: str) -> Response:
    """The 500 answer for an unexpected exception: no internals, the request id to quote."""
    return error_response(
        500,
        {
            "error": f"internal server error (request id {request_id})",
            "code": "internal",
            "field": None,
            "request_id": request_id,
        },
    )


def add_exception_handlers(app: FastAPI) -> None:
    """Register every handler, most specific first (kserve's wiring, one shared hierarchy)."""
    app.add_exception_handler(LossRegError, _lossreg_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
