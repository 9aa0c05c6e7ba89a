"""Building request bodies and reading answers: the client's side of the wire, sans I/O.

`Client` and `AsyncClient` differ only in how they wait; everything they send and everything
they read back goes through here, so the two stay byte-for-byte the same.

- Tensors travel by the KServe v2 binary extension: a JSON header (names, dtypes, shapes,
  ``binary_data_size``) followed by each tensor's raw bytes, sent as ``memoryview`` chunks of the
  caller's own memory.
- The answer is read into one aligned, writable buffer; every output is a NumPy view of it.
- An error answer becomes the exception class the server raised (`error_from_payload`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import httpx
import numpy as np
import orjson

from ._arrays import Origin, WireArray, from_wire, is_torch_tensor
from ._models import ComposeResult, EvaluateResult
from .errors import (
    InvalidParameter,
    LossRegError,
    ServerBusy,
    TimeoutError,
    TransportError,
    error_from_payload,
)
from .protocol import (
    GRAD_LOSS,
    HEADER_LENGTH,
    LOSS,
    Buffer,
    ComposeResponse,
    InferResponse,
    announced_header_length,
    decode_tensor,
    encode_tensor,
    frame_body,
    input_of,
    output_names,
    slice_binary_data,
    split_body,
)
from .protocol.v1 import Form, decode_value, encode_value

__all__ = [
    "Answer",
    "BodyReader",
    "Chunks",
    "InferCall",
    "compose_body",
    "error_from_answer",
    "infer_body",
    "map_httpx_error",
    "new_buffer",
    "parse_compose",
    "parse_infer",
    "scalar_params",
]

_ALIGN = 64  # tensor data in answers starts on a 64-byte boundary (any dtype, SIMD loads)

Body = np.ndarray[tuple[int], np.dtype[np.uint8]]
"""An answer's body: one aligned, writable buffer of bytes (outputs are views of it)."""

Scalar = bool | int | float | str | None
"""A loss parameter as JSON carries it (KServe parameters are only these)."""


class Answer(NamedTuple):
    """A successful answer: its response (headers, status) and its whole body."""

    response: httpx.Response
    body: Body


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A request body made of buffers sent one after the other, never joined by us."""

    def __init__(self, chunks: Sequence[Buffer]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks  # type: ignore[misc]  # memoryviews: h11 writes any bytes-like

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk  # type: ignore[misc]


@dataclasses.dataclass(frozen=True)
class InferCall:
    """A prepared ``/v2/models/{name}/infer`` request and what reading its answer needs."""

    name: str
    chunks: list[Buffer]
    header_length: int
    origins: dict[str, Origin]
    loss_origin: Origin

    @property
    def size(self) -> int:
        return sum(len(memoryview(c).cast("B")) for c in self.chunks)

    @property
    def headers(self) -> dict[str, str]:
        return {
            HEADER_LENGTH: str(self.header_length),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(self.size),
            "Accept-Encoding": "identity",  # tensors barely compress; do not spend CPU on it
        }


def scalar_params(params: Mapping[str, object] | None, *, kserve: bool) -> dict[str, Any]:
    """Loss parameters as JSON values: numpy and one-element torch scalars become numbers.

    KServe parameters can only be booleans, numbers and strings (``kserve=True`` enforces it;
    /v1 terms may carry lists and objects too). Called once per request, before checks.
    """
    out: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
            value = value.item()
        elif is_torch_tensor(value) and value.numel() == 1:
            value = value.item()
        if kserve and not (value is None or isinstance(value, (bool, int, float, str))):
            raise InvalidParameter(
                f"parameter {key!r}: a KServe request parameter must be a bool, number or "
                f"string, got {type(value).__name__}",
                field=key,
            )
        out[key] = value
    return out


def loss_origin(wires: Mapping[str, WireArray]) -> Origin:
    """Where the loss goes back to: the first floating torch input, else any input."""
    origins = [w.origin for w in wires.values()]
    for origin in origins:
        if origin.kind == "torch" and origin.dtype.is_floating_point:
            return origin
    for origin in origins:
        if origin.kind == "torch":
            return origin
    return origins[0] if origins else Origin("numpy", None, np.dtype("float32"))


def infer_body(
    name: str,
    wires: Mapping[str, WireArray],
    params: Mapping[str, Scalar],
    grad: Sequence[str] | None,
    grad_loss: WireArray | None,
) -> InferCall:
    """The framed binary request: JSON header, then each input's bytes, in order.

    ``params`` are already JSON scalars (`scalar_params` with ``kserve=True``).
    """
    inputs: list[dict[str, Any]] = []
    buffers: list[Buffer] = []
    items = list(wires.items()) + ([(GRAD_LOSS, grad_loss)] if grad_loss is not None else [])
    for input_name, wire in items:
        entry, raw = encode_tensor(input_name, wire.array, binary=True, datatype=wire.datatype)
        inputs.append(entry)
        assert raw is not None
        buffers.append(raw)
    parameters: dict[str, Scalar] = dict(params)
    header: dict[str, Any] = {"inputs": inputs}
    if grad is None:
        parameters["binary_data_output"] = True
    else:
        header["outputs"] = [
            {"name": out, "parameters": {"binary_data": True}}
            for out in output_names(dict.fromkeys(grad))
        ]
    if parameters:
        header["parameters"] = parameters
    chunks, header_length = frame_body(header, buffers)
    origins = {n: w.origin for n, w in wires.items()}
    return InferCall(name, chunks, header_length, origins, loss_origin(wires))


def _writable_aligned(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Outputs are views of our buffer; one whose start is not aligned is copied once."""
    return array if array.flags.aligned and array.flags.writeable else array.copy()


