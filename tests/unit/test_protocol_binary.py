"""Triton binary tensor framing: splitting bodies, slicing tensors, and its precise errors."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from lossreg.errors import InvalidRequest, InvalidTensor
from lossreg.protocol import (
    HEADER_LENGTH,
    encode_body,
    frame_body,
    parse_header_length,
    slice_binary_data,
    split_body,
)


def _body(inputs: list[dict], buffers: list[bytes]) -> tuple[bytearray, int]:
    head = orjson.dumps({"inputs": inputs})
    return bytearray(head + b"".join(buffers)), len(head)


def test_split_without_header_length_is_all_json() -> None:
    head, tail = split_body(b'{"a": 1}', None)
    assert bytes(head) == b'{"a": 1}' and len(tail) == 0


def test_split_and_slice_round_trip_is_zero_copy() -> None:
    a, b = np.arange(6, dtype="<f4"), np.arange(3, dtype="<i8")
    body, length = _body(
        [
            {"name": "a", "parameters": {"binary_data_size": a.nbytes}},
            {"name": "json", "data": [1]},
            {"name": "b", "parameters": {"binary_data_size": b.nbytes}},
        ],
        [a.tobytes(), b.tobytes()],
    )
    head, tail = split_body(body, str(length))
    parts = slice_binary_data(orjson.loads(head)["inputs"], tail)
    assert set(parts) == {"a", "b"}
    np.testing.assert_array_equal(np.frombuffer(parts["a"], "<f4"), a)
    np.testing.assert_array_equal(np.frombuffer(parts["b"], "<i8"), b)
    view = np.frombuffer(parts["a"], "<f4")
    view[0] = 42.0  # writable, and the body itself changed: no copy was made
    assert np.frombuffer(bytes(body[length : length + 4]), "<f4")[0] == 42.0


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", ""])
def test_header_length_must_be_a_non_negative_integer(value: str) -> None:
    with pytest.raises(InvalidRequest, match="non-negative integer") as info:
        parse_header_length(value, 100)
    assert info.value.field == HEADER_LENGTH


def test_header_length_past_the_body() -> None:
    with pytest.raises(InvalidRequest, match="is 101 but the body has only 100 bytes"):
        split_body(bytes(100), "101")


@pytest.mark.parametrize("size", [-1, 1.5, "8", True, 1 << 63])
def test_malformed_binary_data_size_names_the_input(size: object) -> None:
    with pytest.raises(InvalidTensor, match="binary_data_size must be a non-negative") as info:
        slice_binary_data([{"name": "x", "parameters": {"binary_data_size": size}}], bytes(8))
    assert info.value.field == "x"


def test_sizes_running_past_the_body() -> None:
    inputs = [
        {"name": "a", "parameters": {"binary_data_size": 4}},
        {"name": "b", "parameters": {"binary_data_size": 8}},
    ]
    with pytest.raises(InvalidTensor, match="'b': binary_data_size 8 runs past") as info:
        slice_binary_data(inputs, bytes(10))
    assert info.value.field == "b"


def test_bytes_left_over() -> None:
    with pytest.raises(InvalidTensor, match="3 bytes after the binary inputs"):
        slice_binary_data([{"name": "a", "parameters": {"binary_data_size": 4}}], bytes(7))


def test_encode_body_frames_and_reports_the_header_length() -> None:
    body, length = encode_body({"outputs": []}, [b"\x01\x02", memoryview(b"\x03")])
    assert length == len(orjson.dumps({"outputs": []}))
    assert body[length:] == b"\x01\x02\x03"
    plain, none = encode_body({"outputs": []})
    assert none is None and orjson.loads(plain) == {"outputs": []}
    chunks, _ = frame_body(b"{}", [b"", b"ab"])
    assert [bytes(c) for c in chunks] == [b"{}", b"ab"]  # empty buffers are dropped
