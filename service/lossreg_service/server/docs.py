"""``/docs`` and ``/redoc`` served with no CDN: the pages load Swagger UI and ReDoc from the
assets vendored by the ``fastapi-offline`` package, so the documentation works on a machine
with no internet access (FastAPI's own pages fetch them from jsDelivr)."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse

__all__ = ["install_docs"]

_ASSETS = Path(fastapi_offline.__file__).parent / "static"
_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
_STATIC = "/docs/static"


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their assets; build the app with ``docs_url=None`` and
    ``redoc_url=None`` so FastAPI's CDN pages are not added too."""

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
            swagger_js_url=f"{root}{_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{_STATIC}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{_STATIC}/favicon.png",
            with_google_fonts=False,
        )

    @app.get(_STATIC + "/{asset}", include_in_schema=False)
    async def static_asset(asset: str) -> FileResponse:
        media_type = _FILES.get(asset)  # a fixed list: no path from the client reaches the disk
        if media_type is None:
            raise HTTPException(404, "no such documentation asset")
        return FileResponse(_ASSETS / asset, media_type=media_type)
