"""The wire layer shared by the server and the client (numpy, pydantic and orjson only).

- `schemas`: the pydantic models of every request and response body.
- `dtypes`: KServe datatype names <-> numpy dtypes <-> torch dtype names.
- `binary`: Triton's binary tensor extension (JSON header + raw bytes) framing.
- `tensors`: wire tensors <-> numpy arrays, with the size and shape checks.
- `names`: output and input names (``loss``, ``grad_<input>``, ``grad_loss``) and their errors.
- `v1`: the ``/v1`` JSON API's tensor codec (nested lists, typed data, base64).
- `extensions`: statistics, model configuration and repository index schemas.
"""

from __future__ import annotations

from .binary import (
    HEADER_LENGTH,
    Buffer,
    announced_header_length,
    binary_data_size,
    encode_body,
    frame_body,
    parse_header_length,
    slice_binary_data,
    split_body,
)
from .dtypes import (
    DATATYPES,
    TypedArray,
    bf16_from_float,
    bf16_to_float,
    datatype_from_numpy,
    datatype_from_torch_name,
    itemsize,
    numpy_dtype,
    torch_name,
)
from .extensions import *  # noqa: F403
from .extensions import __all__ as _extension_names
from .names import (
    GRAD_LOSS,
    GRAD_PREFIX,
    LOSS,
    grad_output,
    input_of,
    output_names,
    unknown_input,
    unknown_output,
)
from .schemas import *  # noqa: F403
from .schemas import __all__ as _schema_names
from .tensors import (
    array_from_bytes,
    array_from_json,
    array_to_json_data,
    check_shape,
    decode_tensor,
    encode_tensor,
)

RESERVED_PARAMETERS: frozenset[str] = frozenset(
    {
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "headers",
        "binary_data_output",
        "nonfinite",  # lossreg's own: "reject" | "allow" NaN/Inf for this request
    }
)
"""Request-level parameters the protocol, Triton and lossreg reserve; never loss parameters."""
RESERVED_PARAMETER_PREFIX = "triton_"

__all__ = [
    "DATATYPES",
    "GRAD_LOSS",
    "GRAD_PREFIX",
    "HEADER_LENGTH",
    "LOSS",
    "RESERVED_PARAMETERS",
    "RESERVED_PARAMETER_PREFIX",
    "TypedArray",
    "Buffer",
    "announced_header_length",
    "array_from_bytes",
    "array_from_json",
    "array_to_json_data",
    "bf16_from_float",
    "bf16_to_float",
    "binary_data_size",
    "check_shape",
    "datatype_from_numpy",
    "datatype_from_torch_name",
    "decode_tensor",
    "encode_body",
    "encode_tensor",
    "frame_body",
    "grad_output",
    "input_of",
    "itemsize",
    "numpy_dtype",
    "output_names",
    "parse_header_length",
    "slice_binary_data",
    "split_body",
    "torch_name",
    "unknown_input",
    "unknown_output",
    *_schema_names,
    *_extension_names,
]
