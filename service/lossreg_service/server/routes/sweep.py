"""``POST /v1/losses/{name}/sweep``: a whole value-and-gradient curve in one request."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from lossreg.protocol import Buffer, ErrorResponse
from lossreg.protocol.sweep import MAX_SWEEP_POINTS, SweepRequest, SweepResponse

from ..auth import require_api_key
from ..body import encoded_response
from ..jsonapi import decode_inputs, validate_body
from ..openapi import request_body
from ..pipeline import dataplane, observe, resolve_loss
from ..sweep import run_sweep

router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413, 422, 503, 504)
}


@router.post(
    "/losses/{name}/sweep",
    response_model=SweepResponse,
    responses=_ERRORS,
    openapi_extra=request_body("SweepRequest"),
    description=(
        "The loss and its gradient with respect to one element of one input, with that element "
        f"set to each of up to {MAX_SWEEP_POINTS} values (`values`, or `start`/`stop`/`points`) "
        "and every other input held fixed; computed as one batch. Validation, limits and the "
        "non-finite policy are those of `/evaluate`; values that are NaN/Inf read null under "
        "`nonfinite: allow`."
    ),
)
async def sweep(name: str, request: Request) -> Response:
    """Value and gradient of one loss along one input element (a curve for a plot).

    Through the dataplane: admitted once, run alone on a worker by the scheduler (its points
    are one batch already), and counted in the loss's model statistics as one inference and one
    execution."""
    loss = await resolve_loss(request, name)
    plane = dataplane(request.app)
    settings = plane.settings
    with observe(plane.statistics, loss) as times, plane.admitted(body_to_read=True) as admission:
        body = await plane.read_body(request, admission)

        def work(device: Any) -> list[Buffer]:
            started = time.perf_counter_ns()
            req: SweepRequest = validate_body(SweepRequest, body, "sweep request")
            inputs, _ = decode_inputs(req.inputs)
            decoded = time.perf_counter_ns()
            times.input_ns = decoded - started
            out = run_sweep(
                loss,
                req,
                inputs,
                device=device,
                compute_dtype=plane.scheduler.compute_dtype,
                nonfinite=req.nonfinite or settings.nonfinite,
            )
            computed = time.perf_counter_ns()
            times.infer_ns = computed - decoded
            chunks: list[Buffer] = [orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)]
            times.output_ns = time.perf_counter_ns() - computed
            return chunks

        chunks = await plane.scheduler.run(
            admission, work, label=loss.spec.name, times=times, losses=[loss]
        )
    return encoded_response(request, chunks, min_bytes=settings.compress_min_bytes)
