"""KServe v2 inference: a request body -> what to compute and what to send back, and the answer.

A loss is a model. Its inputs are the loss's tensors (tensor parameters such as ``weight`` are
optional inputs; ``grad_loss`` carries the upstream gradient), its scalar parameters come in the
request-level ``parameters`` (protocol keys such as ``binary_data_output`` set aside), and its
outputs are ``loss`` and ``grad_<input>``. The requested outputs decide which gradients are
computed; with none listed, the loss and the gradient of every input differentiated by default
(predictions; a target only when its output is listed) are returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pydantic

from lossreg.errors import InvalidInput, InvalidParameter, InvalidRequest, InvalidTensor
from lossreg.protocol import (
    GRAD_LOSS,
    GRAD_PREFIX,
    LOSS,
    RESERVED_PARAMETER_PREFIX,
    RESERVED_PARAMETERS,
    Buffer,
    InferRequest,
    TypedArray,
    binary_data_size,
    decode_tensor,
    encode_tensor,
    frame_body,
    input_of,
    output_names,
    slice_binary_data,
    split_body,
    unknown_input,
    unknown_output,
)

from ..registry import LossSpec
from .errors import from_validation_error
from .shm import SHM_BYTE_SIZE, SHM_OFFSET, SHM_REGION, SharedMemoryRegions, write_output
from .shm import reference as shm_reference

__all__ = [
    "GRAD_LOSS",
    "Decoded",
    "OutputPlan",
    "decode_entries",
    "decode_request",
    "encode_response",
    "selected_outputs",
]

NONFINITE = "nonfinite"  # request parameter: "reject" | "allow"; response parameter: the outputs


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """Which outputs to send, in order, each in binary or JSON."""

    outputs: list[tuple[str, bool]]  # (name, binary)
    grad: list[str] | None  # inputs to differentiate; None: every differentiable one sent
    shm: dict[str, tuple[str, int, memoryview]] = dataclasses.field(default_factory=dict)
    # outputs written into shared memory: name -> (region, offset, its writable window)


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A decoded inference request."""

    request_id: str | None
    inputs: dict[str, TypedArray]
    grad_loss: TypedArray | None
    params: dict[str, Any]
    plan: OutputPlan
    nonfinite: str | None = None  # the request's choice; None: the server's default


def parse_json(data: Buffer, what: str = "request") -> Any:
    """orjson, with a 400 naming the body instead of a 500."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{what} body is not valid JSON: {exc}", field="body") from None


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _plan(
    spec: LossSpec, request: InferRequest, sent: set[str], shm: SharedMemoryRegions | None
) -> OutputPlan:
    params = request.parameters or {}
    binary_default = _is_true(params.get("binary_data_output"))
    differentiable = [t.name for t in spec.inputs + spec.tensor_params if t.differentiable]
    known = output_names(differentiable)
    if not request.outputs:
        by_default = [t.name for t in spec.inputs + spec.tensor_params if t.grad_by_default]
        grads = [n for n in differentiable if n in sent and n in by_default]
        return OutputPlan(
            [(n, binary_default) for n in [LOSS] + [GRAD_PREFIX + g for g in grads]], None
        )
    outputs: list[tuple[str, bool]] = []
    windows: dict[str, tuple[str, int, memoryview]] = {}
    for requested in request.outputs:
        if requested.name not in known:
            raise unknown_output(spec.name, requested.name, known)
        if any(requested.name == name for name, _ in outputs):
            raise InvalidInput(f"output {requested.name!r} requested twice", field=requested.name)
        flag = (requested.parameters or {}).get("binary_data")
        ref = shm_reference(requested.parameters, requested.name)
        if ref is not None:
            region, offset, size = ref
            if shm is None:
                raise InvalidTensor("system shared memory is not available", field=requested.name)
            view = shm.get(region, requested.name).view(offset, size, requested.name)
            windows[requested.name] = (region, offset, view)
            flag = False
        outputs.append((requested.name, binary_default if flag is None else _is_true(flag)))
    grad = [input_of(name) for name, _ in outputs if name != LOSS]
    return OutputPlan(outputs, grad, windows)


def loss_params(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Request-level parameters minus the protocol's reserved ones: the loss's parameters."""
    return {
        k: v
        for k, v in (parameters or {}).items()
        if k not in RESERVED_PARAMETERS and not k.startswith(RESERVED_PARAMETER_PREFIX)
    }


def nonfinite_mode(parameters: Mapping[str, Any] | None) -> str | None:
    """The request's ``nonfinite`` parameter (``reject`` or ``allow``), None when absent."""
    value = (parameters or {}).get(NONFINITE)
    if value is None or value in ("reject", "allow"):
        return value
    raise InvalidParameter(
        f"parameter 'nonfinite' must be 'reject' or 'allow', not {value!r}", field=NONFINITE
    )


def decode_request(
    spec: LossSpec,
    body: Buffer,
    header_length: str | None,
    shm: SharedMemoryRegions | None = None,
) -> Decoded:
    """Parse and check a v2 inference body (JSON, or JSON header + binary tensors, or tensors
    in registered shared-memory regions when ``shm`` is given).

    Raises:
        InvalidRequest: malformed framing or JSON, or a body that is not an inference request.
        InvalidTensor / ShapeMismatch: a tensor whose declared datatype, shape and data disagree.
        InvalidInput: an unknown or repeated input or output name.
    """
    head, tail = split_body(body, header_length)
    raw = parse_json(head, "inference request")
    if not isinstance(raw, dict):
        raise InvalidRequest("inference request must be a JSON object", field="body")
    try:
        request = InferRequest.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise from_validation_error(exc, "inference request") from None
    entries = raw["inputs"]
    binary = slice_binary_data(entries, tail, kind="input")
    return decode_entries(spec, request, entries, binary, shm)


