"""Edge cases of bad input that once slipped through: each answers a 4xx naming the field."""

from __future__ import annotations

import httpx
import pytest

from lossreg.protocol.tensors import MAX_ELEMENTS


@pytest.fixture(scope="module")
def http(server_url: str):
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


def test_an_empty_tensor_cannot_declare_huge_other_sizes(http: httpx.Client) -> None:
    # No bytes travel for an empty tensor, yet losses allocate per-class buffers from its shape.
    body = {
        "inputs": {
            "input": {"dtype": "float32", "shape": [1, MAX_ELEMENTS * 4, 0], "data": []},
            "target": {"dtype": "int64", "shape": [1, 0], "data": []},
        }
    }
    r = http.post("/v1/losses/tversky/evaluate", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_tensor" and r.json()["field"] == "input"
    small = {"input": {"dtype": "float32", "shape": [2, 3, 0], "data": []},
             "target": {"dtype": "int64", "shape": [2, 0], "data": []}}  # fmt: skip
    assert http.post("/v1/losses/tversky/evaluate", json={"inputs": small}).status_code == 200


def test_a_non_scalar_kserve_parameter_names_the_parameter(http: httpx.Client) -> None:
    body = {
        "inputs": [
            {"name": "input", "shape": [2], "datatype": "FP32", "data": [1, 2]},
            {"name": "target", "shape": [2], "datatype": "FP32", "data": [0, 0]},
        ],
        "parameters": {"reduction": ["sum"]},
    }
    r = http.post("/v2/models/mse_loss/infer", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "parameters.reduction"


def test_nested_lists_obey_the_rank_limit(http: httpx.Client) -> None:
    deep: object = [1.0]
    for _ in range(39):
        deep = [deep]
    r = http.post("/v1/losses/mse_loss/evaluate", json={"inputs": {"input": deep, "target": deep}})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_tensor" and r.json()["field"] == "input"
    assert "dimensions" in r.json()["error"]
