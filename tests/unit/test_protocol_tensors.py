"""Tensor codec: JSON data and raw bytes <-> numpy, with the declared-size checks."""

from __future__ import annotations

import numpy as np
import pytest

from lossreg.errors import InvalidTensor, ShapeMismatch
from lossreg.protocol import (
    InferRequest,
    array_from_bytes,
    array_from_json,
    decode_tensor,
    encode_tensor,
)


@pytest.mark.parametrize(
    ("datatype", "array"),
    [
        ("FP32", np.arange(6, dtype=np.float32).reshape(2, 3) / 7),
        ("FP64", np.linspace(-1, 1, 5)),
        ("FP16", np.array([[0.5, -2.0]], np.float16)),
        ("INT64", np.array([[-(2**40), 3]], np.int64)),
        ("INT8", np.array([-128, 127], np.int8)),
        ("UINT8", np.array([0, 255], np.uint8)),
        ("BOOL", np.array([[True, False, True]])),
    ],
)
@pytest.mark.parametrize("binary", [True, False])
def test_encode_decode_round_trip(datatype: str, array: np.ndarray, binary: bool) -> None:
    entry, raw = encode_tensor("x", array, binary=binary)
    assert entry["datatype"] == datatype and entry["shape"] == list(array.shape)
    if binary:
        assert entry["parameters"]["binary_data_size"] == array.nbytes
        raw = bytearray(raw)
    else:
        assert raw is None and entry["data"].ndim == 1
        entry["data"] = entry["data"].tolist()
    np.testing.assert_array_equal(decode_tensor(entry, raw), array)


def test_nested_and_flat_json_agree() -> None:
    nested = array_from_json("x", "FP32", [2, 2], [[1, 2], [3, 4]])
    flat = array_from_json("x", "FP32", [2, 2], [1, 2, 3, 4])
    np.testing.assert_array_equal(nested, flat)
    assert nested.dtype == np.float32 and nested.flags.writeable


def test_scalar_tensor() -> None:
    assert array_from_json("x", "FP64", [], 2.5).shape == ()
    assert array_from_json("x", "FP64", [], [2.5]).item() == 2.5


def test_bytes_are_viewed_not_copied_when_writable() -> None:
    raw = bytearray(np.arange(4, dtype="<f4").tobytes())
    array = array_from_bytes("x", "FP32", [2, 2], raw)
    assert array.flags.writeable and np.shares_memory(array, np.frombuffer(raw, np.uint8))
    assert not array_from_bytes("x", "FP32", [4], bytes(raw)).flags.writeable


def test_declared_size_must_match_shape_times_itemsize() -> None:
    with pytest.raises(InvalidTensor, match=r"12 bytes .* shape \[2, 2\] of FP32 needs 16") as e:
        array_from_bytes("input", "FP32", [2, 2], bytes(12))
    assert e.value.field == "input"


@pytest.mark.parametrize("shape", [[-1, 2], [2.0], "2", [True], None])
def test_bad_shapes(shape: object) -> None:
    with pytest.raises(InvalidTensor, match="shape must be a list of non-negative integers"):
        array_from_json("t", "FP32", shape, [1.0, 2.0])


def test_huge_shape_does_not_overflow() -> None:
    with pytest.raises(InvalidTensor, match="needs"):
        array_from_bytes("t", "FP64", [2**40, 2**40], bytes(8))


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "error", "message"),
    [
        ("INT64", [2], [1.5, 2], InvalidTensor, "INT64 data must be integer, found floating"),
        ("BOOL", [2], [1, 0], InvalidTensor, "BOOL data must be boolean"),
        ("UINT8", [1], [256], InvalidTensor, r"value 256 is out of range for UINT8 \[0, 255\]"),
        ("INT8", [1], [-129], InvalidTensor, "out of range"),
        ("FP32", [2], ["a", "b"], InvalidTensor, "must hold numbers"),
        ("FP32", [3], [[1], [2, 3]], InvalidTensor, "not a rectangular list"),
        ("FP32", [2], [1, 2, 3], ShapeMismatch, r"3 elements in data but shape \[2\] holds 2"),
        ("FP32", [1], {"a": 1}, InvalidTensor, "data must be a list"),
    ],
)
def test_bad_json_data(
    datatype: str, shape: list[int], data: object, error: type, message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        array_from_json("target", datatype, shape, data)
    assert info.value.field == "target"


def test_bf16_json_data_becomes_words() -> None:
    words = array_from_json("x", "BF16", [2], [1.0, -2.0])
    assert words.dtype == np.dtype("<u2")
    assert words.tolist() == [0x3F80, 0xC000]


def test_missing_data_and_double_data() -> None:
    with pytest.raises(InvalidTensor, match="has no data"):
        decode_tensor({"name": "x", "datatype": "FP32", "shape": [1]})
    with pytest.raises(InvalidTensor, match="both binary_data_size and JSON data"):
        decode_tensor({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, bytes(4))


def test_infer_request_schema_accepts_the_protocol_shape() -> None:
    request = InferRequest.model_validate(
        {
            "id": "7",
            "parameters": {"binary_data_output": True, "reduction": "sum", "margin": 0.5},
            "inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}],
            "outputs": [{"name": "loss", "parameters": {"binary_data": False}}],
        }
    )
    assert request.parameters == {"binary_data_output": True, "reduction": "sum", "margin": 0.5}
    assert request.outputs is not None and request.outputs[0].name == "loss"
