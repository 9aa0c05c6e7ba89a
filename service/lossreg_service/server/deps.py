"""Typed dependency aliases: the registry, settings, executor and metrics built in the lifespan.

The getters are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a thread
pool, a thread hand-off per dependency per request (most of a small request's cost).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from lossreg.errors import ServerNotReady

from ..registry import LossRegistry
from ..settings import Settings
from .executor import ComputeExecutor
from .metrics import Metrics

__all__ = [
    "ExecutorDep",
    "MetricsDep",
    "RegistryDep",
    "SettingsDep",
    "loaded_registry",
    "registry_when_loaded",
]


def loaded_registry(app: FastAPI) -> LossRegistry:
    """The app's registry; `ServerNotReady` (503) while it is still loading (readiness.py)."""
    registry: LossRegistry | None = getattr(app.state, "registry", None)
    if registry is None:
        raise ServerNotReady("the loss registry is still loading; retry shortly", retry_after=1)
    return registry


async def registry_when_loaded(app: FastAPI) -> LossRegistry:
    """The app's registry, waiting for it while it loads (at most the compute timeout), as a
    request would wait in the listen queue of a server that has not opened its port yet."""
    if getattr(app.state, "registry", None) is None:
        readiness = app.state.readiness
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(
                readiness.load_ended.wait(), app.state.settings.compute_timeout_s
            )
        if readiness.load_error:
            raise ServerNotReady(readiness.load_error, retry_after=1)
    return loaded_registry(app)


async def get_registry(request: Request) -> LossRegistry:
    return await registry_when_loaded(request.app)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_executor(request: Request) -> ComputeExecutor:
    return request.app.state.executor


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


RegistryDep = Annotated[LossRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ExecutorDep = Annotated[ComputeExecutor, Depends(get_executor)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
