"""Open routes: liveness, readiness and server metadata (no API key, for orchestrators)."""

from __future__ import annotations

from fastapi import APIRouter

from lossreg import __version__
from lossreg.protocol import ServerLiveResponse, ServerMetadataResponse, ServerReadyResponse

from ..deps import RegistryDep, SettingsDep

router = APIRouter(prefix="/v2", tags=["health"])

EXTENSIONS = [
    "binary_tensor_data",
    "parameters",
    "statistics",
    "model_configuration",
    "model_repository",
]


@router.get("/health/live", response_model=ServerLiveResponse)
async def live() -> ServerLiveResponse:
    """The process answers."""
    return ServerLiveResponse(live=True)


@router.get("/health/ready", response_model=ServerReadyResponse)
async def ready(registry: RegistryDep) -> ServerReadyResponse:
    """The registry is built (the lifespan finished); losses can be served."""
    return ServerReadyResponse(ready=registry is not None)


@router.get("", response_model=ServerMetadataResponse)
async def server_metadata(settings: SettingsDep) -> ServerMetadataResponse:
    """Server name, version and protocol extensions (``binary_tensor_data``...)."""
    extensions = EXTENSIONS + (["system_shared_memory"] if settings.allow_client_shm else [])
    return ServerMetadataResponse(name="lossreg", version=__version__, extensions=extensions)
