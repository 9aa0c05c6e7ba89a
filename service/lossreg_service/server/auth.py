"""Optional API keys: ``Authorization: Bearer <key>`` on the compute and catalog routes.

With ``LOSSREG_API_KEYS`` empty every route is open. Health, server metadata and metrics stay
open whatever the setting, so orchestrators and scrapers need no secret.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lossreg.errors import Unauthorized

__all__ = ["bearer", "mark_auth_optional", "require_api_key"]

bearer = HTTPBearer(auto_error=False, description="An API key from LOSSREG_API_KEYS.")


def _matches(candidate: str, keys: list[str]) -> bool:
    # compare_digest against every key: the time taken does not reveal which one nearly matched
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate.encode(), key.encode())
    return found


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> None:
    """Dependency: pass, or raise `Unauthorized` (401 with ``WWW-Authenticate: Bearer``).

    Declared through `Security(bearer)`, so the OpenAPI document lists the bearer scheme on
    every route that needs it; callers outside FastAPI's DI (the infer fast path) pass only the
    request and the header is read here.
    """
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    if credentials is None:
        credentials = await bearer(request)
    if credentials is None:
        raise Unauthorized(
            "this route needs an API key: send 'Authorization: Bearer <key>'",
            field="Authorization",
        )
    if not _matches(credentials.credentials, keys):
        raise Unauthorized("the API key is not valid", field="Authorization")


def mark_auth_optional(document: dict[str, Any]) -> None:
    """With ``LOSSREG_API_KEYS`` empty every route is open: each secured operation of the OpenAPI
    ``document`` also accepts no credentials (an empty requirement beside the bearer scheme)."""
    for path in document.get("paths", {}).values():
        for operation in path.values():
            security = operation.get("security") if isinstance(operation, dict) else None
            if security and {} not in security:
                security.append({})
