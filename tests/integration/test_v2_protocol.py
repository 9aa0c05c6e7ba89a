"""The KServe v2 wire protocol byte by byte, with plain httpx (bodies built by hand here)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.support.loss_cases import make_case, reference

KSERVE = {
    torch.float32: "FP32",
    torch.float64: "FP64",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.int32: "INT32",
}


@pytest.fixture(scope="module")
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


def binary_request(
    tensors: dict[str, np.ndarray],
    datatypes: dict[str, str] | None = None,
    **header: Any,
) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body and its headers, framed by hand."""
    inputs, raw = [], []
    for name, array in tensors.items():
        datatype = (datatypes or {}).get(name) or KSERVE[torch.from_numpy(array).dtype]
        data = np.ascontiguousarray(array).tobytes()
        inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(data)},
            }
        )
        raw.append(data)
    head = json.dumps({"inputs": inputs, **header}).encode()
    return head + b"".join(raw), {"Inference-Header-Content-Length": str(len(head))}


def read_binary(response: httpx.Response) -> dict[str, np.ndarray]:
    """Parse a binary-extension response by hand."""
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    out, offset = {}, length
    dtypes = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "BF16": "<u2", "INT64": "<i8"}
    for o in header["outputs"]:
        size = o["parameters"]["binary_data_size"]
        chunk = response.content[offset : offset + size]
        out[o["name"]] = np.frombuffer(chunk, dtypes[o["datatype"]]).reshape(o["shape"])
        offset += size
    assert offset == len(response.content)
    return out


def test_binary_request_and_response_by_hand(http: httpx.Client) -> None:
    tensors, params = make_case("cross_entropy")
    arrays = {k: v.numpy() for k, v in tensors.items()}
    body, headers = binary_request(
        arrays,
        parameters={**params, "binary_data_output": True},
        outputs=[{"name": "grad_input"}, {"name": "loss"}],
        id="req-1",
    )
    # The header length splits the body whatever the Content-Type says.
    r = http.post(
        "/v2/models/cross_entropy/infer",
        content=body,
        headers={**headers, "Content-Type": "text/plain"},
    )
    assert r.status_code == 200, r.text
    header = json.loads(r.content[: int(r.headers["Inference-Header-Content-Length"])])
    assert header["id"] == "req-1" and header["model_name"] == "cross_entropy"
    assert [o["name"] for o in header["outputs"]] == ["grad_input", "loss"]  # requested order
    out = read_binary(r)
    value, grads = reference("cross_entropy", tensors, params, ["input"])
    torch.testing.assert_close(torch.from_numpy(out["loss"].copy()), value)
    torch.testing.assert_close(torch.from_numpy(out["grad_input"].copy()), grads["input"])


def test_json_nested_data_and_reserved_parameters_ignored(http: httpx.Client) -> None:
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    request = {
        "inputs": [
            {"name": "input", "shape": [3, 4], "datatype": "FP64", "data": x.double().tolist()},
            {"name": "target", "shape": [3, 4], "datatype": "FP64", "data": y.double().tolist()},
        ],
        "parameters": {
            "reduction": "sum",
            "binary_data_output": False,
            "priority": 0,
            "triton_enable_empty_final_response": False,
        },
    }
    r = http.post("/v2/models/lossreg:mse_loss/infer", json=request)
    assert r.status_code == 200, r.text
    assert "Inference-Header-Content-Length" not in r.headers
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert set(outputs) == {"loss", "grad_input"}
    assert outputs["loss"]["datatype"] == "FP64" and outputs["loss"]["shape"] == []
    expected = F.mse_loss(x.double(), y.double(), reduction="sum").item()
    assert outputs["loss"]["data"][0] == pytest.approx(expected, rel=1e-12)
    grad = np.array(outputs["grad_input"]["data"]).reshape(3, 4)
    np.testing.assert_allclose(grad, (2 * (x.double() - y.double())).numpy(), rtol=1e-12)


