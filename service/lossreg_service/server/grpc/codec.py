"""gRPC messages <-> what the dataplane takes and gives (the gRPC side of `inference`).

A ``ModelInferRequest`` becomes the same wire dicts a REST body parses to (``name``,
``datatype``, ``shape``, ``data`` or raw bytes, ``parameters``), so both transports go through
one decoder (`inference.decode_entries`) with one set of checks and messages. Answers are sent
as raw tensors (``raw_output_contents``), which is what ``tritonclient.grpc``'s ``as_numpy``
reads. The extensions' answers are the REST pydantic models copied into their messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pydantic
from google.protobuf import json_format
from google.protobuf.message import Message

from lossreg.errors import InvalidRequest, InvalidTensor
from lossreg.protocol import InferRequest, TypedArray

from ...registry import LossSpec
from ..errors import from_validation_error
from ..inference import (
    NONFINITE,
    Decoded,
    decode_entries,
    flagged_outputs,
    selected_outputs,
)
from ..shm import SHM_BYTE_SIZE, SHM_OFFSET, SHM_REGION, SharedMemoryRegions, write_output
from .proto import grpc_service_pb2 as pb

M = TypeVar("M", bound=Message)

__all__ = ["decode_infer_request", "encode_infer_response", "from_parameters", "to_message"]

# Which InferTensorContents field carries each datatype (FP16/BF16 have none of their own: their
# values may come as fp32_contents and are rounded, or, as Triton expects, as raw bytes).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP16": "fp32_contents",
    "BF16": "fp32_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CONTENT_FIELDS = sorted(set(_CONTENTS.values()))


def from_parameter(value: pb.InferParameter) -> Any:
    """One ``InferParameter`` oneof -> its Python value (None when unset)."""
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


def from_parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any] | None:
    """A message's ``parameters`` map -> a dict (None when empty, as an absent JSON field)."""
    return {key: from_parameter(value) for key, value in parameters.items()} or None


def _set_parameter(target: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _contents(tensor: Any, datatype: str) -> list[Any]:
    """The values of an input sent in ``contents`` (the field its datatype uses)."""
    contents = tensor.contents
    wanted = _CONTENTS.get(datatype)
    present = [f for f in _CONTENT_FIELDS if len(getattr(contents, f))]
    stray = [f for f in present if f != wanted]
    if stray:
        hint = f"; {datatype} values go in {wanted}" if wanted else ""
        raise InvalidTensor(
            f"input {tensor.name!r} ({datatype}) carries values in {', '.join(stray)}{hint}",
            field=tensor.name,
        )
    if wanted is None:
        return []  # an unknown datatype: the decoder names it
    values = getattr(contents, wanted)
    if wanted == "bytes_contents":
        return [bytes(v) for v in values]
    return list(values)


def decode_infer_request(
    spec: LossSpec, request: pb.ModelInferRequest, shm: SharedMemoryRegions | None = None
) -> Decoded:
    """Check and decode a ``ModelInferRequest`` for ``spec``.

    Raises:
        InvalidRequest: ``raw_input_contents`` does not give every input its bytes.
        InvalidTensor / InvalidInput / ShapeMismatch / InvalidParameter: as over REST.
    """
    raws = list(request.raw_input_contents)
    in_shm = [SHM_REGION in tensor.parameters for tensor in request.inputs]
    carried = len(in_shm) - sum(in_shm)  # inputs whose values travel in the message
    if raws and len(raws) != carried:
        raise InvalidRequest(
            f"raw_input_contents has {len(raws)} entries for {carried} inputs not in shared "
            "memory: send every such input's bytes there, in order, or none (then values go "
            "in contents)",
            field="raw_input_contents",
        )
    entries: list[dict[str, Any]] = []
    binary: dict[str, memoryview] = {}
    raw_index = 0
    for tensor, shared in zip(request.inputs, in_shm):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        parameters = from_parameters(tensor.parameters)
        if parameters:
            entry["parameters"] = parameters
        if shared:
            pass  # the decoder reads it from its region
        elif raws:
            if tensor.HasField("contents") and any(
                len(getattr(tensor.contents, f)) for f in _CONTENT_FIELDS
            ):
                raise InvalidTensor(
                    f"input {tensor.name!r} has both raw_input_contents and contents; send one",
                    field=tensor.name,
                )
            binary[tensor.name] = memoryview(raws[raw_index])
            raw_index += 1
        else:
            entry["data"] = _contents(tensor, tensor.datatype)
        entries.append(entry)
    document = {
        "id": request.id or None,
        "parameters": from_parameters(request.parameters),
        "inputs": [{k: v for k, v in e.items() if k != "data"} for e in entries],
        "outputs": [
            {"name": o.name, "parameters": from_parameters(o.parameters)} for o in request.outputs
        ]
        or None,
    }
    try:
        parsed = InferRequest.model_validate(document)
    except pydantic.ValidationError as exc:
        raise from_validation_error(exc, "inference request") from None
    return decode_entries(spec, parsed, entries, binary, shm)


def encode_infer_response(
    spec: LossSpec,
    decoded: Decoded,
    loss: TypedArray,
    grads: Mapping[str, TypedArray],
    nonfinite: Sequence[str] = (),
) -> pb.ModelInferResponse:
    """The answer, every output as raw little-endian bytes in ``raw_output_contents``."""
    response = pb.ModelInferResponse(
        model_name=spec.name, model_version=spec.version or "1", id=decoded.request_id or ""
    )
    for (name, _), (array, datatype) in zip(
        decoded.plan.outputs, selected_outputs(decoded, loss, grads)
    ):
        output = response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if name in decoded.plan.shm:
            region, offset, window = decoded.plan.shm[name]
            written = write_output(name, array, window)
            output.parameters[SHM_REGION].string_param = region
            output.parameters[SHM_BYTE_SIZE].int64_param = written
            if offset:
                output.parameters[SHM_OFFSET].int64_param = offset
            response.raw_output_contents.append(b"")  # keeps raw outputs aligned by index
            continue
        wire = np.ascontiguousarray(array)
        if wire.dtype.byteorder == ">":
            wire = wire.astype(wire.dtype.newbyteorder("<"))
        response.raw_output_contents.append(wire.tobytes())
    flagged = flagged_outputs(decoded, nonfinite)
    if flagged:
        response.parameters[NONFINITE].string_param = ",".join(flagged)
    return response


def to_message(model: pydantic.BaseModel | Mapping[str, Any], message: M) -> M:
    """Copy a REST answer (pydantic model or dict) into its gRPC message (same field names)."""
    data = model.model_dump(exclude_none=True) if isinstance(model, pydantic.BaseModel) else model
    return json_format.ParseDict(dict(data), message, ignore_unknown_fields=True)
