"""Typed dependency aliases: the registry, settings, executor and metrics built in the lifespan.

The getters are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a thread
pool, a thread hand-off per dependency per request (most of a small request's cost).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from lossreg.errors import ServerNotReady

from ..registry import LossRegistry
from ..settings import Settings
from .executor import ComputeExecutor
from .metrics import Metrics

__all__ = ["ExecutorDep", "MetricsDep", "RegistryDep", "SettingsDep", "loaded_registry"]


def loaded_registry(app: FastAPI) -> LossRegistry:
    """The app's registry; `ServerNotReady` (503) while it is still loading (readiness.py)."""
    registry: LossRegistry | None = getattr(app.state, "registry", None)
    if registry is None:
        raise ServerNotReady("the loss registry is still loading; retry shortly", retry_after=1)
    return registry


async def get_registry(request: Request) -> LossRegistry:
    return loaded_registry(request.app)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_executor(request: Request) -> ComputeExecutor:
    return request.app.state.executor  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


RegistryDep = Annotated[LossRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ExecutorDep = Annotated[ComputeExecutor, Depends(get_executor)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
