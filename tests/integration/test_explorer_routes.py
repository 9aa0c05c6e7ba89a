"""The explorer's page and files on a real server, without a browser (tests/browser has those)."""

from __future__ import annotations

import re

import httpx
import pytest

from lossreg_service.explorer import ASSETS


@pytest.mark.parametrize("path", ["/", "/explore"])
def test_the_page_is_served_at_root_and_explore(server_url: str, path: str) -> None:
    r = httpx.get(server_url + path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>lossreg explorer</title>" in r.text


def test_every_file_the_page_loads_is_served_from_the_package(server_url: str) -> None:
    html = httpx.get(server_url + "/").text
    refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
    local = [ref for ref in refs if not ref.startswith("data:")]
    assert local and all(ref.startswith("explore/static/") for ref in local), refs
    for ref in local:
        r = httpx.get(f"{server_url}/{ref}")
        assert r.status_code == 200 and len(r.content) > 500, ref
        name = ref.rsplit("/", 1)[1]
        assert r.headers["content-type"].startswith(ASSETS[name][1])


def test_nothing_is_fetched_from_elsewhere(server_url: str) -> None:
    """Every script and stylesheet is local: no URL to another host in what the page runs."""
    for name in ASSETS:
        text = httpx.get(f"{server_url}/explore/static/{name}").text
        assert not re.search(r"""(?:src|href|url|import|fetch)\s*[=(]?\s*["']?(?:https?:)?//""",
                             text), name  # fmt: skip


@pytest.mark.parametrize("asset", ["nope.js", "..%2Fexplorer.js", "vendor%2Fuplot%2FLICENSE"])
def test_other_paths_are_404(server_url: str, asset: str) -> None:
    r = httpx.get(f"{server_url}/explore/static/{asset}")
    assert r.status_code == 404 and r.json()["code"]