def decode_entries(
    spec: LossSpec,
    request: InferRequest,
    entries: Sequence[Mapping[str, Any]],
    binary: Mapping[str, Buffer],
    shm: SharedMemoryRegions | None = None,
) -> Decoded:
    """Check and decode a parsed inference request, whatever its transport.

    Args:
        spec: the loss.
        request: the validated request (its inputs' ``data`` is not read here).
        entries: the inputs as wire dicts (``name``, ``datatype``, ``shape``, ``data`` or
            ``parameters``), in order.
        binary: input name -> its raw bytes, for inputs sent as bytes.
        shm: the registered shared-memory regions, when enabled.

    Raises:
        InvalidTensor / ShapeMismatch: a tensor whose declared datatype, shape and data disagree.
        InvalidInput: an unknown or repeated input or output name.
    """
    names = {t.name for t in spec.inputs + spec.tensor_params}
    takes_grad_loss = GRAD_LOSS not in names
    inputs: dict[str, TypedArray] = {}
    grad_loss = None
    for entry in entries:
        name = entry["name"]
        if name in inputs or (name == GRAD_LOSS and grad_loss is not None):
            raise InvalidInput(f"input {name!r} is sent twice", field=name)
        if name not in names and not (takes_grad_loss and name == GRAD_LOSS):
            raise unknown_input(spec.name, name, sorted(names), takes_grad_loss)
        raw = binary.get(name)
        if raw is None:
            raw = _shm_input(entry, name, shm)
        decoded = (decode_tensor(entry, raw), str(entry["datatype"]))
        if name == GRAD_LOSS and takes_grad_loss:
            grad_loss = decoded
        else:
            inputs[name] = decoded
    plan = _plan(spec, request, set(inputs), shm)
    return Decoded(
        request.id,
        inputs,
        grad_loss,
        loss_params(request.parameters),
        plan,
        nonfinite_mode(request.parameters),
    )


def _shm_input(
    entry: Mapping[str, Any], name: str, shm: SharedMemoryRegions | None
) -> memoryview | None:
    """The shared-memory window an input names, or None when it names none."""
    ref = shm_reference(entry.get("parameters"), name)
    if ref is None:
        return None
    if shm is None:
        raise InvalidTensor("system shared memory is not available", field=name)
    if entry.get("data") is not None or binary_data_size(entry) is not None:
        raise InvalidTensor(
            f"tensor {name!r} names a shared memory region and also carries data; send one",
            field=name,
        )
    region, offset, size = ref
    return shm.get(region, name).view(offset, size, name)


def _shm_output(
    name: str, array: np.ndarray, datatype: str, region: str, offset: int, window: memoryview
) -> dict[str, Any]:
    """Write an output into its shared-memory window; its response entry names the region."""
    written = write_output(name, array, window)
    parameters: dict[str, Any] = {SHM_REGION: region, SHM_BYTE_SIZE: written}
    if offset:
        parameters[SHM_OFFSET] = offset
    return {"name": name, "datatype": datatype, "shape": list(array.shape),
            "parameters": parameters}  # fmt: skip


def selected_outputs(
    decoded: Decoded,
    loss: TypedArray,
    grads: Mapping[str, TypedArray],
) -> list[TypedArray]:
    """The arrays (and datatypes) of the planned outputs, in the plan's order."""
    return [loss if name == LOSS else grads[input_of(name)] for name, _ in decoded.plan.outputs]


def flagged_outputs(decoded: Decoded, nonfinite: Sequence[str]) -> list[str]:
    """The sent outputs holding NaN/Inf: the response's ``nonfinite`` parameter."""
    sent = {name for name, _ in decoded.plan.outputs}
    return [name for name in nonfinite if name in sent]


def encode_response(
    spec: LossSpec,
    decoded: Decoded,
    loss: TypedArray,
    grads: Mapping[str, TypedArray],
    nonfinite: Sequence[str] = (),
) -> tuple[list[Buffer], int | None]:
    """The response chunks (JSON header, then binary outputs in order) and the header length
    to announce (None when every output is in the JSON).

    Outputs holding NaN/Inf (``nonfinite``) are listed, comma-separated, in the response's
    ``parameters.nonfinite``: in JSON they read ``null``, in binary they keep their bits.
    """
    outputs: list[dict[str, Any]] = []
    buffers: list[Buffer] = []
    for (name, binary), (array, datatype) in zip(
        decoded.plan.outputs, selected_outputs(decoded, loss, grads)
    ):
        if name in decoded.plan.shm:
            outputs.append(_shm_output(name, array, datatype, *decoded.plan.shm[name]))
            continue
        entry, raw = encode_tensor(name, array, binary=binary, datatype=datatype)
        outputs.append(entry)
        if raw is not None:
            buffers.append(raw)
    header: dict[str, Any] = {"model_name": spec.name, "model_version": spec.version or "1"}
    if decoded.request_id is not None:
        header["id"] = decoded.request_id
    flagged = flagged_outputs(decoded, nonfinite)
    if flagged:
        header["parameters"] = {NONFINITE: ",".join(flagged)}
    header["outputs"] = outputs
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    chunks, length = frame_body(head, buffers)
    any_binary = any(binary for _, binary in decoded.plan.outputs)
    return chunks, length if any_binary else None
