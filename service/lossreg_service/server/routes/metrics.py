"""``GET /metrics``: Prometheus text format (open, like health)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ..deps import MetricsDep
from ..metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Request counts by loss and outcome, durations, queue and in-flight gauges, memory."""
    return Response(metrics.render(), media_type=CONTENT_TYPE)
