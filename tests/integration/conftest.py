"""Integration fixtures: one real uvicorn server on 127.0.0.1 for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lossreg_service.settings import Settings

from ._server import serve


@pytest.fixture(scope="session")
def server_settings() -> Settings:
    """The settings of the shared server: CPU, defaults otherwise, quiet logs."""
    return Settings(device="cpu", log_level="warning")


@pytest.fixture(scope="session")
def server_url(server_settings: Settings) -> Iterator[str]:
    """Base URL of the shared server (``http://127.0.0.1:<port>``)."""
    with serve(server_settings) as url:
        yield url
