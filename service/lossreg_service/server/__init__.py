"""The HTTP service: ``create_app(settings)`` (run by uvicorn with ``factory=True``)."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
