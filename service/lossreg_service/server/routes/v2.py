"""KServe v2 model routes: metadata, readiness and inference, with and without a version.

Thin: resolve the loss, read the body, and hand decoding + evaluation + encoding to a worker of
the compute pool (`inference` and `dataplane` do the work).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from lossreg.protocol import (
    ErrorResponse,
    InferResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
)

from ..auth import require_api_key
from ..catalog import check_version, model_metadata
from ..deps import RegistryDep
from ..openapi import request_body
from ..pipeline import resolve_loss, run_inference

router = APIRouter(prefix="/v2/models", tags=["v2"], dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413, 422, 503, 504)
}
_INFER_DOC = (
    "Evaluate the loss and its gradients. Inputs are the loss's tensors (tensor parameters "
    "such as `weight` are optional inputs; `grad_loss` is the upstream gradient); scalar "
    "parameters go in the request-level `parameters`. Outputs are `loss` and `grad_<input>`: "
    "list them in `outputs` to choose which gradients are computed. Tensors may be JSON "
    "(`data`) or binary (Triton's binary tensor extension: `Inference-Header-Content-Length` "
    "header, `binary_data_size` on inputs, `binary_data` on outputs, `binary_data_output`)."
)

_INFER_BODY = request_body("InferRequest", binary=True)


@router.get("/{name}", response_model=ModelMetadataResponse, responses=_ERRORS)
async def metadata(name: str, registry: RegistryDep) -> ModelMetadataResponse:
    """A loss as a model: its inputs and outputs, ``-1`` for dimensions of any size."""
    return model_metadata(registry.get(name).spec)


@router.get("/{name}/versions/{version}", response_model=ModelMetadataResponse, responses=_ERRORS)
async def metadata_version(name: str, version: str, registry: RegistryDep) -> ModelMetadataResponse:
    """Model metadata of one version (a loss's version is its distribution's)."""
    spec = registry.get(name).spec
    check_version(spec, version)
    return model_metadata(spec)


@router.get("/{name}/ready", response_model=ModelReadyResponse, responses=_ERRORS)
async def ready(name: str, registry: RegistryDep) -> ModelReadyResponse:
    """200 when the loss can be evaluated (404 unknown, 503 its plugin failed to load)."""
    return ModelReadyResponse(name=registry.get(name).spec.name, ready=True)


@router.get(
    "/{name}/versions/{version}/ready", response_model=ModelReadyResponse, responses=_ERRORS
)
async def ready_version(name: str, version: str, registry: RegistryDep) -> ModelReadyResponse:
    """Readiness of one version."""
    loss = registry.get(name)
    check_version(loss.spec, version)
    return ModelReadyResponse(name=loss.spec.name, ready=True)


@router.post(
    "/{name}/infer",
    response_model=InferResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
    description=_INFER_DOC,
)
async def infer(name: str, request: Request) -> Response:
    """Evaluate a loss (KServe v2 inference)."""
    return await run_inference(request, await resolve_loss(request, name))


@router.post(
    "/{name}/versions/{version}/infer",
    response_model=InferResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
    description=_INFER_DOC,
)
async def infer_version(name: str, version: str, request: Request) -> Response:
    """Evaluate one version of a loss (KServe v2 inference)."""
    loss = await resolve_loss(request, name)
    check_version(loss.spec, version)
    return await run_inference(request, loss)
