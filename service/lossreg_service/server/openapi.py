"""OpenAPI for routes that read their own body (streamed, capped, maybe compressed, maybe binary).

Such routes cannot declare a pydantic body parameter (FastAPI would parse the body itself), so
they point at their schema with `request_body`, and `install_openapi` puts the wire models of
`lossreg.protocol.schemas` into ``components.schemas``: the document stays complete and exact.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from lossreg.protocol import (
    ComposeRequest,
    EvaluateRequest,
    InferRequest,
    TensorPayload,
)
from lossreg.protocol.sweep import SweepRequest

from .auth import mark_auth_optional

__all__ = ["install_openapi", "request_body"]

_BODY_MODELS: tuple[type[BaseModel], ...] = (
    InferRequest,
    EvaluateRequest,
    ComposeRequest,
    TensorPayload,
    SweepRequest,
)
_REF = "#/components/schemas/{model}"


def request_body(model: str, *, binary: bool = False) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON body of ``model`` (and the binary framing if asked)."""
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": _REF.format(model=model)}},
    }
    if binary:
        content["application/octet-stream"] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "Binary tensor extension: a JSON "
                + model
                + " of Inference-Header-Content-Length bytes, then the inputs' raw bytes "
                "in order (any Content-Type).",
            }
        }
    return {"requestBody": {"required": True, "content": content}}


def install_openapi(app: FastAPI) -> None:
    """Generate the document once, with the body models added to its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in _BODY_MODELS:
            schema = model.model_json_schema(ref_template=_REF)
            for name, definition in schema.pop("$defs", {}).items():
                schemas.setdefault(name, definition)
            schemas[model.__name__] = schema
        if not app.state.settings.api_keys:
            mark_auth_optional(document)  # an open server: credentials are optional
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