def parse_infer(call: InferCall, answer: Answer) -> EvaluateResult:
    """The loss and gradients of an infer answer, in the caller's kind, device and dtype.

    The header is validated once, by pydantic; the binary codec then reads the validated
    outputs' fields in place (``vars``: no dump back to dicts).
    """
    try:
        header_length = answer.response.headers.get(HEADER_LENGTH)
        header_view, data = split_body(answer.body.data, header_length)
        outputs = InferResponse.model_validate(orjson.loads(header_view)).outputs
        raws = slice_binary_data([vars(o) for o in outputs], data, kind="output")
        arrays = {o.name: decode_tensor(vars(o), raws.get(o.name)) for o in outputs}
    except (LossRegError, ValueError) as exc:
        raise TransportError(f"malformed answer from the server for {call.name!r}: {exc}") from exc
    datatypes = {o.name: o.datatype for o in outputs}
    if LOSS not in arrays:
        raise TransportError(f"the server's answer for {call.name!r} has no {LOSS!r} output")
    loss = from_wire(
        _writable_aligned(arrays.pop(LOSS)), datatypes[LOSS], call.loss_origin, cast=False
    )
    grads: dict[str, Any] = {}
    for out, array in arrays.items():
        input_name = input_of(out)
        origin = call.origins.get(input_name, call.loss_origin)
        grads[input_name] = from_wire(_writable_aligned(array), datatypes[out], origin, cast=True)
    return EvaluateResult(call.name, loss, grads)


def tensor_payload(wire: WireArray) -> dict[str, Any]:
    """A ``TensorPayload`` carrying raw bytes as base64 (the /v1 JSON API's binary form)."""
    payload: dict[str, Any] = encode_value(wire.array, wire.datatype, Form.B64)
    return payload


def compose_body(
    terms: Sequence[Mapping[str, Any]], wires: Mapping[str, WireArray], grad: Sequence[str] | None
) -> bytes:
    """The ``POST /v1/evaluate`` JSON body (tensors as base64 payloads)."""
    body: dict[str, Any] = {
        "terms": [dict(t) for t in terms],
        "inputs": {name: tensor_payload(w) for name, w in wires.items()},
    }
    if grad is not None:
        body["grad"] = list(grad)
    return orjson.dumps(body)


