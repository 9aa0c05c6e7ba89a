"""Open routes: liveness, readiness and server metadata (no API key, for orchestrators)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lossreg import __version__
from lossreg.protocol import ServerLiveResponse, ServerMetadataResponse, ServerReadyResponse

from ..catalog import extensions
from ..deps import SettingsDep

router = APIRouter(prefix="/v2", tags=["health"])


@router.get("/health/live", response_model=ServerLiveResponse)
async def live() -> ServerLiveResponse:
    """The process answers."""
    return ServerLiveResponse(live=True)


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {
        "description": 'Not ready: `{"ready": false, "reasons": [...]}` (the registry is '
        "loading, a configured device is unusable, or the server is shutting down)"
    }
}


@router.get("/health/ready", response_model=ServerReadyResponse, responses=_NOT_READY)
async def ready(request: Request) -> ServerReadyResponse | JSONResponse:
    """200 when the server should get traffic; 503 with the reasons when it should not."""
    readiness = request.app.state.readiness
    if readiness.ready:
        return ServerReadyResponse(ready=True)
    return JSONResponse({"ready": False, "reasons": readiness.reasons()}, status_code=503)


@router.get("", response_model=ServerMetadataResponse)
async def server_metadata(settings: SettingsDep) -> ServerMetadataResponse:
    """Server name, version and protocol extensions (``binary_tensor_data``...)."""
    return ServerMetadataResponse(
        name="lossreg", version=__version__, extensions=extensions(settings)
    )
