"""Triton's protocol extensions over REST: statistics, model configuration, repository index.

Included before the v2 model routes so ``/v2/models/stats`` is not read as a model named
``stats``. Load and unload always refuse: the registry is fixed at start-up.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request

from lossreg.protocol import (
    ErrorResponse,
    ModelConfigResponse,
    ModelStatisticsResponse,
    RepositoryIndexEntry,
    RepositoryIndexRequest,
)

from ..auth import require_api_key
from ..catalog import (
    check_version,
    model_config,
    model_statistics,
    refuse_model_control,
    repository_index,
)
from ..deps import RegistryDep, SettingsDep

router = APIRouter(prefix="/v2", tags=["v2 extensions"], dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 404, 409, 422, 503)
}


def _statistics(request: Request) -> Any:
    return request.app.state.statistics


@router.get("/models/stats", response_model=ModelStatisticsResponse, responses=_ERRORS)
async def all_stats(request: Request, registry: RegistryDep) -> ModelStatisticsResponse:
    """Statistics of every ready loss (Triton's ``statistics`` extension), for the whole
    server whatever the worker count."""
    return model_statistics(registry, _statistics(request))


@router.get("/models/{name}/stats", response_model=ModelStatisticsResponse, responses=_ERRORS)
async def stats(name: str, request: Request, registry: RegistryDep) -> ModelStatisticsResponse:
    """One loss's statistics: success/fail/queue/compute durations, inference and execution
    counts, and executions per batch size."""
    return model_statistics(registry, _statistics(request), name)


@router.get(
    "/models/{name}/versions/{version}/stats",
    response_model=ModelStatisticsResponse,
    responses=_ERRORS,
)
async def stats_version(
    name: str, version: str, request: Request, registry: RegistryDep
) -> ModelStatisticsResponse:
    """Statistics of one version of a loss."""
    return model_statistics(registry, _statistics(request), name, version)


@router.get("/models/{name}/config", response_model=ModelConfigResponse, responses=_ERRORS)
async def config(name: str, registry: RegistryDep, settings: SettingsDep) -> ModelConfigResponse:
    """A minimal Triton model configuration (``model_configuration`` extension)."""
    return model_config(registry.get(name).spec, settings)


@router.get(
    "/models/{name}/versions/{version}/config",
    response_model=ModelConfigResponse,
    responses=_ERRORS,
)
async def config_version(
    name: str, version: str, registry: RegistryDep, settings: SettingsDep
) -> ModelConfigResponse:
    """The model configuration of one version."""
    spec = registry.get(name).spec
    check_version(spec, version)
    return model_config(spec, settings)


@router.post("/repository/index", response_model=list[RepositoryIndexEntry], responses=_ERRORS)
async def index(
    registry: RegistryDep, body: RepositoryIndexRequest | None = Body(None)
) -> list[RepositoryIndexEntry]:
    """Every registered loss, ``READY`` or ``UNAVAILABLE`` with its plugin's error."""
    return repository_index(registry, ready=body.ready if body is not None else False)


@router.post("/repository/models/{name}/load", responses=_ERRORS, status_code=200)
async def load(name: str) -> None:
    """Always 409: losses are chosen at start-up (LOSSREG_ALLOW / LOSSREG_DENY)."""
    raise refuse_model_control("load", name)


@router.post("/repository/models/{name}/unload", responses=_ERRORS, status_code=200)
async def unload(name: str) -> None:
    """Always 409: losses are chosen at start-up (LOSSREG_ALLOW / LOSSREG_DENY)."""
    raise refuse_model_control("unload", name)
