"""Reliability fixtures: one real uvicorn server (CPU, defaults) shared by this folder's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lossreg_service.settings import Settings
from tests.support.server import serve


@pytest.fixture(scope="session")
def reliability_url() -> Iterator[str]:
    """Base URL of a server with default limits (CPU, quiet logs)."""
    with serve(Settings(device="cpu", log_level="critical")) as url:
        yield url
