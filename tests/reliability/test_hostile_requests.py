"""The hostile-request catalogue: each request gets its documented status and a body naming the
field, and after each one the server still answers a valid request correctly.

Cases already pinned in ``tests/integration/test_v2_errors.py`` and ``test_server_limits.py``
(declared/streamed bodies over the cap, a gzip bomb through /v1, the header length past the body
or negative, negative binary sizes, unknown/missing inputs, wrong dtypes and shapes, unknown
parameters) are not repeated; these are the rest.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from ._harness import (
    FaultSettings,
    X,
    Y,
    assert_still_serving,
    binary_body,
    raw_request,
    running,
    status_of,
)

CAP = 1024 * 1024
INFER = "/v2/models/mse_loss/infer"
EVALUATE = "/v1/losses/mse_loss/evaluate"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = FaultSettings(
        device="cpu", log_level="critical", max_request_bytes=CAP, compute_threads=2
    )
    with running(settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(autouse=True)
def still_serving(http: httpx.Client) -> Iterator[None]:
    yield
    assert_still_serving(http)


def check(r: httpx.Response, status: int, code: str, field: str | None, message: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert (body["code"], body["field"]) == (code, field), body
    assert message in body["error"], body["error"]


def outcomes(http: httpx.Client, loss: str) -> dict[str, float]:
    """``lossreg_requests_total`` by outcome for one loss."""
    out: dict[str, float] = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("lossreg_requests_total{") and f'loss="{loss}"' in line:
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = float(line.rsplit(" ", 1)[1])
    return out


# -- sizes and codings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
    ids=["gzip", "deflate"],
)
def test_compression_bombs_stop_at_the_cap(http: httpx.Client, coding: str, compress: Any) -> None:
    bomb = compress(b"0" * (64 * CAP))  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < CAP // 8
    r = http.post(INFER, content=bomb, headers={"Content-Encoding": coding})
    check(r, 413, "payload_too_large", "body", "decompresses to")


def test_streamed_gzip_bomb_stops_at_the_cap(http: httpx.Client) -> None:
    bomb = gzip.compress(b"[" * (16 * CAP))

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to judge by
        for i in range(0, len(bomb), 1024):
            yield bomb[i : i + 1024]

    r = http.post(INFER, content=chunks(), headers={"Content-Encoding": "gzip"})
    check(r, 413, "payload_too_large", "body")


def test_stacked_encodings_are_refused(http: httpx.Client) -> None:
    body = gzip.compress(gzip.compress(b"{}"))
    r = http.post(INFER, content=body, headers={"Content-Encoding": "gzip, gzip"})
    check(r, 400, "invalid_request", "Content-Encoding", "unsupported Content-Encoding")


@pytest.mark.parametrize(
    "length",
    ["99999999999999999999999999", "-1", "1e3", "0x10", "¹"],
)
def test_bad_content_length_is_a_4xx(url: str, length: str) -> None:
    request = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n{{}}"
    ).encode("latin-1")
    assert 400 <= status_of(raw_request(url, request)) < 500


def test_content_length_and_chunked_together_is_refused(url: str) -> None:
    """Request smuggling: both framings at once."""
    request = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ).encode()
    assert 400 <= status_of(raw_request(url, request)) < 500


@pytest.mark.parametrize("value", ["99999999999999999999999999999", "¹", "4 4", "", "+4"], ids=repr)
def test_bad_header_lengths(http: httpx.Client, value: str) -> None:
    body, _ = binary_body({"input": X, "target": Y})
    r = http.post(
        INFER, content=body, headers={"Inference-Header-Content-Length": value.encode("latin-1")}
    )
    check(r, 400, "invalid_request", "Inference-Header-Content-Length")


@pytest.mark.parametrize("size", [2**64, 2**63 - 1, 2**62, 1.5, "4", True], ids=repr)
def test_overflowing_or_mistyped_binary_sizes(http: httpx.Client, size: object) -> None:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                },
            ]
        }
    ).encode()
    r = http.post(
        INFER,
        content=head + b"\0" * 4,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and r.json()["field"] in ("input", "inputs.0.parameters"), r.text


# -- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "status", "code"),
    [
        ([2**62, 2**62], 422, "shape_mismatch"),  # the product is far past 64 bits
        ([2**32, 2**32, 2**32], 422, "shape_mismatch"),
        ([0, 2**62, 2**62], 400, "invalid_tensor"),  # empty, yet no array could describe it
        ([1] * 40, 400, "invalid_tensor"),  # more dimensions than supported
        ([-1, 4], 400, "invalid_tensor"),
        ([2**70], 400, "invalid_request"),  # JSON reads it as a float: not an integer
    ],
    ids=str,
)
def test_shapes_whose_product_overflows(
    http: httpx.Client, shape: list[int], status: int, code: str
) -> None:
    tensor = {"name": "input", "shape": shape, "datatype": "FP32", "data": [1.0]}
    target = {"name": "target", "shape": [1], "datatype": "FP32", "data": [1.0]}
    r = http.post(INFER, content=json.dumps({"inputs": [tensor, target]}).encode())
    assert r.status_code == status and r.json()["code"] == code, r.text


def test_binary_shape_overflow(http: httpx.Client) -> None:
    body, headers = binary_body({"input": X, "target": Y})
    length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:length])
    header["inputs"][0]["shape"] = [2**40, 2**40]
    head = json.dumps(header).encode()
    r = http.post(
        INFER,
        content=head + body[length:],
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    check(r, 400, "invalid_tensor", "input", "needs")


# -- values -----------------------------------------------------------------------------------


def nan_inputs() -> dict[str, np.ndarray]:
    x = X.copy()
    x[0, 0], x[1, 1] = np.nan, np.inf
    return {"input": x, "target": Y}


def test_non_finite_inputs_are_rejected_by_default(http: httpx.Client) -> None:
    body, headers = binary_body(nan_inputs())
    check(http.post(INFER, content=body, headers=headers), 422, "non_finite", "input", "2 non")


def test_non_finite_grad_loss_is_rejected(http: httpx.Client) -> None:
    grad_loss = np.full((3, 4), np.nan, np.float32)
    body, headers = binary_body({"input": X, "target": Y, "grad_loss": grad_loss}, reduction="none")
    check(http.post(INFER, content=body, headers=headers), 422, "non_finite", "grad_loss")


def test_non_finite_inputs_computed_and_flagged_when_allowed(http: httpx.Client) -> None:
    arrays = nan_inputs()
    upstream = np.ones(arrays["input"].shape, np.float32)  # a non-scalar loss needs grad_loss
    body, headers = binary_body(
        {**arrays, "grad_loss": upstream}, nonfinite="allow", reduction="none"
    )
    r = http.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = int(r.headers["Inference-Header-Content-Length"])
    header = json.loads(r.content[:length])
    assert header["parameters"]["nonfinite"] == "loss,grad_input"
    x = torch.from_numpy(arrays["input"]).requires_grad_(True)
    expected = torch.nn.functional.mse_loss(x, torch.from_numpy(Y), reduction="none")
    (grad,) = torch.autograd.grad(expected, [x], torch.ones_like(expected))
    raw = r.content[length:]
    got_loss = np.frombuffer(raw[:48], np.float32).reshape(3, 4)
    got_grad = np.frombuffer(raw[48:], np.float32).reshape(3, 4)
    # NaN and Inf travel bit for bit in binary
    assert got_loss.tobytes() == expected.detach().numpy().tobytes()
    assert got_grad.tobytes() == grad.numpy().tobytes()


def test_finite_results_carry_no_flag(http: httpx.Client) -> None:
    body, headers = binary_body({"input": X, "target": Y}, nonfinite="allow")
    r = http.post(INFER, content=body, headers=headers)
    length = int(r.headers["Inference-Header-Content-Length"])
    assert "parameters" not in json.loads(r.content[:length])
    v1 = http.post(EVALUATE, json={"inputs": {"input": X.tolist(), "target": Y.tolist()}})
    assert v1.json()["nonfinite"] == []


def test_v1_non_finite_b64_input_allowed_reads_null_and_is_flagged(http: httpx.Client) -> None:
    x = np.array([np.nan, 1.0], np.float32)
    value = {"dtype": "float32", "shape": [2], "b64": base64.b64encode(x.tobytes()).decode()}
    body = {"inputs": {"input": value, "target": [0.0, 0.0]}}
    check(http.post(EVALUATE, json=body), 422, "non_finite", "input")
    r = http.post(EVALUATE, json={**body, "nonfinite": "allow"})
    assert r.status_code == 200 and r.json()["loss"] is None, r.text
    assert r.json()["nonfinite"] == ["loss", "grad_input"]
    grad = np.frombuffer(base64.b64decode(r.json()["grads"]["input"]["b64"]), np.float32)
    assert np.isnan(grad[0]) and grad[1] == 1.0  # d/dx mean((x - 0)^2) = x


def test_bad_nonfinite_choice(http: httpx.Client) -> None:
    body, headers = binary_body({"input": X, "target": Y}, nonfinite="ignore")
    check(http.post(INFER, content=body, headers=headers), 422, "invalid_parameter", "nonfinite")
    r = http.post(EVALUATE, json={"inputs": {"input": [1.0], "target": [1.0]}, "nonfinite": 1})
    check(r, 400, "invalid_request", "nonfinite")


@pytest.mark.parametrize(
    ("datatype", "value"), [("FP32", 1e39), ("FP16", 70000), ("BF16", 3.4e38)], ids=str
)
def test_json_numbers_past_the_datatype_are_refused_not_inf(
    http: httpx.Client, datatype: str, value: float
) -> None:
    tensor = {"name": "input", "shape": [1], "datatype": datatype, "data": [value]}
    target = {"name": "target", "shape": [1], "datatype": datatype, "data": [0]}
    r = http.post(INFER, content=json.dumps({"inputs": [tensor, target]}).encode())
    check(r, 400, "invalid_tensor", "input", "out of range")
    nested = http.post(EVALUATE, json={"inputs": {"input": [1e39], "target": [0.0]}})
    check(nested, 400, "invalid_tensor", "input", "out of range for float32")


def test_v1_mismatched_shapes_and_dtypes(http: httpx.Client) -> None:
    r = http.post(EVALUATE, json={"inputs": {"input": [[1.0, 2.0]], "target": [1.0, 2.0, 3.0]}})
    check(r, 422, "shape_mismatch", "target")
    r = http.post(EVALUATE, json={"inputs": {"input": [1, 2], "target": [1.0, 2.0]}})
    check(r, 422, "invalid_input", "input", "has dtype int64")
    r = http.post(EVALUATE, json={"inputs": {"input": [True], "target": [1.0]}})
    check(r, 422, "invalid_input", "input", "has dtype bool")


def test_v1_unknown_fields_and_parameters(http: httpx.Client) -> None:
    inputs = {"input": [1.0], "target": [2.0]}
    check(
        http.post(EVALUATE, json={"inputs": inputs, "exec": "import os"}),
        400,
        "invalid_request",
        "exec",
        "unknown field",
    )
    check(
        http.post(EVALUATE, json={"inputs": inputs, "params": {"__class__": 1}}),
        422,
        "invalid_parameter",
        "__class__",
        "unknown parameter",
    )
    compose = {"terms": [{"loss": "mse_loss", "lambda": 2}], "inputs": inputs}
    check(http.post("/v1/evaluate", json=compose), 400, "invalid_request", "terms.0.lambda")


# -- structure and encoding -------------------------------------------------------------------


@pytest.mark.parametrize("path", [INFER, EVALUATE, "/v1/evaluate"])
def test_deeply_nested_json_body(http: httpx.Client, path: str) -> None:
    r = http.post(path, content=b"[" * 100_000 + b"]" * 100_000)
    check(r, 400, "invalid_request", "body", "not valid JSON")


def test_deeply_nested_tensor_data(http: httpx.Client) -> None:
    data: Any = [1.0]
    for _ in range(200):
        data = [data]
    tensor = {"name": "input", "shape": [1], "datatype": "FP32", "data": data}
    target = {"name": "target", "shape": [1], "datatype": "FP32", "data": [1.0]}
    r = http.post(INFER, content=json.dumps({"inputs": [tensor, target]}).encode())
    check(r, 400, "invalid_tensor", "input")
    r = http.post(EVALUATE, json={"inputs": {"input": data, "target": [1.0]}})
    check(r, 400, "invalid_tensor", "input")


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [], "id": "\xff\xfe"}',
        b'{"inputs": [{"name": "in\xc3\x28put", "shape": [1], "datatype": "FP32", "data": [1]}]}',
        b'{"inputs": [], "id": "\xed\xa0\x80"}',  # an encoded surrogate
        '{"inputs": []}'.encode("utf-16"),
    ],
    ids=["bad-bytes", "bad-continuation", "surrogate", "utf-16"],
)
def test_invalid_utf8_body(http: httpx.Client, body: bytes) -> None:
    check(http.post(INFER, content=body), 400, "invalid_request", "body", "not valid JSON")


def test_invalid_utf8_in_the_path_and_headers(url: str, http: httpx.Client) -> None:
    r = http.post("/v2/models/%FF%FE/infer", content=b"{}")
    assert r.status_code == 404 and r.json()["code"] == "loss_not_found"
    request = (
        b"GET /v2/models/mse_loss HTTP/1.1\r\nHost: x\r\nX-Request-ID: \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert status_of(raw_request(url, request)) == 200


def test_many_repeated_inputs_are_refused_quickly(http: httpx.Client) -> None:
    entry = {"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}
    body = json.dumps({"inputs": [entry] * 10_000}).encode()
    start = time.monotonic()
    # past the documented count (lossreg.protocol.limits.MAX_TENSORS) before any pairwise check
    check(http.post(INFER, content=body), 400, "invalid_request", "inputs", "at most 64")
    assert time.monotonic() - start < 5
    body = json.dumps({"inputs": [entry] * 2}).encode()
    check(http.post(INFER, content=body), 422, "invalid_input", "input", "sent twice")


# -- clients that go away ---------------------------------------------------------------------


def test_client_disconnecting_mid_body(url: str, http: httpx.Client) -> None:
    before = outcomes(http, "mse_loss")
    head = (
        f"POST {EVALUATE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    raw_request(url, head + b'{"inputs": {"input": [1.0, ', close_after=0.2)
    deadline = time.monotonic() + 5
    while outcomes(http, "mse_loss").get("invalid_request", 0) == before.get("invalid_request", 0):
        assert time.monotonic() < deadline, "the abandoned request was never accounted for"
        time.sleep(0.05)
    assert outcomes(http, "mse_loss").get("internal", 0) == before.get("internal", 0)


def test_client_disconnecting_mid_compute(url: str, http: httpx.Client) -> None:
    before = outcomes(http, "slow_loss")
    body = json.dumps({"inputs": {"input": [1.0, 2.0]}, "params": {"seconds": 1.0}}).encode()
    head = (
        f"POST /v1/losses/slow_loss/evaluate HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    gone = threading.Thread(
        target=raw_request, args=(url, head + body), kwargs={"close_after": 0.2}
    )
    gone.start()
    gone.join()
    deadline = time.monotonic() + 10
    while sum(outcomes(http, "slow_loss").values()) == sum(before.values()):
        assert time.monotonic() < deadline, "the computation never finished"
        time.sleep(0.05)
    after = outcomes(http, "slow_loss")
    assert after.get("internal", 0) == before.get("internal", 0), after
    # both workers are free again: two slow requests at once are served side by side
    results: list[int] = []

    def call() -> None:
        with httpx.Client(base_url=url, timeout=30) as own:
            slow = {"inputs": {"input": [3.0]}, "params": {"seconds": 0.5}}
            results.append(own.post("/v1/losses/slow_loss/evaluate", json=slow).status_code)

    start = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200, 200] and time.monotonic() - start < 0.95
