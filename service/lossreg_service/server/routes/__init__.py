"""The routers: health and server metadata, KServe v2 models, the v1 JSON API, metrics."""

from __future__ import annotations

from . import health, metrics, v1, v2

__all__ = ["health", "metrics", "v1", "v2"]
