"""KServe datatype <-> numpy <-> torch names, and bfloat16 words."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lossreg.errors import InvalidTensor
from lossreg.protocol import (
    DATATYPES,
    bf16_from_float,
    bf16_to_float,
    datatype_from_numpy,
    datatype_from_torch_name,
    itemsize,
    numpy_dtype,
    torch_name,
)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_torch_name_round_trip_and_itemsize_match_torch(datatype: str) -> None:
    name = torch_name(datatype)
    assert datatype_from_torch_name(name) == datatype
    assert datatype_from_torch_name(f"torch.{name}") == datatype
    assert itemsize(datatype) == getattr(torch, name).itemsize


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BF16"])
def test_numpy_round_trip(datatype: str) -> None:
    assert datatype_from_numpy(numpy_dtype(datatype)) == datatype
    assert numpy_dtype(datatype).itemsize == itemsize(datatype)


def test_bf16_travels_as_uint16_words() -> None:
    assert numpy_dtype("BF16") == np.dtype("<u2")
    assert datatype_from_numpy(np.uint16) == "UINT16"  # plain words are not guessed to be BF16


def test_ml_dtypes_bfloat16_maps_to_bf16() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert datatype_from_numpy(ml_dtypes.bfloat16) == "BF16"


def test_bf16_conversion_matches_torch_rounding() -> None:
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 100
    values = torch.cat([values, torch.tensor([0.0, -0.0, 1.0, float("inf"), 3.0e38])])
    words = bf16_from_float(values.numpy())
    expected = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(words, expected)
    back = bf16_to_float(words)
    np.testing.assert_array_equal(back, values.to(torch.bfloat16).float().numpy())


def test_bf16_keeps_nan() -> None:
    assert np.isnan(bf16_to_float(bf16_from_float(np.array([np.nan], np.float32))))[0]


@pytest.mark.parametrize("bad", ["FP8", "BYTES", "fp32", ""])
def test_unknown_datatype_is_invalid_tensor_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidTensor, match="unsupported datatype") as info:
        numpy_dtype(bad, "input")
    assert info.value.field == "input"
    assert info.value.status_code == 400


def test_unknown_torch_name_and_numpy_dtype() -> None:
    with pytest.raises(InvalidTensor, match="complex64"):
        datatype_from_torch_name("complex64", "x")
    with pytest.raises(InvalidTensor, match="complex"):
        datatype_from_numpy(np.complex64, "x")
