"""Triton's system shared-memory routes: register, unregister and list regions.

``GET /v2/systemsharedmemory[/region/{name}]/status``,
``POST /v2/systemsharedmemory/region/{name}/register`` (body ``{"key", "offset", "byte_size"}``)
and ``POST /v2/systemsharedmemory[/region/{name}]/unregister``, exactly as tritonclient's
``register_system_shared_memory`` & co. call them. Errors carry ``{"error": ...}``: 403 when
the server does not allow client shared memory, 404 for an unknown region or object, 409 for
a name already registered, 400 for the rest.
"""

from __future__ import annotations

from typing import Any

import pydantic
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from lossreg.protocol import ErrorResponse

from ..auth import require_api_key
from ..body import read_body
from ..errors import from_validation_error
from ..inference import parse_json
from ..shm import regions

router = APIRouter(
    prefix="/v2/systemsharedmemory", tags=["shared memory"], dependencies=[Depends(require_api_key)]
)

_STATUSES = (400, 401, 403, 404, 409)
_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in _STATUSES}
_BODY_LIMIT = 64 * 1024


def _ok() -> Response:
    return Response(b"{}", media_type="application/json")  # tritonclient reads only the status


class SharedMemoryRegisterRequest(BaseModel):
    """Register ``byte_size`` bytes at ``offset`` of the shared-memory object ``key``."""

    key: str = Field(description="the POSIX shared-memory object's name (/dev/shm/<key>)")
    offset: int = Field(0, ge=0, description="where the region starts in the object, in bytes")
    byte_size: int = Field(ge=0, description="the region's size in bytes")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"key": "/input_data", "offset": 0, "byte_size": 1024}},
    )


class SharedMemoryRegionStatus(BaseModel):
    """One registered region."""

    name: str
    key: str
    offset: int
    byte_size: int


@router.get("/status", response_model=list[SharedMemoryRegionStatus], responses=_ERRORS)
async def status(request: Request) -> list[dict[str, Any]]:
    """Every registered region."""
    return regions(request.app).status()


@router.get(
    "/region/{name}/status", response_model=list[SharedMemoryRegionStatus], responses=_ERRORS
)
async def region_status(name: str, request: Request) -> list[dict[str, Any]]:
    """One region (404 when it is not registered)."""
    return regions(request.app).status(name)


@router.post(
    "/region/{name}/register",
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": SharedMemoryRegisterRequest.model_json_schema()}
            },
        }
    },
)
async def register(name: str, request: Request) -> Response:
    """Map a window of a shared-memory object as region ``name``."""
    raw = parse_json(await read_body(request, _BODY_LIMIT), "register request")
    try:
        body = SharedMemoryRegisterRequest.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise from_validation_error(exc, "register request") from None
    regions(request.app).register(name, body.key, body.offset, body.byte_size)
    return _ok()


@router.post("/region/{name}/unregister", responses=_ERRORS)
async def unregister(name: str, request: Request) -> Response:
    """Forget region ``name`` (nothing happens when it is not registered)."""
    regions(request.app).unregister(name)
    return _ok()


@router.post("/unregister", responses=_ERRORS)
async def unregister_all(request: Request) -> Response:
    """Forget every region."""
    regions(request.app).unregister()
    return _ok()
