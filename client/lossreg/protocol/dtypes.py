"""KServe v2 datatype names, numpy dtypes and torch dtype names, mapped both ways.

The wire is little-endian, as the Open Inference Protocol's binary extension says. ``BF16`` has
no numpy dtype: it travels as raw 2-byte words (``uint16``) which the server views as
``torch.bfloat16`` without a copy; `bf16_from_float` and `bf16_to_float` convert when a person
writes or reads BF16 values as JSON numbers. ``BYTES`` is not a loss input and is refused.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidTensor

__all__ = [
    "DATATYPES",
    "TypedArray",
    "bf16_from_float",
    "bf16_to_float",
    "datatype_from_numpy",
    "datatype_from_torch_name",
    "itemsize",
    "numpy_dtype",
    "torch_name",
]

# KServe datatype -> (numpy dtype used on the wire, torch dtype name)
_TABLE: dict[str, tuple[np.dtype, str]] = {
    "BOOL": (np.dtype("?"), "bool"),
    "INT8": (np.dtype("<i1"), "int8"),
    "INT16": (np.dtype("<i2"), "int16"),
    "INT32": (np.dtype("<i4"), "int32"),
    "INT64": (np.dtype("<i8"), "int64"),
    "UINT8": (np.dtype("<u1"), "uint8"),
    "UINT16": (np.dtype("<u2"), "uint16"),
    "UINT32": (np.dtype("<u4"), "uint32"),
    "UINT64": (np.dtype("<u8"), "uint64"),
    "FP16": (np.dtype("<f2"), "float16"),
    "BF16": (np.dtype("<u2"), "bfloat16"),  # raw bfloat16 words
    "FP32": (np.dtype("<f4"), "float32"),
    "FP64": (np.dtype("<f8"), "float64"),
}

DATATYPES: tuple[str, ...] = tuple(_TABLE)

TypedArray = tuple[np.ndarray, str]
"""An array and its KServe datatype: what the wire carries of a tensor (a ``BF16`` array holds
the ``uint16`` words, numpy having no bfloat16)."""
"""Every datatype the service accepts, in the protocol's spelling."""

_FROM_TORCH: dict[str, str] = {torch: kserve for kserve, (_, torch) in _TABLE.items()}
_FROM_NUMPY: dict[np.dtype, str] = {
    np_dtype.newbyteorder("="): kserve
    for kserve, (np_dtype, _) in _TABLE.items()
    if kserve != "BF16"  # uint16 words mean UINT16 unless the caller says BF16
}


def _entry(datatype: str, field: str | None) -> tuple[np.dtype, str]:
    try:
        return _TABLE[datatype]
    except (KeyError, TypeError):
        raise InvalidTensor(
            f"unsupported datatype {datatype!r}"
            + (f" for {field!r}" if field else "")
            + f"; use one of {', '.join(DATATYPES)}",
            field=field,
        ) from None


def numpy_dtype(datatype: str, field: str | None = None) -> np.dtype:
    """The numpy dtype a tensor of ``datatype`` has on the wire (``BF16``: ``uint16`` words).

    Raises:
        InvalidTensor: an unknown datatype (naming ``field``).
    """
    return _entry(datatype, field)[0]


def itemsize(datatype: str, field: str | None = None) -> int:
    """Bytes per element of ``datatype``."""
    return _entry(datatype, field)[0].itemsize


def torch_name(datatype: str, field: str | None = None) -> str:
    """``"FP32"`` -> ``"float32"``: the dtype names the registry's specs use."""
    return _entry(datatype, field)[1]


def datatype_from_torch_name(name: str, field: str | None = None) -> str:
    """``"float32"`` (or ``"torch.float32"``, or ``"FP32"``) -> ``"FP32"``."""
    key = str(name).removeprefix("torch.")
    if key in _TABLE:
        return key
    try:
        return _FROM_TORCH[key]
    except KeyError:
        raise InvalidTensor(
            f"unsupported dtype {name!r}"
            + (f" for {field!r}" if field else "")
            + f"; use one of {', '.join(_FROM_TORCH)}",
            field=field,
        ) from None


def datatype_from_numpy(dtype: np.dtype | type, field: str | None = None) -> str:
    """The datatype of a numpy array; ``ml_dtypes.bfloat16`` arrays map to ``BF16``."""
    dt = np.dtype(dtype)
    if dt.name == "bfloat16":  # ml_dtypes, as tritonclient uses for BF16
        return "BF16"
    try:
        return _FROM_NUMPY[dt.newbyteorder("=")]
    except KeyError:
        raise InvalidTensor(
            f"unsupported numpy dtype {dt}" + (f" for {field!r}" if field else ""), field=field
        ) from None


def bf16_from_float(values: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16 words (round to nearest even), as ``uint16``."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    words: np.ndarray = ((bits + rounding) >> 16).astype("<u2")
    nan = np.isnan(values)
    if nan.any():  # keep NaN a NaN whatever the rounding did to its payload
        words[np.broadcast_to(nan, words.shape)] = 0x7FC0
    return words


def bf16_to_float(words: np.ndarray) -> np.ndarray:
    """bfloat16 words (``uint16``) -> exact ``float32`` values."""
    bits = np.asarray(words, dtype="<u2").astype("<u4") << np.uint32(16)
    floats: np.ndarray = bits.view("<f4")  # little-endian on any host, as the wire is
    return floats
