"""The ``/v1`` JSON API's tensors, for the server and the client alike: nested lists or typed
payloads in, the same form back out.

An input may be a number or (nested) lists, typed as ``torch.tensor`` would type them (floats ->
float32, integers -> int64, booleans -> bool); or ``{"dtype", "shape", "data"}``; or
``{"dtype", "shape", "b64"}`` with the raw little-endian bytes base64-encoded. Each gradient
comes back in the form its input was sent in, so a caller reads what it wrote.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Mapping
from typing import Any

import numpy as np
import pydantic

from ..errors import InvalidTensor, field_path
from .dtypes import TypedArray, datatype_from_torch_name, numpy_dtype, torch_name
from .schemas import TensorPayload
from .tensors import array_from_bytes, array_from_json, array_to_json_data, check_shape

__all__ = ["Form", "decode_value", "encode_value"]


class Form(enum.Enum):
    """How a tensor was written: we answer in kind."""

    NESTED = "nested"
    DATA = "data"
    B64 = "b64"


_NESTED_DTYPES = {"b": "BOOL", "i": "INT64", "u": "INT64", "f": "FP32"}


def _decode_nested(name: str, value: Any) -> TypedArray:
    try:
        parsed = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidTensor(
            f"input {name!r} is not a rectangular list of numbers ({exc})", field=name
        ) from None
    check_shape(name, list(parsed.shape))  # the rank and size limits of every other form
    if parsed.size == 0:
        parsed = parsed.astype(np.float32)
    datatype = _NESTED_DTYPES.get(parsed.dtype.kind)
    if datatype is None:
        raise InvalidTensor(
            f"input {name!r} must hold numbers or booleans, found {parsed.dtype} values "
            "(use {'dtype', 'shape', 'data'} for an explicit dtype)",
            field=name,
        )
    if parsed.dtype.kind == "u" and parsed.max() > np.iinfo(np.int64).max:
        raise InvalidTensor(f"input {name!r}: a value is out of range for int64", field=name)
    with np.errstate(over="ignore"):  # a float too big for float32 is refused below, not Inf
        array = np.ascontiguousarray(parsed.astype(numpy_dtype(datatype), copy=False))
    if datatype == "FP32" and not np.isfinite(array).all():
        raise InvalidTensor(
            f"input {name!r}: a value is out of range for float32 (send a float64 tensor)",
            field=name,
        )
    return array, datatype


def _payload_error(name: str, exc: pydantic.ValidationError) -> InvalidTensor:
    """The first problem of a malformed payload, naming its field."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(exc), "type": "invalid"}
    field = field_path(tuple(first.get("loc", ()))) or "body"
    what = f"tensor {name!r}"
    message = (
        f"{what}: unknown field {field!r}"
        if first.get("type") == "extra_forbidden"
        else f"{what}: {field}: {first.get('msg')}"
    )
    return InvalidTensor(message, field=name)


def decode_value(name: str, value: Any) -> tuple[np.ndarray, str, Form]:
    """A v1 tensor value -> (array, KServe datatype, the form it was written in).

    Raises:
        InvalidTensor / ShapeMismatch: malformed data, naming ``name``.
    """
    if isinstance(value, Mapping):
        try:
            payload = TensorPayload.model_validate(value)
        except pydantic.ValidationError as exc:
            raise _payload_error(name, exc) from None
        datatype = datatype_from_torch_name(payload.dtype, name)
        if (payload.data is None) == (payload.b64 is None):
            raise InvalidTensor(f"tensor {name!r}: send exactly one of data and b64", field=name)
        if payload.b64 is not None:
            try:
                raw = bytearray(base64.b64decode(payload.b64, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise InvalidTensor(
                    f"tensor {name!r}: b64 is not base64 ({exc})", field=name
                ) from None
            return array_from_bytes(name, datatype, payload.shape, raw), datatype, Form.B64
        return array_from_json(name, datatype, payload.shape, payload.data), datatype, Form.DATA
    if isinstance(value, (list, bool, int, float)):
        array, datatype = _decode_nested(name, value)
        return array, datatype, Form.NESTED
    raise InvalidTensor(
        f"tensor {name!r} must be a number, nested lists or a {{'dtype', 'shape', 'data'|'b64'}} "
        f"object, not {type(value).__name__}",
        field=name,
    )


def encode_value(array: np.ndarray, datatype: str, form: Form) -> Any:
    """An output array in ``form`` (scalars in nested form become plain numbers)."""
    if form is Form.NESTED:
        values = array_to_json_data(array, datatype).reshape(array.shape)
        return values.item() if values.ndim == 0 else values
    out: dict[str, Any] = {"dtype": torch_name(datatype), "shape": list(array.shape)}
    if form is Form.B64:
        raw = np.ascontiguousarray(array).data.cast("B") if array.size else b""
        out["b64"] = base64.b64encode(raw).decode("ascii")
    else:
        out["data"] = array_to_json_data(array, datatype)
    return out
