"""The ``/v1`` JSON API's request side on the server: a body validated into its pydantic model,
and its tensors decoded (the tensor codec itself is `lossreg.protocol.v1`, shared with the
client). Used by every ``/v1`` route that takes tensors (evaluate, compose, sweep)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import pydantic

from lossreg.protocol import Buffer, TypedArray
from lossreg.protocol.v1 import Form, decode_value, encode_value

from .errors import from_validation_error
from .inference import parse_json

__all__ = ["Form", "decode_inputs", "decode_value", "encode_value", "validate_body"]

M = TypeVar("M", bound=pydantic.BaseModel)


def validate_body(model: type[M], body: Buffer, what: str) -> M:
    """``body`` parsed as JSON and validated into ``model``; errors name the field (4xx)."""
    raw = parse_json(body, what)
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise from_validation_error(exc, what) from None


def decode_inputs(
    values: Mapping[str, Any],
) -> tuple[dict[str, TypedArray], dict[str, Form]]:
    """Each input as ``(array, KServe datatype)``, and the form it was sent in (answers are
    written back in that form)."""
    inputs: dict[str, TypedArray] = {}
    forms: dict[str, Form] = {}
    for name, value in values.items():
        array, datatype, form = decode_value(name, value)
        inputs[name] = (array, datatype)
        forms[name] = form
    return inputs, forms
