"""The app in process: its lifespan run by asgi-lifespan, requests through httpx's ASGI transport.

    async with app_client(Settings(api_keys=["k"])) as client:
        await client.post("/v2/models/mse_loss/infer", json=...)

No socket and no uvicorn: the same middleware, fast path, routes and compute pools, with the
registry loaded (``/v2/health/ready`` answers 200) when the block starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from asgi_lifespan import LifespanManager

from lossreg_service.server import create_app
from lossreg_service.settings import Settings

__all__ = ["app_client"]


@asynccontextmanager
async def app_client(
    settings: Settings | None = None, *, ready_timeout_s: float = 60.0
) -> AsyncIterator[httpx.AsyncClient]:
    """An `httpx.AsyncClient` wired to a fresh app for ``settings`` (CPU, quiet by default)."""
    app = create_app(settings or Settings(device="cpu", log_level="warning"))
    async with LifespanManager(app, startup_timeout=ready_timeout_s) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://lossreg.test", timeout=30
        ) as client:
            deadline = time.monotonic() + ready_timeout_s
            while (await client.get("/v2/health/ready")).status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError("the app did not become ready")
                await asyncio.sleep(0.05)
            yield client
