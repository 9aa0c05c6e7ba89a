"""Triton's binary tensor data extension: framing a body as a JSON header plus raw tensor bytes.

A body is ``<JSON header><bytes of tensor 1><bytes of tensor 2>...``. The header's length is
given by the ``Inference-Header-Content-Length`` HTTP header (absent: the whole body is JSON),
whatever the Content-Type says. Each tensor carrying ``parameters.binary_data_size`` owns the next
that many bytes, in the order the tensors are listed. The same framing serves requests (inputs)
and responses (outputs), so the server and the client share these functions.

Slices are ``memoryview``\\ s of the body: nothing is copied, and a writable body (``bytearray``)
gives writable tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from ..errors import InvalidRequest, InvalidTensor

__all__ = [
    "HEADER_LENGTH",
    "Buffer",
    "announced_header_length",
    "binary_data_size",
    "encode_body",
    "frame_body",
    "parse_header_length",
    "slice_binary_data",
    "split_body",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The HTTP header giving the JSON header's length in bytes."""

Buffer = bytes | bytearray | memoryview
"""Anything holding raw bytes (``bytes``, ``bytearray``, ``memoryview``)."""

_MAX_SIZE = 1 << 62  # far beyond any body; refuses absurd declared sizes early


def parse_header_length(value: str | int | None, body_size: int) -> int | None:
    """Validate an ``Inference-Header-Content-Length`` value against the body's size.

    Raises:
        InvalidRequest: not a non-negative integer, or longer than the body.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):  # isdigit alone passes '¹'
            raise InvalidRequest(
                f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}",
                field=HEADER_LENGTH,
            )
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(
            f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}", field=HEADER_LENGTH
        )
    if value > body_size:
        raise InvalidRequest(
            f"{HEADER_LENGTH} is {value} but the body has only {body_size} bytes",
            field=HEADER_LENGTH,
        )
    return value


def announced_header_length(value: str | None) -> int | None:
    """A response's ``Inference-Header-Content-Length`` as a number, None when it is absent or
    not one (the body is then read as all JSON; `split_body` checks it against the body)."""
    text = value.strip() if value else ""
    return int(text) if text.isascii() and text.isdigit() else None


def split_body(body: Buffer, header_length: str | int | None) -> tuple[memoryview, memoryview]:
    """Split a body into its JSON header and the binary data after it (empty without one)."""
    view = memoryview(body).cast("B") if not isinstance(body, memoryview) else body
    length = parse_header_length(header_length, len(view))
    if length is None:
        return view, view[len(view) :]
    return view[:length], view[length:]


def binary_data_size(tensor: Mapping[str, Any], kind: str = "input") -> int | None:
    """A tensor's declared ``binary_data_size``, or None when its data is in the JSON.

    Raises:
        InvalidTensor: the size is not a non-negative integer (naming the tensor).
    """
    parameters = tensor.get("parameters")
    if not isinstance(parameters, Mapping):
        return None
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    name = tensor.get("name")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < _MAX_SIZE:
        raise InvalidTensor(
            f"{kind} {name!r}: binary_data_size must be a non-negative integer, got {size!r}",
            field=str(name),
        )
    return size


def slice_binary_data(
    tensors: Sequence[Mapping[str, Any]], data: Buffer, *, kind: str = "input"
) -> dict[str, memoryview]:
    """Give each tensor with ``binary_data_size`` its bytes, in order; sizes must fill ``data``.

    Args:
        tensors: the header's ``inputs`` (or ``outputs``), as parsed JSON.
        data: the bytes after the JSON header.
        kind: ``"input"`` or ``"output"``, for messages.

    Raises:
        InvalidTensor: a size is malformed, the sizes run past the data, or leave bytes over.
    """
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    out: dict[str, memoryview] = {}
    offset = 0
    for tensor in tensors:
        size = binary_data_size(tensor, kind)
        if size is None:
            continue
        name = str(tensor.get("name"))
        if offset + size > len(view):
            raise InvalidTensor(
                f"{kind} {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(view) - offset} bytes left after the header and earlier {kind}s)",
                field=name,
            )
        out[name] = view[offset : offset + size]
        offset += size
    if offset != len(view):
        raise InvalidTensor(
            f"the body has {len(view) - offset} bytes after the binary {kind}s that no {kind} "
            "claims (binary_data_size values must add up to the data after the JSON header)",
            field=HEADER_LENGTH,
        )
    return out


def frame_body(
    header: Mapping[str, Any] | bytes, buffers: Iterable[Buffer] = ()
) -> tuple[list[Buffer], int]:
    """The chunks of a framed body (JSON header first, then buffers) and the header's length.

    The chunks are not joined, so a server can send large tensors without copying them.
    """
    head = header if isinstance(header, bytes) else orjson.dumps(header)
    chunks: list[Buffer] = [head]
    chunks.extend(b for b in buffers if len(memoryview(b)) > 0)
    return chunks, len(head)


def encode_body(
    header: Mapping[str, Any] | bytes, buffers: Iterable[Buffer] = ()
) -> tuple[bytes, int | None]:
    """A framed body as one ``bytes``, and the header length to send (None without buffers)."""
    chunks, length = frame_body(header, buffers)
    if len(chunks) == 1:
        return bytes(chunks[0]), None
    return b"".join(chunks), length