def test_value_only_when_only_loss_is_requested(http: httpx.Client) -> None:
    tensors, params = make_case("gaussian_nll_loss")
    body, headers = binary_request(
        {k: v.numpy() for k, v in tensors.items()},
        outputs=[{"name": "loss", "parameters": {"binary_data": True}}],
    )
    r = http.post("/v2/models/gaussian_nll_loss/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = read_binary(r)
    assert list(out) == ["loss"]
    value, _ = reference("gaussian_nll_loss", tensors, params, [])
    torch.testing.assert_close(torch.from_numpy(out["loss"].copy()), value)


def test_mixed_binary_and_json_outputs(http: httpx.Client) -> None:
    tensors, params = make_case("gaussian_nll_loss")
    body, headers = binary_request(
        {k: v.numpy() for k, v in tensors.items()},
        outputs=[{"name": "loss"}, {"name": "grad_var", "parameters": {"binary_data": True}}],
    )
    r = http.post("/v2/models/gaussian_nll_loss/infer", content=body, headers=headers)
    length = int(r.headers["Inference-Header-Content-Length"])
    header = json.loads(r.content[:length])
    loss, grad_var = header["outputs"]
    assert "data" in loss and grad_var["parameters"]["binary_data_size"] == 3 * 4 * 4
    value, grads = reference("gaussian_nll_loss", tensors, params, ["var"])
    assert loss["data"][0] == pytest.approx(value.item(), rel=1e-6)
    got = np.frombuffer(r.content[length:], "<f4").reshape(3, 4)
    torch.testing.assert_close(torch.from_numpy(got.copy()), grads["var"])


def test_grad_loss_is_the_upstream_gradient(http: httpx.Client) -> None:
    tensors, _ = make_case("l1_loss")
    tensors.pop("weight")
    upstream = torch.rand(3, 4, generator=torch.Generator().manual_seed(3))
    arrays = {**{k: v.numpy() for k, v in tensors.items()}, "grad_loss": upstream.numpy()}
    body, headers = binary_request(
        arrays, parameters={"reduction": "none"}, outputs=[{"name": "loss"}, {"name": "grad_input"}]
    )
    r = http.post("/v2/models/l1_loss/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    x = tensors["input"].clone().requires_grad_(True)
    value = F.l1_loss(x, tensors["target"], reduction="none")
    (grad,) = torch.autograd.grad(value, x, upstream)
    assert out["loss"]["shape"] == [3, 4]
    np.testing.assert_allclose(np.array(out["grad_input"]["data"]).reshape(3, 4), grad.numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_datatypes_keep_their_dtype(http: httpx.Client, dtype: torch.dtype) -> None:
    tensors, params = make_case("smooth_l1_loss", dtype=dtype)
    if dtype == torch.bfloat16:
        arrays = {k: v.view(torch.int16).numpy().view(np.uint16) for k, v in tensors.items()}
        datatypes = dict.fromkeys(arrays, "BF16")
    else:
        arrays, datatypes = {k: v.numpy() for k, v in tensors.items()}, None
    body, headers = binary_request(
        arrays, datatypes, parameters={**params, "binary_data_output": True}
    )
    r = http.post("/v2/models/smooth_l1_loss/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = read_binary(r)
    value, grads = reference("smooth_l1_loss", tensors, params, ["input"])
    got = torch.from_numpy(out["grad_input"].copy())
    if dtype == torch.bfloat16:
        got = got.view(torch.bfloat16)
    assert got.dtype == dtype
    torch.testing.assert_close(got, grads["input"])


def test_int32_class_indices_are_cast(http: httpx.Client) -> None:
    """KServe clients often send INT32 labels; the spec's cast makes them int64."""
    tensors, params = make_case("nll_loss")
    arrays = {"input": tensors["input"].numpy(), "target": tensors["target"].int().numpy()}
    body, headers = binary_request(arrays)
    r = http.post("/v2/models/nll_loss/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    value, _ = reference("nll_loss", tensors, params, [])
    assert r.json()["outputs"][0]["data"][0] == pytest.approx(value.item(), rel=1e-6)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_content_and_accept_encoding(http: httpx.Client, coding: str) -> None:
    tensors, params = make_case("mse_loss")
    tensors = {k: v.repeat(20, 20) for k, v in tensors.items()}
    body, headers = binary_request(
        {k: v.numpy() for k, v in tensors.items()}, parameters={"binary_data_output": True}
    )
    packed = gzip.compress(body) if coding == "gzip" else zlib.compress(body)
    request = http.build_request(
        "POST",
        "/v2/models/mse_loss/infer",
        content=packed,
        headers={**headers, "Content-Encoding": coding, "Accept-Encoding": coding},
    )
    r = http.send(request)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Encoding"] == coding  # httpx has decoded r.content for us
    out = read_binary(r)
    value, grads = reference("mse_loss", tensors, params, ["input"])
    torch.testing.assert_close(torch.from_numpy(out["grad_input"].copy()), grads["input"])


def test_identity_response_when_not_asked(http: httpx.Client) -> None:
    tensors, _ = make_case("mse_loss")
    body, headers = binary_request({k: v.repeat(20, 20).numpy() for k, v in tensors.items()})
    r = http.post(
        "/v2/models/mse_loss/infer",
        content=body,
        headers={**headers, "Accept-Encoding": "identity"},
    )
    assert r.status_code == 200 and "Content-Encoding" not in r.headers


def test_versioned_routes(http: httpx.Client) -> None:
    version = http.get("/v2/models/mse_loss").json()["versions"][0]
    assert http.get(f"/v2/models/mse_loss/versions/{version}").status_code == 200
    assert http.get(f"/v2/models/mse_loss/versions/{version}/ready").json()["ready"] is True
    tensors, _ = make_case("mse_loss")
    body, headers = binary_request({k: v.numpy() for k, v in tensors.items()})
    r = http.post(f"/v2/models/mse_loss/versions/{version}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    wrong = http.post(
        "/v2/models/mse_loss/versions/0.0.0-nope/infer", content=body, headers=headers
    )
    assert wrong.status_code == 404 and wrong.json()["field"] == "version"


def test_model_metadata_describes_inputs_and_outputs(http: httpx.Client) -> None:
    meta = http.get("/v2/models/multi_margin_loss").json()
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert set(inputs) == {"input", "target", "weight", "grad_loss"}
    assert inputs["input"]["shape"] == [-1, -1]  # declared "N C"
    assert inputs["input"]["datatype"] == "FP32" and inputs["target"]["datatype"] == "INT64"
    assert inputs["weight"]["parameters"]["optional"] is True
    assert [o["name"] for o in meta["outputs"]] == ["loss", "grad_input"]
    assert http.get("/v2/models/lossreg%3Amulti_margin_loss").json()["name"] == "multi_margin_loss"


def test_request_id_is_echoed_or_made(http: httpx.Client) -> None:
    assert (
        http.get("/v2/health/live", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    made = http.get("/v2/models/nope").headers["X-Request-ID"]
    assert len(made) == 32 and made != http.get("/v2/health/live").headers["X-Request-ID"]
