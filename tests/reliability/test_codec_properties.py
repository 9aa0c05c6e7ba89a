"""Property tests of the tensor codec (hypothesis): every datatype round-trips bit-exactly
through the JSON and the binary encodings, zero-size dimensions included, and whatever a client
sends, well-formed or not, decodes or raises a typed `lossreg.errors` error, never anything else.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lossreg.errors import LossRegError
from lossreg.protocol import (
    DATATYPES,
    bf16_to_float,
    decode_tensor,
    encode_body,
    encode_tensor,
    numpy_dtype,
    slice_binary_data,
    split_body,
    torch_name,
)
from lossreg.protocol.v1 import Form, decode_value, encode_value
from lossreg_service.registry import LossRegistry
from lossreg_service.server.inference import decode_request

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=60, deadline=None)

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4)


@st.composite
def wire_arrays(draw: st.DrawFn, datatype: str, finite: bool) -> np.ndarray:
    """Any array of ``datatype`` as it travels (BF16 as uint16 words), from arbitrary bits.

    Every bit pattern is drawn (NaN payloads, -0.0, subnormals) except where the encoding cannot
    carry it: BOOL is 0 or 1, and JSON (``finite``) has no NaN or Inf.
    """
    dims = draw(shapes)
    dtype = numpy_dtype(datatype)
    raw = draw(st.binary(min_size=math.prod(dims) * dtype.itemsize, max_size=10**6))
    array = np.frombuffer(raw[: math.prod(dims) * dtype.itemsize], dtype=dtype).copy()
    if datatype == "BOOL":
        array = array.view(np.uint8) % 2 == 1
    if finite and datatype == "BF16":
        array[~np.isfinite(bf16_to_float(array))] = 0x3F80  # 1.0
    elif finite and dtype.kind == "f":
        array[~np.isfinite(array)] = 1.0
    return array.reshape(dims)


def assert_bit_exact(decoded: np.ndarray, sent: np.ndarray) -> None:
    assert decoded.shape == sent.shape
    assert decoded.dtype.itemsize == sent.dtype.itemsize
    assert np.ascontiguousarray(decoded).tobytes() == np.ascontiguousarray(sent).tobytes()


@pytest.mark.parametrize("datatype", DATATYPES)
def test_binary_round_trip_is_bit_exact(datatype: str) -> None:
    @ROUND_TRIP
    @given(arrays=st.lists(wire_arrays(datatype, finite=False), min_size=1, max_size=3))
    def check(arrays: list[np.ndarray]) -> None:
        entries, buffers = [], []
        for i, array in enumerate(arrays):
            entry, raw = encode_tensor(f"t{i}", array, binary=True, datatype=datatype)
            entries.append(entry)
            buffers.append(raw)
        body, length = encode_body({"inputs": entries}, buffers)
        head, tail = split_body(bytearray(body), None if length is None else str(length))
        header = orjson.loads(head)
        slices = slice_binary_data(header["inputs"], tail)
        for entry, array in zip(header["inputs"], arrays):
            assert entry["datatype"] == datatype
            assert_bit_exact(decode_tensor(entry, slices.get(entry["name"], b"")), array)

    check()


@pytest.mark.parametrize("datatype", DATATYPES)
def test_json_round_trip_is_bit_exact(datatype: str) -> None:
    @ROUND_TRIP
    @given(array=wire_arrays(datatype, finite=True))
    def check(array: np.ndarray) -> None:
        entry, raw = encode_tensor("t", array, binary=False, datatype=datatype)
        assert raw is None
        wire = orjson.loads(orjson.dumps(entry, option=orjson.OPT_SERIALIZE_NUMPY))
        assert wire["datatype"] == datatype and wire["shape"] == list(array.shape)
        assert_bit_exact(decode_tensor(wire), array)

    check()


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("form", [Form.DATA, Form.B64])
def test_v1_typed_payload_round_trip_is_bit_exact(datatype: str, form: Form) -> None:
    """The /v1 ``{"dtype", "shape", "data"|"b64"}`` payloads, as the server answers in kind."""

    @ROUND_TRIP
    @given(array=wire_arrays(datatype, finite=form is Form.DATA))
    def check(array: np.ndarray) -> None:
        value = orjson.loads(
            orjson.dumps(encode_value(array, datatype, form), option=orjson.OPT_SERIALIZE_NUMPY)
        )
        assert value["dtype"] == torch_name(datatype)
        decoded, decoded_type, decoded_form = decode_value("t", value)
        assert (decoded_type, decoded_form) == (datatype, form)
        assert_bit_exact(decoded, array)

    check()


# -- anything else: a typed error, never a crash ----------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
datatypes = st.one_of(
    st.sampled_from(DATATYPES), st.sampled_from(["BYTES", "fp32", ""]), json_scalars
)
hostile_shapes = st.one_of(
    shapes,
    st.lists(st.integers(-3, 2**64), max_size=4),
    st.lists(st.sampled_from([0, 1, 2**31, 2**32, 2**62, 2**63 - 1]), max_size=6),
    json_values,
)
hostile_sizes = st.one_of(
    st.none(), st.integers(-(2**64), 2**64), st.sampled_from([0, 4, 2**62, 2**63]), json_scalars
)


@st.composite
def hostile_tensors(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": draw(st.sampled_from(["input", "target", "weight"])),
        "datatype": draw(datatypes),
        "shape": draw(hostile_shapes),
    }
    if draw(st.booleans()):
        entry["data"] = draw(
            st.one_of(
                json_values,
                st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=30),
                st.lists(st.integers(-(2**65), 2**65), max_size=30),
            )
        )
    if draw(st.booleans()):
        entry["parameters"] = {"binary_data_size": draw(hostile_sizes)}
    return entry


def typed_or_array(fn: Any, *args: Any) -> Any:
    """Call ``fn``: it may succeed or raise a lossreg error; anything else fails the test."""
    try:
        return fn(*args)
    except LossRegError as exc:
        assert exc.code and isinstance(exc.message, str)
        assert 400 <= exc.status_code < 500, exc
        return None


@FUZZ
@given(tensors=st.lists(hostile_tensors(), max_size=3), tail=st.binary(max_size=64))
@example(
    tensors=[{"name": "input", "datatype": "FP32", "shape": [2**62, 2**62]}],
    tail=b"\0" * 4,
)
@example(
    tensors=[
        {"name": "input", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": -4}}
    ],
    tail=b"\0" * 4,
)
@example(tensors=[{"name": "input", "datatype": "FP64", "shape": [0, 2**60], "data": []}], tail=b"")
@example(
    tensors=[
        {
            "name": "t",
            "datatype": "FP64",
            "shape": [0, 2**62],
            "parameters": {"binary_data_size": 0},
        }
    ],
    tail=b"",
)
@example(tensors=[{"name": "input", "datatype": "BOOL", "shape": [0] * 65, "data": []}], tail=b"")
def test_hostile_tensor_entries_decode_or_raise_a_typed_error(
    tensors: list[dict[str, Any]], tail: bytes
) -> None:
    slices = typed_or_array(slice_binary_data, tensors, bytearray(tail))
    for entry in tensors:
        raw = None if slices is None else slices.get(str(entry.get("name")))
        array = typed_or_array(decode_tensor, entry, raw)
        if array is not None:
            assert isinstance(array, np.ndarray)
            assert list(array.shape) == entry["shape"]


@FUZZ
@given(value=json_values)
@example(value={"dtype": "float32", "shape": [2**40, 2**40], "data": [1.0]})
@example(value={"dtype": "float32", "shape": [1], "b64": "not base64!"})
@example(value={"dtype": "object", "shape": [1], "data": [1]})
@example(value=[[1.0], [2.0, 3.0]])
@example(value=[1e39])
def test_hostile_v1_values_decode_or_raise_a_typed_error(value: Any) -> None:
    typed_or_array(decode_value, "input", value)


@pytest.fixture(scope="module")
def mse_spec() -> Any:
    return LossRegistry.from_entry_points(autoload=False).spec("mse_loss")


def _valid_body() -> tuple[bytes, int]:
    x = np.arange(6, dtype=np.float32)
    entries, buffers = [], []
    for name in ("input", "target"):
        entry, raw = encode_tensor(name, x, binary=True)
        entries.append(entry)
        buffers.append(raw)
    body, length = encode_body({"inputs": entries}, buffers)
    assert length is not None
    return body, length


@FUZZ
@given(data=st.data())
def test_mutated_binary_requests_decode_or_raise_a_typed_error(mse_spec: Any, data: Any) -> None:
    """A valid framed request with bytes flipped, cut, added, and a lying header length."""
    body, length = _valid_body()
    mutated = bytearray(body)
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    mutated = mutated[:cut] + data.draw(st.binary(max_size=16)) + mutated[cut + 8 :]
    header_length = data.draw(
        st.one_of(
            st.just(str(length)),
            st.integers(-5, len(mutated) + 5).map(str),
            st.text(max_size=6),
            st.none(),
        )
    )
    typed_or_array(decode_request, mse_spec, mutated, header_length)


@FUZZ
@given(body=st.binary(max_size=200), header_length=st.one_of(st.none(), st.text(max_size=5)))
@example(body=b"\xff\xfe{", header_length=None)  # invalid UTF-8
@example(body=b"[" * 5000 + b"]" * 5000, header_length=None)  # deeply nested
@example(body=b'{"inputs": [], "id": "\xed\xa0\x80"}', header_length=None)  # a lone surrogate
def test_arbitrary_bodies_decode_or_raise_a_typed_error(
    mse_spec: Any, body: bytes, header_length: str | None
) -> None:
    typed_or_array(decode_request, mse_spec, bytearray(body), header_length)


def test_bool_bytes_other_than_0_and_1_are_malformed() -> None:
    raw = bytearray(b"\x00\x01\x02")
    assert (
        typed_or_array(decode_tensor, {"name": "m", "datatype": "BOOL", "shape": [3]}, raw) is None
    )


def test_b64_of_each_datatype_has_the_declared_size() -> None:
    value = {"dtype": "float64", "shape": [2], "b64": base64.b64encode(b"\0" * 8).decode()}
    assert typed_or_array(decode_value, "x", value) is None
