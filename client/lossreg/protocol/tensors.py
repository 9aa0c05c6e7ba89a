"""Tensor codec: wire tensors (JSON ``data`` or binary bytes) <-> numpy arrays.

Every check a declared tensor needs lives here, so the server and the client reject the same
things with the same messages: the datatype is known, the shape is a list of non-negative
integers, the byte size equals ``prod(shape) * itemsize``, the JSON elements number
``prod(shape)``, and their values fit the datatype (no silent truncation of ``1.5`` to ``1``).

Big JSON ``data`` is converted with numpy straight from the parsed lists, never through pydantic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidTensor, ShapeMismatch
from .binary import Buffer
from .dtypes import bf16_from_float, bf16_to_float, datatype_from_numpy, numpy_dtype

__all__ = [
    "array_from_bytes",
    "array_from_json",
    "array_to_json_data",
    "check_shape",
    "decode_tensor",
    "encode_tensor",
]


MAX_DIMS = 32
"""Most dimensions a tensor may declare (numpy's own limit is 64)."""
MAX_ELEMENTS = 2**24
"""Most elements the non-zero sizes of an EMPTY shape may multiply to. A non-empty tensor is
bounded by the body cap (its bytes travel); an empty one carries no bytes, yet losses allocate
per-sample and per-class buffers from its other sizes ([1, 2**26, 0] once cost 2.4 GB)."""


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A declared shape as a tuple of non-negative ints that numpy and torch can hold.

    Raises:
        InvalidTensor: not a list of non-negative integers, more than `MAX_DIMS` dimensions,
            or an empty shape whose other sizes multiply past `MAX_ELEMENTS`, naming the tensor.
    """
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidTensor(
            f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}",
            field=name,
        )
    if len(shape) > MAX_DIMS:
        raise InvalidTensor(
            f"tensor {name!r}: {len(shape)} dimensions; at most {MAX_DIMS} are supported",
            field=name,
        )
    if 0 in shape and math.prod(d for d in shape if d) > MAX_ELEMENTS:  # else: size checks
        raise InvalidTensor(
            f"tensor {name!r}: shape {list(shape)} is too large (an empty tensor's other sizes "
            f"may multiply to at most {MAX_ELEMENTS})",
            field=name,
        )
    return tuple(shape)


def _count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def array_from_bytes(name: str, datatype: str, shape: Any, raw: Buffer) -> np.ndarray:
    """View raw little-endian bytes as an array of ``shape``, without copying.

    The array is writable exactly when ``raw`` is (a ``bytearray`` or a view of one). ``BF16``
    comes back as ``uint16`` words.

    Raises:
        InvalidTensor: unknown datatype, bad shape, or a byte size other than shape x itemsize.
    """
    dtype = numpy_dtype(datatype, name)
    dims = check_shape(name, shape)
    expected = _count(dims) * dtype.itemsize
    size = len(memoryview(raw).cast("B")) if not isinstance(raw, (bytes, bytearray)) else len(raw)
    if size != expected:
        raise InvalidTensor(
            f"tensor {name!r}: {size} bytes of binary data, but shape {list(dims)} of {datatype} "
            f"needs {expected} ({_count(dims)} elements x {dtype.itemsize} bytes)",
            field=name,
        )
    if expected == 0:
        return np.zeros(dims, dtype=dtype)
    if datatype == "BOOL" and np.frombuffer(raw, dtype=np.uint8).max() > 1:
        raise InvalidTensor(
            f"tensor {name!r}: BOOL bytes must be 0 or 1 (a byte holds one element)", field=name
        )
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


_KINDS = {"b": "boolean", "i": "integer", "u": "integer", "f": "floating-point"}


def array_from_json(name: str, datatype: str, shape: Any, data: Any) -> np.ndarray:
    """Convert JSON ``data`` (flat or nested, row-major) into a fresh array of ``shape``.

    Raises:
        InvalidTensor: unknown datatype, bad shape, ragged or non-numeric data, values of the
            wrong kind (a float for an integer datatype) or out of the datatype's range.
        ShapeMismatch: the element count differs from the shape's.
    """
    dtype = numpy_dtype(datatype, name)
    dims = check_shape(name, shape)
    if isinstance(data, (bool, int, float)):
        data = [data]
    if not isinstance(data, list):
        raise InvalidTensor(
            f"tensor {name!r}: data must be a list of numbers, got {type(data).__name__}",
            field=name,
        )
    try:
        parsed = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise InvalidTensor(
            f"tensor {name!r}: data is not a rectangular list of numbers ({exc})", field=name
        ) from None
    if parsed.size != _count(dims):
        raise ShapeMismatch(
            f"tensor {name!r}: {parsed.size} elements in data but shape {list(dims)} holds "
            f"{_count(dims)}",
            field=name,
        )
    if parsed.size == 0:
        return np.zeros(dims, dtype=dtype)
    kind = parsed.dtype.kind
    if kind not in _KINDS:
        raise InvalidTensor(
            f"tensor {name!r}: data must hold numbers (or booleans), found {parsed.dtype} values",
            field=name,
        )
    if datatype == "BF16":
        words = bf16_from_float(_to_float(name, datatype, parsed, np.dtype("<f4")))
        _check_finite(name, datatype, parsed, bf16_to_float(words))
        return words.reshape(dims)
    want = dtype.kind
    if want == "u" and kind == "f":
        parsed = _exact_integers(parsed, data)
        kind = parsed.dtype.kind
    allowed = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}[want]
    if kind not in allowed:
        raise InvalidTensor(
            f"tensor {name!r}: {datatype} data must be {_KINDS[want]}, found {_KINDS[kind]} values",
            field=name,
        )
    if want in "iu" and kind in "iu":
        info = np.iinfo(dtype)
        low, high = parsed.min(), parsed.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidTensor(
                f"tensor {name!r}: value {int(bad)} is out of range for {datatype} "
                f"[{info.min}, {info.max}]",
                field=name,
            )
    if want == "f":
        return np.ascontiguousarray(_to_float(name, datatype, parsed, dtype)).reshape(dims)
    return np.ascontiguousarray(parsed.astype(dtype, copy=False)).reshape(dims)


def _exact_integers(parsed: np.ndarray, data: Any) -> np.ndarray:
    """numpy reads ints past 2**63 mixed with small ones as float64, losing digits: when every
    value is an int in uint64's range, read them again exactly."""
    values = np.asarray(data, dtype=object).reshape(-1)
    if not all(isinstance(v, int) for v in values) or min(values) < 0:
        return parsed
    if max(values) > np.iinfo(np.uint64).max:
        return parsed
    return np.array(values.tolist(), dtype=np.uint64).reshape(parsed.shape)


def _to_float(name: str, datatype: str, parsed: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast JSON numbers to a float dtype; one too big for it is refused, not turned to Inf."""
    with np.errstate(over="ignore"):
        out = parsed.astype(dtype, copy=False)
    _check_finite(name, datatype, parsed, out)
    return out


def _check_finite(name: str, datatype: str, parsed: np.ndarray, cast: np.ndarray) -> None:
    # JSON numbers are always finite, so a non-finite result can only be an overflow.
    finite = np.isfinite(cast)
    if not finite.all():
        bad = parsed.reshape(-1)[~finite.reshape(-1)][0].item()
        raise InvalidTensor(
            f"tensor {name!r}: value {bad!r} is out of range for {datatype}", field=name
        )


def decode_tensor(tensor: Mapping[str, Any], raw: Buffer | None = None) -> np.ndarray:
    """Decode one wire tensor (``name``, ``datatype``, ``shape``, ``data`` or binary bytes)."""
    name = str(tensor.get("name"))
    datatype = tensor.get("datatype")
    shape = tensor.get("shape")
    if raw is not None:
        if tensor.get("data") is not None:
            raise InvalidTensor(
                f"tensor {name!r} has both binary_data_size and JSON data; send one", field=name
            )
        return array_from_bytes(name, str(datatype), shape, raw)
    if "data" not in tensor or tensor["data"] is None:
        raise InvalidTensor(
            f"tensor {name!r} has no data: send 'data' in the JSON or binary_data_size with the "
            "bytes after the header",
            field=name,
        )
    return array_from_json(name, str(datatype), shape, tensor["data"])


def array_to_json_data(array: np.ndarray, datatype: str | None = None) -> np.ndarray:
    """A flat array ready for ``orjson`` (``OPT_SERIALIZE_NUMPY``); BF16 words become floats."""
    flat = np.ascontiguousarray(array).reshape(-1)
    if datatype == "BF16" or array.dtype.name == "bfloat16":
        return bf16_to_float(flat.view("<u2"))
    return flat


def encode_tensor(
    name: str,
    array: np.ndarray,
    *,
    binary: bool,
    datatype: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], memoryview | None]:
    """The wire entry for ``array`` and, in binary mode, the bytes to append after the header.

    Args:
        name: the tensor's name.
        array: the values (``uint16`` words with ``datatype="BF16"`` for bfloat16).
        binary: put the bytes after the header (True) or the values in JSON ``data``.
        datatype: override the datatype derived from ``array.dtype`` (needed for BF16 words).
        parameters: extra tensor parameters.
    """
    datatype = datatype or datatype_from_numpy(array.dtype, name)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    params = dict(parameters or {})
    if binary:
        wire = np.ascontiguousarray(array)
        if wire.dtype.byteorder == ">":
            wire = wire.astype(wire.dtype.newbyteorder("<"))
        raw = wire.data.cast("B") if wire.size else memoryview(b"")
        params["binary_data_size"] = len(raw)
        entry["parameters"] = params
        return entry, raw
    if params:
        entry["parameters"] = params
    entry["data"] = array_to_json_data(array, datatype)
    return entry, None
