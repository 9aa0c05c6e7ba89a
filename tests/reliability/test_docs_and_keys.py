"""``LOSSREG_API_KEYS`` is trimmed or refused clearly in every form, the OpenAPI document
declares the bearer scheme on the routes that need it, and ``/docs`` / ``/redoc`` load every
asset from the server itself (no CDN)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from lossreg_service.settings import Settings
from tests.support.server import serve

GOOD = {"inputs": {"input": [1.0, 2.0], "target": [0.0, 0.0]}}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    settings = Settings(device="cpu", log_level="critical", api_keys='[" padded-key\\t", "k2"]')
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def test_a_padded_key_in_the_json_form_matches_its_trimmed_value(http: httpx.Client) -> None:
    for key in ("padded-key", "k2"):
        headers = {"Authorization": f"Bearer {key}"}
        r = http.post("/v1/losses/mse_loss/evaluate", json=GOOD, headers=headers)
        assert r.status_code == 200, r.text
    assert http.post("/v1/losses/mse_loss/evaluate", json=GOOD).status_code == 401


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('["good", "two words"]', "API key 2 of 2"),
        ('["good", ""]', "API key 2 of 2 is empty"),
        ('["   "]', "API key 1 of 1 is empty"),
        ('["caf\\u00e9"]', "non-ASCII"),
        ('["tab\\tinside"]', "API key 1 of 1"),
    ],
)
def test_unusable_keys_stop_start_up_with_a_clear_error(value: str, words: str) -> None:
    env = {**os.environ, "LOSSREG_API_KEYS": value, "LOSSREG_PORT": "1"}  # never reached
    result = subprocess.run(
        [sys.executable, "-m", "lossreg_service.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert words in result.stderr
    assert "two words" not in result.stderr and "inside" not in result.stderr  # no key echoed


def test_the_openapi_document_declares_the_bearer_scheme(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    ((name, scheme),) = schemes.items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for path in ("/v1/evaluate", "/v1/losses/{name}/evaluate", "/v2/models/{name}/infer"):
        assert document["paths"][path]["post"]["security"] == [{name: []}]
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert "security" not in document["paths"][path]["get"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_documentation_pages_need_no_cdn(http: httpx.Client, page: str) -> None:
    html = http.get(page).text
    assert "openapi.json" in html
    external = re.findall(r"""(?:src|href)\s*=\s*["'](https?:)?//""", html)
    assert external == [], "the page loads something from outside the server"
    assets = re.findall(r"""(?:src|href)\s*=\s*["'](/[^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        r = http.get(asset)
        assert r.status_code == 200 and len(r.content) > 1000, asset


def test_only_the_vendored_assets_are_served(http: httpx.Client) -> None:
    for name in ("..%2F..%2Fsettings.py", "__init__.py", "core.py"):
        assert http.get(f"/docs/static/{name}").status_code == 404
