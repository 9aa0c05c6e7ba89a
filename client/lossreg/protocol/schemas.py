"""The wire schema: the one definition of every request and response body (pydantic).

Two families:

- KServe v2 / Open Inference Protocol (``/v2``): `InferRequest`, `InferResponse` and the health
  and metadata responses, as the protocol and Triton's binary tensor extension define them.
- lossreg's JSON API (``/v1``): the catalog (`LossSpecResponse`), `EvaluateRequest` /
  `EvaluateResponse` for one loss and `ComposeRequest` / `ComposeResponse` for a weighted sum.

Tensor values (``data``, v1 ``inputs``) are typed ``Any`` with a documented JSON schema: big nested
lists are converted by numpy (see `tensors`), never validated element by element by pydantic.
Every error body is an `ErrorResponse`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
)

from .limits import MAX_PARAMETERS, MAX_TENSORS, MAX_TERMS, Name

__all__ = [
    "ComposeRequest",
    "ComposeResponse",
    "ComposeTerm",
    "ErrorResponse",
    "EvaluateRequest",
    "EvaluateResponse",
    "InferInputTensor",
    "InferOutputTensor",
    "InferParameter",
    "InferRequest",
    "InferResponse",
    "LossListResponse",
    "LossSpecResponse",
    "MetadataTensor",
    "ModelMetadataResponse",
    "ModelReadyResponse",
    "RequestedOutput",
    "ServerLiveResponse",
    "ServerMetadataResponse",
    "ServerReadyResponse",
    "TensorPayload",
    "TensorSpecResponse",
    "TensorValue",
]

InferParameter = StrictBool | StrictInt | StrictFloat | str | None
"""A protocol parameter value (``$parameters`` maps names to these)."""
Parameters = Annotated[dict[Name, InferParameter], Field(max_length=MAX_PARAMETERS)]
"""A ``parameters`` object: at most `MAX_PARAMETERS` entries with bounded names."""

_NUMBERS = {"type": ["number", "boolean"]}
_NESTED = {
    "description": "Row-major values: a flat list, or nested lists matching the shape.",
    "type": "array",
    "items": {"anyOf": [_NUMBERS, {"type": "array"}]},
}
TensorData = Annotated[Any, WithJsonSchema(_NESTED)]
"""JSON tensor data: flat or nested lists of numbers (checked by numpy, not pydantic)."""

# -- KServe v2 / Open Inference Protocol ------------------------------------------------------


class ServerLiveResponse(BaseModel):
    """``GET /v2/health/live``."""

    live: bool


class ServerReadyResponse(BaseModel):
    """``GET /v2/health/ready``."""

    ready: bool


class ServerMetadataResponse(BaseModel):
    """``GET /v2``: the server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: list[str]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "lossreg",
                "version": "0.1.0",
                "extensions": ["binary_tensor_data", "parameters"],
            }
        }
    )


class MetadataTensor(BaseModel):
    """One input or output of a model: ``-1`` marks a dimension of any size."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, InferParameter] | None = None


class ModelMetadataResponse(BaseModel):
    """``GET /v2/models/{name}``: a loss seen as a model."""

    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "mse_loss",
                "versions": ["0.1.0"],
                "platform": "pytorch_loss",
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [-1]},
                    {"name": "target", "datatype": "FP32", "shape": [-1]},
                ],
                "outputs": [
                    {"name": "loss", "datatype": "FP32", "shape": [-1]},
                    {"name": "grad_input", "datatype": "FP32", "shape": [-1]},
                ],
            }
        }
    )


class ModelReadyResponse(BaseModel):
    """``GET /v2/models/{name}/ready``."""

    name: str
    ready: bool


class InferInputTensor(BaseModel):
    """An input tensor: values in ``data``, or ``parameters.binary_data_size`` bytes after the
    JSON header (binary tensor extension)."""

    name: Name
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: TensorData | None = None


class RequestedOutput(BaseModel):
    """An output the client wants; ``parameters.binary_data`` asks for it in binary."""

    name: Name
    parameters: Parameters | None = None


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``.

    Request-level ``parameters`` carry the loss's scalar parameters (``reduction``, ``margin``...)
    next to protocol keys such as ``binary_data_output``.
    """

    id: Name | None = None
    parameters: Parameters | None = None
    inputs: list[InferInputTensor] = Field(max_length=MAX_TENSORS)
    outputs: list[RequestedOutput] | None = Field(None, max_length=MAX_TENSORS)

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "42",
                "parameters": {"reduction": "sum"},
                "inputs": [
                    {
                        "name": "input",
                        "shape": [2, 3],
                        "datatype": "FP32",
                        "data": [1.0, 2.0, 0.5, 0.1, 0.2, 3.0],
                    },
                    {"name": "target", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                ],
                "outputs": [{"name": "loss"}, {"name": "grad_input"}],
            }
        }
    )


