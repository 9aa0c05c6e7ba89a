"""Integration fixtures: one real uvicorn server on 127.0.0.1 for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lossreg_service.settings import Settings
from tests.support.server import free_port, serve


@pytest.fixture(scope="session")
def server_settings() -> Settings:
    """The settings of the shared server: CPU, defaults otherwise, quiet logs."""
    return Settings(device="cpu", log_level="warning")


@pytest.fixture(scope="session")
def server_url(server_settings: Settings) -> Iterator[str]:
    """Base URL of the shared server (``http://127.0.0.1:<port>``)."""
    with serve(server_settings) as url:
        yield url


@pytest.fixture(scope="session")
def grpc_server() -> Iterator[tuple[str, str]]:
    """A server with gRPC on: ``(http base URL, gRPC target host:port)``. Its request cap is
    4 MiB so an oversized message is cheap to send."""
    port = free_port()
    settings = Settings(
        device="cpu", log_level="warning", grpc_port=port, max_request_bytes=4 * 1024 * 1024
    )
    with serve(settings) as url:
        yield url, f"127.0.0.1:{port}"
