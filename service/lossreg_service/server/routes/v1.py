"""lossreg's JSON API: the catalog, one loss's value and gradients, and compositions."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from lossreg.errors import InvalidParameter, LossRegError
from lossreg.protocol import (
    GRAD_LOSS,
    Buffer,
    ComposeRequest,
    ComposeResponse,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    LossListResponse,
    LossSpecResponse,
    torch_name,
)

from ...engine import Term
from ...registry import Loss, LossRegistry
from ..auth import require_api_key
from ..body import encoded_response
from ..catalog import spec_response
from ..dataplane import Computation, Result, compute
from ..deps import RegistryDep
from ..inference import Decoded, OutputPlan
from ..jsonapi import Form, decode_inputs, decode_value, encode_value, validate_body
from ..openapi import request_body
from ..pipeline import dataplane, infer, observe, observe_losses, resolve_loss

router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413, 422, 503, 504)
}
_JSON = orjson.OPT_SERIALIZE_NUMPY


@router.get("/losses", response_model=LossListResponse, responses=_ERRORS)
async def list_losses(
    registry: RegistryDep,
    pattern: Annotated[list[str] | None, Query(description="glob(s) on the name")] = None,
    exclude: Annotated[list[str] | None, Query(description="globs to leave out")] = None,
    tag: Annotated[list[str] | None, Query(description="keep losses with every tag")] = None,
    available: Annotated[bool | None, Query(description="only (un)available losses")] = None,
) -> LossListResponse:
    """The registered losses whose name matches, in natural order, with their full specs."""
    specs = registry.list(pattern, exclude=exclude or (), tags=tag or ())
    if available is not None:
        specs = [s for s in specs if s.available == available]
    return LossListResponse(losses=[spec_response(s) for s in specs], count=len(specs))


@router.get("/losses/{name}", response_model=LossSpecResponse, responses=_ERRORS)
async def show_loss(name: str, registry: RegistryDep) -> LossSpecResponse:
    """One loss: inputs, parameter JSON schema, doc, origin and availability."""
    return spec_response(registry.spec(name))


def _grads(result: Result, forms: Mapping[str, Form]) -> dict[str, Any]:
    return {n: encode_value(a, dt, forms[n]) for n, (a, dt) in result.grads.items()}


@router.post(
    "/losses/{name}/evaluate",
    response_model=EvaluateResponse,
    responses=_ERRORS,
    openapi_extra=request_body("EvaluateRequest"),
)
async def evaluate(name: str, request: Request) -> Response:
    """Value and gradients of one loss; gradients come back in the form their input was sent.

    Through the same dataplane as v2 inference (`pipeline.infer`): one queue, dynamic batching
    with v2 and gRPC requests of the same shapes, and the model statistics."""
    loss = await resolve_loss(request, name)
    plane = dataplane(request.app)
    settings = plane.settings
    forms: dict[str, Form] = {}

    def decode() -> Decoded:
        req: EvaluateRequest = validate_body(EvaluateRequest, body, "evaluate request")
        inputs, sent_as = decode_inputs(req.inputs)
        forms.update(sent_as)
        grad_loss = None
        if req.grad_loss is not None:
            array, datatype, _ = decode_value(GRAD_LOSS, req.grad_loss)
            grad_loss = (array, datatype)
        plan = OutputPlan([], None if req.grad is None else list(req.grad))
        return Decoded(None, inputs, grad_loss, dict(req.params), plan, req.nonfinite)

    def encode(_: Decoded, result: Result) -> list[Buffer]:
        value, datatype = result.loss
        out = {
            "name": loss.spec.name,
            "loss": encode_value(value, datatype, Form.NESTED),
            "dtype": torch_name(datatype),
            "shape": list(value.shape),
            "grads": _grads(result, forms),
            "nonfinite": list(result.nonfinite),
        }
        return [orjson.dumps(out, option=_JSON)]

    with observe(plane.statistics, loss) as times, plane.admitted(body_to_read=True) as admission:
        body = await plane.read_body(request, admission)
        chunks = await infer(
            plane, loss, decode, encode, size=len(body), times=times, admission=admission
        )
    return encoded_response(request, chunks, min_bytes=settings.compress_min_bytes)


def _terms(registry: LossRegistry, req: ComposeRequest) -> list[Term]:
    terms: list[Term] = []
    for i, term in enumerate(req.terms):
        try:
            loss: Loss = registry.get(term.loss)
        except LossRegError as exc:
            raise type(exc)(exc.message, field=f"terms.{i}.loss", **exc.details) from None
        terms.append(Term(loss, term.params, term.weight, term.label))
    counts = Counter(t.key for t in terms)  # linear: keys.count(k) per key was quadratic
    duplicates = sorted(k for k, n in counts.items() if n > 1)
    if duplicates:
        raise InvalidParameter(
            f"terms {duplicates[0]!r} appear more than once; give each a distinct 'label'",
            field="terms",
        )
    return terms


@router.post(
    "/evaluate",
    response_model=ComposeResponse,
    responses=_ERRORS,
    openapi_extra=request_body("ComposeRequest"),
)
async def compose(request: Request, registry: RegistryDep) -> Response:
    """Several losses on the same inputs: the weighted total, each term, the total's gradient.

    Through the dataplane: admitted once, run alone on a worker by the scheduler (its terms
    are one computation), and counted in the model statistics once for each distinct loss
    among its terms (`pipeline.observe_losses`)."""
    request.state.compute = True
    request.state.loss = "<composition>"
    plane = dataplane(request.app)
    settings = plane.settings

    with (
        observe_losses(plane.statistics, []) as observed,
        plane.admitted(body_to_read=True) as admission,
    ):
        body = await plane.read_body(request, admission)
        times = observed.times

        def work(device: Any) -> list[Buffer]:
            started = time.perf_counter_ns()
            req: ComposeRequest = validate_body(ComposeRequest, body, "compose request")
            terms = _terms(registry, req)
            observed.losses.extend(t.loss for t in terms)
            inputs, forms = decode_inputs(req.inputs)
            computation = Computation(
                terms,
                inputs,
                grad=req.grad,
                compute_dtype=plane.scheduler.compute_dtype,
                nonfinite=req.nonfinite or settings.nonfinite,
            )
            times.input_ns = time.perf_counter_ns() - started
            result = compute(computation, device)
            times.infer_ns = result.compute_ns
            started = time.perf_counter_ns()
            value, _ = result.loss
            if value.ndim != 0:
                raise InvalidParameter(
                    f"term {terms[0].key!r} returns shape {list(value.shape)}; a composition "
                    "needs scalar terms (reduction 'mean' or 'sum')",
                    field="terms",
                )
            terms_out = result.terms or {terms[0].key: float(value)}
            out = {
                "loss": float(value),
                "terms": terms_out,
                "weights": {t.key: t.weight for t in terms},
                "grads": _grads(result, forms),
                "nonfinite": list(result.nonfinite),
            }
            chunks: list[Buffer] = [orjson.dumps(out, option=_JSON)]
            times.output_ns = time.perf_counter_ns() - started
            return chunks

        chunks = await plane.scheduler.run(
            admission, work, label="<composition>", times=times, losses=observed.losses
        )
    return encoded_response(request, chunks, min_bytes=settings.compress_min_bytes)
