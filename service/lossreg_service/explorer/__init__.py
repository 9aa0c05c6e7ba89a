"""The loss explorer: a page served at ``/`` and ``/explore`` that browses the catalog and plots
any loss's value and gradient, computed by this server through ``POST /v1/losses/{name}/sweep``.

Plain HTML, CSS and JavaScript shipped as package data, no build step; the one library, uPlot
(MIT), is vendored under ``static/vendor/uplot`` (see ``static/vendor/README.md``), so nothing is
fetched from the internet when the page runs. The page is open like ``/docs``; the API calls it
makes carry the key the user types in when the server asks for one.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

__all__ = ["STATIC", "install_explorer"]

STATIC = files(__name__) / "static"
"""The page's files: ``index.html``, ``explorer.js``, ``explorer.css``, ``vendor/``."""

router = APIRouter(include_in_schema=False)


def _page() -> HTMLResponse:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get("/")
async def root() -> HTMLResponse:
    """The explorer, at the address a new user opens first."""
    return _page()


@router.get("/explore")
async def explore() -> HTMLResponse:
    """The explorer."""
    return _page()


def install_explorer(app: FastAPI) -> None:
    """Serve the page at ``/`` and ``/explore``, its files under ``/explore/static``."""
    app.include_router(router)
    app.mount("/explore/static", StaticFiles(directory=str(STATIC)), name="explorer-static")
