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
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response

__all__ = ["ASSETS", "STATIC", "install_explorer"]

STATIC = files(__name__) / "static"
"""The page's files: ``index.html``, ``explorer.js``, ``explorer.css``, ``vendor/``."""
ASSETS = {
    "explorer.js": ("explorer.js", "text/javascript"),
    "explorer.css": ("explorer.css", "text/css"),
    "uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", "text/javascript"),
    "uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css"),
}
"""``/explore/static/{asset}``: a fixed list, so no request path ever reaches the filesystem."""

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


@router.get("/explore/static/{asset}")
async def static(asset: str) -> Response:
    """One of the page's `ASSETS`."""
    if asset not in ASSETS:
        raise HTTPException(404)
    relative, media_type = ASSETS[asset]
    body = STATIC.joinpath(*relative.split("/")).read_bytes()
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})


def install_explorer(app: FastAPI) -> None:
    """Serve the page at ``/`` and ``/explore``, its files at ``/explore/static/{asset}``."""
    app.include_router(router)