def parse_compose(body: Body, wires: Mapping[str, WireArray]) -> ComposeResult:
    """The total, terms and gradients of a ``/v1/evaluate`` answer, in the caller's kind."""
    try:
        answer = ComposeResponse.model_validate(orjson.loads(body.data))
        grads: dict[str, Any] = {}
        for name, value in answer.grads.items():
            wire = wires.get(name)
            array, datatype, _ = decode_value(name, value)
            origin = wire.origin if wire is not None else loss_origin(wires)
            grads[name] = from_wire(array, datatype, origin, cast=True)
    except (LossRegError, ValueError) as exc:
        raise TransportError(f"malformed answer from the server to a composition: {exc}") from exc
    origin = loss_origin(wires)
    loss = from_wire(np.array(answer.loss, dtype=np.float64), "FP64", origin, cast=False)
    if origin.kind == "torch" and origin.dtype.is_floating_point:
        loss = loss.to(origin.dtype)
    return ComposeResult(loss, dict(answer.terms), dict(answer.weights), grads)


def new_buffer(size: int, header_length: int | None) -> Body:
    """A writable ``uint8`` buffer for a body whose binary part starts 64-byte aligned."""
    raw = np.empty(size + _ALIGN, dtype=np.uint8)
    offset = (-(raw.ctypes.data + (header_length or 0))) % _ALIGN
    return raw[offset : offset + size]


class BodyReader:
    """Collects an answer's chunks straight into one aligned, writable buffer.

    With a known ``Content-Length`` (no compression) each chunk is copied once, into place;
    otherwise the chunks are gathered and copied at the end.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._header_length = announced_header_length(response.headers.get(HEADER_LENGTH))
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        length = response.headers.get("Content-Length", "")
        known = encoding in ("", "identity") and length.strip().isdigit()
        self._size = int(length) if known else None
        self._body = None if self._size is None else new_buffer(self._size, self._header_length)
        self._parts: list[bytes] = []
        self._pos = 0

    def feed(self, chunk: bytes) -> None:
        if self._body is None:
            self._parts.append(chunk)
            return
        if self._pos == 0 and self._adopt(chunk):
            return
        end = self._pos + len(chunk)
        if end > len(self._body):
            raise TransportError(f"the answer is longer than its Content-Length {self._size}")
        self._body[self._pos : end] = np.frombuffer(chunk, dtype=np.uint8)
        self._pos = end

    def _adopt(self, chunk: object) -> bool:
        """Take a chunk that is the whole answer, writable and aligned, as the buffer itself
        (the transport reads answers that way): no copy."""
        if not isinstance(chunk, memoryview) or chunk.readonly or chunk.nbytes != self._size:
            return False
        body = np.frombuffer(chunk, dtype=np.uint8)
        if (body.ctypes.data + (self._header_length or 0)) % _ALIGN:
            return False
        self._body, self._pos = body, len(body)
        return True

    def finish(self) -> Body:
        if self._body is None:
            data = b"".join(self._parts)
            body = new_buffer(len(data), self._header_length)
            body[:] = np.frombuffer(data, dtype=np.uint8)
            return body
        if self._pos != len(self._body):
            raise TransportError(f"the answer ended after {self._pos} of {self._size} bytes")
        return self._body


def error_from_answer(response: httpx.Response, body: Body) -> LossRegError:
    """The exception the server raised, rebuilt from its error answer."""
    raw = body.data
    try:
        payload: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = bytes(raw).decode("utf-8", "replace").strip()
    error = error_from_payload(response.status_code, payload)
    if isinstance(error, ServerBusy) and "retry_after" not in error.details:
        retry_after = response.headers.get("Retry-After")
        if retry_after is not None:
            error.details["retry_after"] = retry_after
    request_id = response.headers.get("X-Request-ID")
    if request_id and "request_id" not in error.details:
        error.details["request_id"] = request_id
    return error


def map_httpx_error(exc: httpx.RequestError, attempts: int) -> LossRegError:
    """An httpx failure as the client's error class, most specific first."""
    try:
        url = str(exc.request.url)
    except RuntimeError:  # an error raised before any request was made
        url = "the server"
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    if isinstance(exc, httpx.TimeoutException):
        kind = type(exc).__name__
        return TimeoutError(f"{kind} talking to {url}{tries}: {exc}", url=url, attempts=attempts)
    return TransportError(
        f"{type(exc).__name__} talking to {url}{tries}: {exc}", url=url, attempts=attempts
    )
