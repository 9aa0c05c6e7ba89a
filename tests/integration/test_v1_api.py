"""The /v1 JSON API: catalog, one-loss evaluation in every tensor form, compositions."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import httpx
import jsonschema
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.support.loss_cases import make_case, reference


@pytest.fixture(scope="module")
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


def test_list_filters_by_pattern_exclude_and_tag(http: httpx.Client) -> None:
    everything = http.get("/v1/losses").json()
    assert everything["count"] == len(everything["losses"]) >= 20
    names = [
        s["name"] for s in http.get("/v1/losses", params={"pattern": "*margin*"}).json()["losses"]
    ]
    assert names and all("margin" in n for n in names) and "multi_margin_loss" in names
    excluded = http.get("/v1/losses", params=[("pattern", "*margin*"), ("exclude", "multi*")])
    assert "multi_margin_loss" not in [s["name"] for s in excluded.json()["losses"]]
    tagged = http.get("/v1/losses", params={"tag": "regression"}).json()["losses"]
    assert "mse_loss" in [s["name"] for s in tagged]
    assert all("regression" in s["tags"] for s in tagged)


def test_show_gives_the_full_spec(http: httpx.Client) -> None:
    spec = http.get("/v1/losses/huber_loss").json()
    assert spec["name"] == "huber_loss" and spec["qualified_name"] == "lossreg:huber_loss"
    assert spec["distribution"] == "lossreg" and spec["version"] and spec["available"] is True
    assert spec["summary"] and [i["name"] for i in spec["inputs"]] == ["input", "target"]
    schema = spec["params_schema"]
    jsonschema.validate({"delta": 0.5, "reduction": "sum"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"delta": -1}, schema)
    assert http.get("/v1/losses/lossreg:huber_loss").json()["name"] == "huber_loss"
    missing = http.get("/v1/losses/huber")
    assert missing.status_code == 404 and "huber_loss" in missing.json()["suggestions"]


def test_evaluate_nested_lists(http: httpx.Client) -> None:
    tensors, params = make_case("cross_entropy")
    body = {
        "inputs": {k: v.tolist() for k, v in tensors.items()},
        "params": params,
        "grad": ["input"],
    }
    r = http.post("/v1/losses/cross_entropy/evaluate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    value, grads = reference("cross_entropy", tensors, params, ["input"])
    assert out["dtype"] == "float32" and out["shape"] == []
    assert out["loss"] == pytest.approx(value.item(), rel=1e-6)
    torch.testing.assert_close(torch.tensor(out["grads"]["input"]), grads["input"])


def test_evaluate_typed_data_and_b64(http: httpx.Client) -> None:
    tensors, params = make_case("gaussian_nll_loss", dtype=torch.float64)
    inputs = {
        "input": {"dtype": "float64", "shape": [3, 4], "data": tensors["input"].flatten().tolist()},
        "target": {"dtype": "float64", "shape": [3, 4], "data": tensors["target"].tolist()},
        "var": {
            "dtype": "float64",
            "shape": [3, 4],
            "b64": base64.b64encode(tensors["var"].numpy().tobytes()).decode(),
        },
    }
    r = http.post("/v1/losses/gaussian_nll_loss/evaluate", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    out = r.json()
    value, grads = reference("gaussian_nll_loss", tensors, params, ["input", "var"])
    assert out["dtype"] == "float64" and out["loss"] == pytest.approx(value.item(), rel=1e-12)
    grad_input = out["grads"]["input"]
    assert grad_input["dtype"] == "float64" and grad_input["shape"] == [3, 4]
    np.testing.assert_allclose(np.array(grad_input["data"]).reshape(3, 4), grads["input"])
    grad_var = out["grads"]["var"]  # sent as b64, answered as b64
    raw = np.frombuffer(base64.b64decode(grad_var["b64"]), np.float64).reshape(3, 4)
    np.testing.assert_allclose(raw, grads["var"].numpy(), rtol=1e-12)


def test_evaluate_non_scalar_with_grad_loss(http: httpx.Client) -> None:
    x = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    y = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    upstream = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    body = {
        "inputs": {"input": x.tolist(), "target": y.tolist()},
        "params": {"reduction": "none"},
        "grad_loss": upstream.tolist(),
    }
    out = http.post("/v1/losses/mse_loss/evaluate", json=body).json()
    leaf = x.clone().requires_grad_(True)
    value = F.mse_loss(leaf, y, reduction="none")
    (grad,) = torch.autograd.grad(value, leaf, upstream)
    assert out["shape"] == [2, 2]
    torch.testing.assert_close(torch.tensor(out["loss"]), value.detach())
    torch.testing.assert_close(torch.tensor(out["grads"]["input"]), grad)


def test_compose_weighted_terms(http: httpx.Client) -> None:
    tensors, _ = make_case("multi_margin_loss")
    body = {
        "terms": [
            {"loss": "cross_entropy", "weight": 0.7, "params": {"label_smoothing": 0.05}},
            {
                "loss": "multi_margin_loss",
                "weight": 0.3,
                "params": {"margin": 0.5},
                "label": "hinge",
            },
        ],
        "inputs": {k: v.tolist() for k, v in tensors.items()},
    }
    r = http.post("/v1/evaluate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    x = tensors["input"].clone().requires_grad_(True)
    ce = F.cross_entropy(x, tensors["target"], label_smoothing=0.05)
    hinge = F.multi_margin_loss(x, tensors["target"], margin=0.5)
    total = 0.7 * ce + 0.3 * hinge
    (grad,) = torch.autograd.grad(total, x)
    assert out["terms"]["cross_entropy"] == pytest.approx(ce.item(), rel=1e-6)
    assert out["terms"]["hinge"] == pytest.approx(hinge.item(), rel=1e-6)
    assert out["weights"] == {"cross_entropy": 0.7, "hinge": 0.3}
    assert out["loss"] == pytest.approx(total.item(), rel=1e-6)
    torch.testing.assert_close(torch.tensor(out["grads"]["input"]), grad)


def test_compose_errors_name_the_term(http: httpx.Client) -> None:
    inputs = {"input": [[0.1, 0.2]], "target": [1]}
    r = http.post("/v1/evaluate", json={"terms": [{"loss": "cross_entropyy"}], "inputs": inputs})
    assert r.status_code == 404 and r.json()["field"] == "terms.0.loss"
    twice = {
        "terms": [{"loss": "cross_entropy"}, {"loss": "cross_entropy", "weight": 2}],
        "inputs": inputs,
    }
    r = http.post("/v1/evaluate", json=twice)
    assert r.status_code == 422 and "distinct 'label'" in r.json()["error"]
    r = http.post("/v1/evaluate", json={"terms": [], "inputs": inputs})
    assert r.status_code == 400 and r.json()["field"] == "terms"
    none = {
        "terms": [{"loss": "mse_loss", "params": {"reduction": "none"}}],
        "inputs": {"input": [1.0, 2.0], "target": [0.0, 0.0]},
    }
    r = http.post("/v1/evaluate", json=none)
    # torch's backward() refuses a non-scalar loss; so does a composition without grad_loss
    assert r.status_code == 422 and "non-scalar loss" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "field", "message"),
    [
        (
            {"inputs": {"input": [[1.0], [2.0, 3.0]], "target": [1.0]}},
            400,
            "input",
            "not a rectangular list",
        ),
        ({"inputs": {"input": ["a"], "target": [1.0]}}, 400, "input", "must hold numbers"),
        (
            {"inputs": {"input": {"dtype": "float32", "shape": [1], "b64": "!!"}, "target": [1.0]}},
            400,
            "input",
            "b64 is not base64",
        ),
        (
            {
                "inputs": {
                    "input": {"dtype": "float32", "shape": [2], "b64": "AAAA"},
                    "target": [1.0],
                }
            },
            400,
            "input",
            "3 bytes of binary data",
        ),
        (
            {
                "inputs": {
                    "input": {"dtype": "complex64", "shape": [1], "data": [1]},
                    "target": [1.0],
                }
            },
            400,
            "input",
            "unsupported dtype 'complex64'",
        ),
        (
            {"inputs": {"input": {"shape": [1], "data": [1]}, "target": [1.0]}},
            400,
            "input",
            "dtype",
        ),
        (
            {"inputs": {"input": [1.0], "target": [1.0]}, "param": {}},
            400,
            "param",
            "unknown field 'param'",
        ),
        (
            {"inputs": {"input": [1.0], "target": [1.0]}, "params": {"beta": 1}},
            422,
            "beta",
            "unknown parameter 'beta'",
        ),
        (
            {"inputs": {"input": [1.0], "target": [1]}, "grad": ["target"]},
            422,
            "target",
            "only floating-point inputs have gradients",
        ),
        (
            {"inputs": {"input": [1.0], "target": [1.0]}, "params": {"reductoin": "sum"}},
            422,
            "reductoin",
            "(did you mean 'reduction'?)",
        ),
        (
            {"inputs": {"input": [1.0], "target": [1.0]}, "params": {"weight": [2.0]}},
            422,
            "weight",
            "'weight' is a tensor input, not a scalar parameter",
        ),
        (
            {
                "inputs": {"input": [1.0, 2.0], "target": [1.0, 0.0]},
                "grad": ["input"],
                "params": {"reduction": "none"},
            },
            422,
            "grad_loss",
            "a gradient of a non-scalar loss needs grad_loss",
        ),
        ({"inputs": [1.0]}, 400, "inputs", "valid dictionary"),
    ],
)
def test_evaluate_errors(
    http: httpx.Client, body: dict, status: int, field: str, message: str
) -> None:
    r = http.post("/v1/losses/mse_loss/evaluate", json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and message in r.json()["error"], r.json()


def test_openapi_documents_every_route_with_schemas(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    paths = doc["paths"]
    for path in (
        "/v2/models/{name}/infer",
        "/v1/losses/{name}/evaluate",
        "/v1/evaluate",
        "/v1/losses",
        "/v2",
        "/v2/health/ready",
        "/metrics",
    ):
        assert path in paths
    schemas = doc["components"]["schemas"]
    body = paths["/v1/evaluate"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/ComposeRequest"
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert "application/octet-stream" in infer["requestBody"]["content"]
    assert infer["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorResponse"
    )
    for name in (
        "InferRequest",
        "EvaluateRequest",
        "ComposeRequest",
        "EvaluateResponse",
        "ErrorResponse",
        "ModelMetadataResponse",
        "LossSpecResponse",
    ):
        assert name in schemas
    assert "example" in schemas["InferRequest"] and "example" in schemas["EvaluateRequest"]
    # every $ref resolves
    text = str(doc)

    for ref in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert ref in schemas, ref
