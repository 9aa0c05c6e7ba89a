"""Every class of malformed inference request gets its 4xx, a precise message naming the field,
and the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from .test_v2_protocol import binary_request

X = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
Y = np.ones((3, 4), np.float32)


@pytest.fixture(scope="module")
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


@pytest.fixture(autouse=True)
def still_serving(http: httpx.Client) -> Iterator[None]:
    """After each bad request, a good one is still answered correctly."""
    yield
    body, headers = binary_request({"input": X, "target": Y})
    r = http.post("/v2/models/mse_loss/infer", content=body, headers=headers)
    assert r.status_code == 200
    assert r.json()["outputs"][0]["data"][0] == pytest.approx(float(((X - Y) ** 2).mean()))


def tensor(name: str, array: np.ndarray, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.reshape(-1).tolist(),
        **extra,
    }


def post_json(http: httpx.Client, body: Any, loss: str = "mse_loss") -> httpx.Response:
    return http.post(f"/v2/models/{loss}/infer", content=json.dumps(body).encode())


def check(r: httpx.Response, status: int, code: str, field: str | None, message: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and body["field"] == field, body
    assert message in body["error"], body["error"]
    assert "X-Request-ID" in r.headers


JSON_CASES = {
    "not json": (b"{not json", 400, "invalid_request", "body", "not valid JSON"),
    "not an object": (b"[1, 2]", 400, "invalid_request", "body", "must be a JSON object"),
    "no inputs": (b'{"outputs": []}', 400, "invalid_request", "inputs", "inputs: Field required"),
    "shape not a list": (
        json.dumps({"inputs": [{"name": "input", "shape": "3", "datatype": "FP32", "data": []}]}),
        400,
        "invalid_request",
        "inputs.0.shape",
        "valid list",
    ),
}


@pytest.mark.parametrize("case", JSON_CASES, ids=list(JSON_CASES))
def test_malformed_bodies(http: httpx.Client, case: str) -> None:
    body, status, code, field, message = JSON_CASES[case]
    content = body if isinstance(body, bytes) else body.encode()
    check(http.post("/v2/models/mse_loss/infer", content=content), status, code, field, message)


def test_unknown_datatype(http: httpx.Client) -> None:
    r = post_json(http, {"inputs": [tensor("input", X, "FP8"), tensor("target", Y)]})
    check(r, 400, "invalid_tensor", "input", "unsupported datatype 'FP8'")


def test_element_count_differs_from_shape(http: httpx.Client) -> None:
    bad = {**tensor("target", Y), "shape": [3, 5]}
    r = post_json(http, {"inputs": [tensor("input", X), bad]})
    check(r, 422, "shape_mismatch", "target", "12 elements in data but shape [3, 5] holds 15")


def test_ragged_nested_data(http: httpx.Client) -> None:
    bad = {"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}
    r = post_json(http, {"inputs": [bad, tensor("target", Y)]})
    check(r, 400, "invalid_tensor", "input", "not a rectangular list")


def test_float_data_for_integer_datatype(http: httpx.Client) -> None:
    x = tensor("input", X)
    target = {"name": "target", "shape": [3], "datatype": "INT64", "data": [0, 1.5, 2]}
    r = post_json(http, {"inputs": [x, target]}, loss="cross_entropy")
    check(r, 400, "invalid_tensor", "target", "INT64 data must be integer")


def test_binary_size_differs_from_shape_times_itemsize(http: httpx.Client) -> None:
    body, headers = binary_request({"input": X, "target": Y})
    header = json.loads(body[: int(headers["Inference-Header-Content-Length"])])
    header["inputs"][1]["shape"] = [3, 3]
    head = json.dumps(header).encode()
    raw = body[int(headers["Inference-Header-Content-Length"]) :]
    r = http.post(
        "/v2/models/mse_loss/infer",
        content=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    check(r, 400, "invalid_tensor", "target", "48 bytes of binary data, but shape [3, 3] of FP32")


def test_header_length_past_the_body(http: httpx.Client) -> None:
    body, _ = binary_request({"input": X, "target": Y})
    r = http.post(
        "/v2/models/mse_loss/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(len(body) + 1)},
    )
    check(r, 400, "invalid_request", "Inference-Header-Content-Length", "but the body has only")


def test_header_length_not_a_number(http: httpx.Client) -> None:
    body, _ = binary_request({"input": X, "target": Y})
    r = http.post(
        "/v2/models/mse_loss/infer", content=body, headers={"Inference-Header-Content-Length": "-5"}
    )
    check(r, 400, "invalid_request", "Inference-Header-Content-Length", "non-negative integer")


def test_binary_sizes_must_fill_the_body(http: httpx.Client) -> None:
    body, headers = binary_request({"input": X, "target": Y})
    check(
        http.post("/v2/models/mse_loss/infer", content=body + b"\0" * 8, headers=headers),
        400,
        "invalid_tensor",
        "Inference-Header-Content-Length",
        "8 bytes after",
    )
    check(
        http.post("/v2/models/mse_loss/infer", content=body[:-8], headers=headers),
        400,
        "invalid_tensor",
        "target",
        "runs past the end of the body",
    )


def test_negative_binary_data_size(http: httpx.Client) -> None:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": -4},
                }
            ]
        }
    ).encode()
    r = http.post(
        "/v2/models/mse_loss/infer",
        content=head + b"\0" * 4,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    check(r, 400, "invalid_tensor", "input", "binary_data_size must be a non-negative integer")


def test_unknown_missing_and_repeated_inputs(http: httpx.Client) -> None:
    check(
        post_json(http, {"inputs": [tensor("input", X), tensor("target", Y), tensor("bogus", Y)]}),
        422,
        "invalid_input",
        "bogus",
        "unknown input 'bogus'",
    )
    check(
        post_json(http, {"inputs": [tensor("input", X)]}),
        422,
        "invalid_input",
        "target",
        "missing input 'target'",
    )
    check(
        post_json(http, {"inputs": [tensor("input", X), tensor("input", X)]}),
        422,
        "invalid_input",
        "input",
        "sent twice",
    )


def test_wrong_dtype_for_an_input(http: httpx.Client) -> None:
    ints = {"name": "input", "shape": [3, 4], "datatype": "INT64", "data": list(range(12))}
    r = post_json(http, {"inputs": [ints, tensor("target", Y)]})
    check(r, 422, "invalid_input", "input", "has dtype int64; accepted: float16")


def test_shapes_that_disagree(http: httpx.Client) -> None:
    r = post_json(http, {"inputs": [tensor("input", X), tensor("target", Y[:2])]})
    check(r, 422, "shape_mismatch", "target", "does not match 'input'")


def test_unknown_and_invalid_parameters(http: httpx.Client) -> None:
    inputs = [tensor("input", X), tensor("target", Y)]
    check(
        post_json(http, {"inputs": inputs, "parameters": {"margin": 1.0}}),
        422,
        "invalid_parameter",
        "margin",
        "unknown parameter 'margin'",
    )
    check(
        post_json(http, {"inputs": inputs, "parameters": {"reduction": "avg"}}),
        422,
        "invalid_parameter",
        "reduction",
        "parameter 'reduction'",
    )
    check(
        post_json(http, {"inputs": inputs, "parameters": {"delta": -1.0}}, loss="huber_loss"),
        422,
        "invalid_parameter",
        "delta",
        "greater than 0",
    )


def test_unknown_and_non_differentiable_outputs(http: httpx.Client) -> None:
    inputs = [tensor("input", X), tensor("target", Y)]
    # torch has no gradient for soft_margin_loss's target (local torch raises too)
    check(
        post_json(
            http, {"inputs": inputs, "outputs": [{"name": "grad_target"}]}, "soft_margin_loss"
        ),
        422,
        "invalid_input",
        "grad_target",
        "unknown output 'grad_target'",
    )
    check(
        post_json(http, {"inputs": inputs, "outputs": [{"name": "probs"}]}),
        422,
        "invalid_input",
        "probs",
        "it has outputs loss, grad_input, grad_target",
    )


def test_the_loss_rejecting_its_inputs(http: httpx.Client) -> None:
    x = {"name": "input", "shape": [2], "datatype": "FP32", "data": [0.5, 1.5]}
    target = {"name": "target", "shape": [2], "datatype": "FP32", "data": [0.0, 1.0]}
    r = post_json(http, {"inputs": [x, target]}, loss="binary_cross_entropy")
    check(r, 422, "loss_rejected_input", None, "binary_cross_entropy: the loss rejected its inputs")


def test_class_index_out_of_range_names_the_target(http: httpx.Client) -> None:
    x = tensor("input", X)
    target = {"name": "target", "shape": [3], "datatype": "INT64", "data": [0, 1, 9]}
    r = post_json(http, {"inputs": [x, target]}, loss="cross_entropy")
    check(r, 422, "invalid_input", "target", "target holds class index 9")


def test_grad_loss_of_the_wrong_shape(http: httpx.Client) -> None:
    inputs = [tensor("input", X), tensor("target", Y), tensor("grad_loss", X[:1])]
    r = post_json(http, {"inputs": inputs, "parameters": {"reduction": "none"}})
    check(r, 422, "shape_mismatch", "grad_loss", "grad_loss has shape [1, 4]")


def test_unknown_loss_suggests_close_names(http: httpx.Client) -> None:
    r = post_json(http, {"inputs": []}, loss="mse_los")
    check(r, 404, "loss_not_found", "name", "no loss named 'mse_los'; did you mean 'mse_loss'")
    assert "mse_loss" in r.json()["suggestions"]


def test_bad_content_encoding(http: httpx.Client) -> None:
    body, headers = binary_request({"input": X, "target": Y})
    check(
        http.post(
            "/v2/models/mse_loss/infer", content=body, headers={**headers, "Content-Encoding": "br"}
        ),
        400,
        "invalid_request",
        "Content-Encoding",
        "unsupported Content-Encoding 'br'",
    )
    check(
        http.post(
            "/v2/models/mse_loss/infer",
            content=b"not gzip at all",
            headers={**headers, "Content-Encoding": "gzip"},
        ),
        400,
        "invalid_request",
        "Content-Encoding",
        "not valid gzip data",
    )


def test_unknown_route_and_method(http: httpx.Client) -> None:
    check(http.get("/v2/nothing/here"), 404, "not_found", None, "Not Found")
    check(http.get("/v2/models/mse_loss/infer"), 405, "method_not_allowed", None, "Not Allowed")
