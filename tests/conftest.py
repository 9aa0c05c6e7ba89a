"""Test-wide defaults and fixtures shared by every folder.

Servers built by tests serve gRPC only when a test asks for a port.
"""

from __future__ import annotations

import os

os.environ.setdefault("LOSSREG_GRPC_PORT", "0")

from collections.abc import AsyncIterator  # noqa: E402 - after the environment default

import httpx  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio, as uvicorn does."""
    return "asyncio"


@pytest.fixture
async def asgi_client() -> AsyncIterator[httpx.AsyncClient]:
    """The app in process (httpx's ASGI transport, lifespan run), CPU and default settings,
    for async tests marked ``pytest.mark.anyio``; `tests.support.asgi.app_client` takes other
    settings."""
    from tests.support.asgi import app_client  # asgi-lifespan: the `test` extra only

    async with app_client() as client:
        yield client