class InferOutputTensor(BaseModel):
    """An output tensor, with ``data`` or ``parameters.binary_data_size`` appended bytes."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, InferParameter] | None = None
    data: TensorData | None = None


class InferResponse(BaseModel):
    """The answer to an `InferRequest`: ``loss`` and the requested ``grad_<input>`` outputs."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, InferParameter] | None = None
    outputs: list[InferOutputTensor]

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "example": {
                "model_name": "cross_entropy",
                "model_version": "0.1.0",
                "id": "42",
                "outputs": [
                    {"name": "loss", "shape": [], "datatype": "FP32", "data": [1.234]},
                    {
                        "name": "grad_input",
                        "shape": [2, 3],
                        "datatype": "FP32",
                        "data": [0.05, -0.41, 0.36, 0.02, 0.06, -0.08],
                    },
                ],
            }
        },
    )


# -- lossreg JSON API (/v1) --------------------------------------------------------------------


class TensorPayload(BaseModel):
    """A typed tensor: ``dtype`` and ``shape`` with ``data`` (JSON numbers) or ``b64`` (base64
    of the raw little-endian bytes; bfloat16 as 2-byte words)."""

    dtype: str = Field(description="torch dtype name: float32, float64, int64, bool, bfloat16...")
    shape: list[int]
    data: TensorData | None = None
    b64: str | None = Field(None, description="base64 of the raw little-endian bytes")

    model_config = ConfigDict(
        json_schema_extra={"example": {"dtype": "float64", "shape": [2], "data": [0.5, 1.5]}}
    )


_TENSOR_VALUE_SCHEMA = {
    "description": (
        "A tensor: a number, (nested) lists of numbers (floats -> float32, integers -> int64, "
        "booleans -> bool, as torch.tensor does), or a TensorPayload with an explicit dtype."
    ),
    "anyOf": [
        _NUMBERS,
        _NESTED,
        TensorPayload.model_json_schema(),
    ],
}
TensorValue = Annotated[Any, WithJsonSchema(_TENSOR_VALUE_SCHEMA)]
"""A v1 tensor: a number, nested lists, or a `TensorPayload` dict (converted by numpy)."""

NonFiniteMode = Literal["reject", "allow"]
_NONFINITE_MODE_DOC = (
    "NaN/Inf in the inputs or results: 'reject' (422 non_finite) or 'allow' (computed; the "
    "response lists the non-finite outputs); omitted: the server's LOSSREG_NONFINITE"
)
_NONFINITE_DOC = (
    "outputs holding NaN or Inf ('loss', 'grad_<input>'); in JSON such values read null"
)


class TensorSpecResponse(BaseModel):
    """One tensor a loss takes (input or tensor parameter)."""

    name: str
    dtypes: list[str]
    differentiable: bool
    optional: bool
    shape: str | None = Field(None, description="dimension symbols, e.g. 'N C *S'")
    cast: str | None = None
    doc: str = ""
    grad_by_default: bool = Field(
        True, description="whether its gradient is computed when a request names none"
    )


class LossSpecResponse(BaseModel):
    """The full description of a registered loss (``GET /v1/losses/{name}``)."""

    name: str
    qualified_name: str
    summary: str
    doc: str
    inputs: list[TensorSpecResponse]
    tensor_params: list[TensorSpecResponse]
    params_schema: dict[str, Any] = Field(description="JSON schema of the scalar parameters")
    tags: list[str]
    style: str
    entry_point: str
    distribution: str | None
    version: str | None
    available: bool
    error: str | None = None
    loss_shape: str | None = Field(
        None, description="the loss's shape, e.g. 'N' (one value per sample); None: undeclared"
    )


class LossListResponse(BaseModel):
    """``GET /v1/losses``: the matching specs, in natural name order."""

    losses: list[LossSpecResponse]
    count: int


class EvaluateRequest(BaseModel):
    """``POST /v1/losses/{name}/evaluate``: value and gradients of one loss."""

    inputs: dict[Name, TensorValue] = Field(
        description="tensors by input name; tensor parameters (weight...) included",
        max_length=MAX_TENSORS,
    )
    params: dict[Name, Any] = Field(
        default_factory=dict, description="scalar parameters", max_length=MAX_PARAMETERS
    )
    grad: list[Name] | None = Field(
        None,
        description="inputs to differentiate; omitted: every input sent that is differentiated "
        "by default (predictions; a target only when named)",
        max_length=MAX_TENSORS,
    )
    grad_loss: TensorValue | None = Field(
        None, description="upstream gradient, shaped like the loss (non-scalar losses)"
    )
    nonfinite: NonFiniteMode | None = Field(None, description=_NONFINITE_MODE_DOC)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "inputs": {"input": [[2.0, 0.5, -1.0]], "target": [0]},
                "params": {"reduction": "mean"},
                "grad": ["input"],
            }
        },
    )


class EvaluateResponse(BaseModel):
    """The loss value (a number, or nested lists for ``reduction='none'``) and gradients.

    Each gradient comes back in the form its input was sent in (nested lists, or a
    `TensorPayload` with ``data`` or ``b64``).
    """

    name: str
    loss: TensorValue
    dtype: str
    shape: list[int]
    grads: dict[str, TensorValue] = Field(default_factory=dict)
    nonfinite: list[str] = Field(default_factory=list, description=_NONFINITE_DOC)

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "cross_entropy",
                "loss": 0.3185,
                "dtype": "float32",
                "shape": [],
                "grads": {"input": [[-0.2726, 0.1617, 0.1109]]},
            }
        }
    )


class ComposeTerm(BaseModel):
    """One term of a composition: ``weight * loss(inputs, params)``."""

    loss: Name = Field(description="registry name (bare or 'distribution:name')")
    weight: float = 1.0
    params: dict[Name, Any] = Field(default_factory=dict, max_length=MAX_PARAMETERS)
    label: Name | None = Field(None, description="key of this term in the response (default: loss)")

    model_config = ConfigDict(extra="forbid")


class ComposeRequest(BaseModel):
    """``POST /v1/evaluate``: several losses on the same inputs, gradient of the weighted sum."""

    terms: list[ComposeTerm] = Field(min_length=1, max_length=MAX_TERMS)
    inputs: dict[Name, TensorValue] = Field(max_length=MAX_TENSORS)
    grad: list[Name] | None = Field(None, max_length=MAX_TENSORS)
    nonfinite: NonFiniteMode | None = Field(None, description=_NONFINITE_MODE_DOC)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "terms": [
                    {"loss": "cross_entropy", "weight": 1.0},
                    {"loss": "nll_loss", "weight": 0.5, "label": "nll"},
                ],
                "inputs": {"input": [[2.0, 0.5, -1.0]], "target": [0]},
                "grad": ["input"],
            }
        },
    )


class ComposeResponse(BaseModel):
    """The weighted total, each term's value, and the gradient of the total."""

    loss: float | None = Field(description="the weighted total (null when not finite)")
    terms: dict[str, float | None]
    weights: dict[str, float]
    grads: dict[str, TensorValue] = Field(default_factory=dict)
    nonfinite: list[str] = Field(default_factory=list, description=_NONFINITE_DOC)

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "loss": 0.6,
                "terms": {"cross_entropy": 0.3, "nll": 0.6},
                "weights": {"cross_entropy": 1.0, "nll": 0.5},
                "grads": {"input": [[-0.3, 0.2, 0.1]]},
            }
        }
    )


class ErrorResponse(BaseModel):
    """Every error: ``error`` is the protocol's message string; the rest is machine-readable."""

    error: str
    code: str = Field(description="lossreg.errors code, e.g. loss_not_found, invalid_tensor")
    field: str | None = Field(None, description="the request field at fault, when there is one")

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "error": "no loss named 'cross_entropyy'; did you mean 'cross_entropy'?",
                "code": "loss_not_found",
                "field": "name",
                "suggestions": ["cross_entropy"],
            }
        },
    )
