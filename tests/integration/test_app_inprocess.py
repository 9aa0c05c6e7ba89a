"""The app in process through httpx's ASGI transport (lifespan run, no socket, no uvicorn):
KServe v2 inference in JSON and binary on the fast path (``/v2/models/{name}/infer``) and on
FastAPI's versioned route, and the ``/v1`` routes, each compared with torch itself."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossreg_service.settings import Settings
from tests.support.asgi import app_client
from tests.support.loss_cases import make_case, reference

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

DATATYPES = {torch.float32: "FP32", torch.float64: "FP64", torch.int64: "INT64"}
CASES = ["cross_entropy", "mse_loss", "huber_loss", "binary_cross_entropy_with_logits"]


def json_inputs(tensors: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "shape": list(t.shape),
            "datatype": DATATYPES[t.dtype],
            "data": t.flatten().tolist(),
        }
        for name, t in tensors.items()
    ]


def outputs_of(body: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {
        o["name"]: torch.tensor(o["data"], dtype=torch.float32).reshape(o["shape"])
        for o in body["outputs"]
    }


class TritonReply:
    """An httpx response as tritonclient's `InferResult` reads one: headers by ``get``, the body
    by ``read``, so tritonclient finds the binary header length under the name it knows."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.offset = 0

    def get(self, name: str) -> str | None:
        return self.response.headers.get(name)

    def read(self, length: int = -1) -> bytes:
        start = self.offset
        self.offset = len(self.response.content) if length < 0 else start + length
        return self.response.content[start : self.offset]


async def infer_path(client: httpx.AsyncClient, name: str, versioned: bool) -> str:
    if not versioned:
        return f"/v2/models/{name}/infer"  # answered by the InferFastPath middleware
    version = (await client.get(f"/v2/models/{name}")).json()["versions"][0]
    return f"/v2/models/{name}/versions/{version}/infer"  # FastAPI's route


@pytest.mark.parametrize("versioned", [False, True], ids=["fast-path", "fastapi-route"])
@pytest.mark.parametrize("name", CASES)
async def test_v2_json_infer_matches_torch(
    asgi_client: httpx.AsyncClient, name: str, versioned: bool
) -> None:
    tensors, params = make_case(name)
    body = {
        "inputs": json_inputs(tensors),
        "parameters": params,
        "outputs": [{"name": "loss"}, {"name": "grad_input"}],
    }
    r = await asgi_client.post(await infer_path(asgi_client, name, versioned), json=body)
    assert r.status_code == 200, r.text
    assert r.json()["model_name"] == name
    got = outputs_of(r.json())
    value, grads = reference(name, tensors, params, ["input"])
    torch.testing.assert_close(got["loss"], value)
    torch.testing.assert_close(got["grad_input"], grads["input"])


@pytest.mark.parametrize("versioned", [False, True], ids=["fast-path", "fastapi-route"])
async def test_v2_binary_infer_with_tritonclient_framing(
    asgi_client: httpx.AsyncClient, versioned: bool
) -> None:
    """Triton's binary tensor extension, framed and parsed by tritonclient's own codec."""
    http = pytest.importorskip("tritonclient.http")
    tensors, params = make_case("cross_entropy", dtype=torch.float64)
    inputs = []
    for name, t in tensors.items():
        one = http.InferInput(name, list(t.shape), DATATYPES[t.dtype])
        one.set_data_from_numpy(t.numpy(), binary_data=True)
        inputs.append(one)
    outputs = [http.InferRequestedOutput(n, binary_data=True) for n in ("loss", "grad_input")]
    body, header_length = http.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, parameters=params
    )
    headers = {"Inference-Header-Content-Length": str(header_length)}
    r = await asgi_client.post(
        await infer_path(asgi_client, "cross_entropy", versioned), content=body, headers=headers
    )
    assert r.status_code == 200, r.text
    result = http.InferResult(TritonReply(r), verbose=False)  # reads the header it names
    value, grads = reference("cross_entropy", tensors, params, ["input"])
    loss = result.as_numpy("loss")
    assert loss.dtype == np.float64
    torch.testing.assert_close(torch.tensor(loss), value)
    torch.testing.assert_close(torch.tensor(result.as_numpy("grad_input")), grads["input"])


async def test_concurrent_infers_each_get_their_own_values(
    asgi_client: httpx.AsyncClient,
) -> None:
    """Requests in flight together (the dynamic batcher may merge them) are answered apart."""
    cases = [make_case("mse_loss", seed=seed) for seed in range(8)]
    answers = await asyncio.gather(
        *(
            asgi_client.post(
                "/v2/models/mse_loss/infer",
                json={"inputs": json_inputs(t), "parameters": p},
            )
            for t, p in cases
        )
    )
    for (tensors, params), r in zip(cases, answers, strict=True):
        assert r.status_code == 200, r.text
        value, grads = reference("mse_loss", tensors, params, ["input"])
        got = outputs_of(r.json())
        torch.testing.assert_close(got["loss"], value)
        torch.testing.assert_close(got["grad_input"], grads["input"])


async def test_fast_path_errors_name_the_field(asgi_client: httpx.AsyncClient) -> None:
    tensors, _ = make_case("mse_loss")
    r = await asgi_client.post("/v2/models/mse_losss/infer", json={"inputs": json_inputs(tensors)})
    assert r.status_code == 404 and r.json()["field"] == "name", r.text
    assert "mse_loss" in r.json()["suggestions"]
    bad = json_inputs(tensors)
    bad[1]["datatype"] = "FP99"
    r = await asgi_client.post("/v2/models/mse_loss/infer", json={"inputs": bad})
    assert r.status_code == 400 and r.json()["field"] == "target", r.text
    r = await asgi_client.post(
        "/v2/models/mse_loss/infer", content=b"{not json", headers={"content-type": "x"}
    )
    assert 400 <= r.status_code < 500 and r.json()["code"], r.text


async def test_fast_path_checks_the_api_key() -> None:
    tensors, params = make_case("mse_loss")
    body = {"inputs": json_inputs(tensors), "parameters": params}
    settings = Settings(device="cpu", log_level="warning", api_keys=["sekrit"])
    async with app_client(settings) as client:
        r = await client.post("/v2/models/mse_loss/infer", json=body)
        assert r.status_code == 401 and r.json()["field"] == "Authorization", r.text
        r = await client.post(
            "/v2/models/mse_loss/infer", json=body, headers={"Authorization": "Bearer sekrit"}
        )
        assert r.status_code == 200, r.text
        value, _ = reference("mse_loss", tensors, params, [])
        torch.testing.assert_close(outputs_of(r.json())["loss"], value)


async def test_v1_evaluate_nested_and_b64_match_torch(asgi_client: httpx.AsyncClient) -> None:
    tensors, params = make_case("cross_entropy")
    x = tensors["input"]
    typed = {
        "dtype": "float32",
        "shape": list(x.shape),
        "b64": base64.b64encode(x.numpy().tobytes()).decode(),
    }
    body = {
        "inputs": {**{k: v.tolist() for k, v in tensors.items()}, "input": typed},
        "params": params,
        "grad": ["input"],
    }
    r = await asgi_client.post("/v1/losses/cross_entropy/evaluate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    value, grads = reference("cross_entropy", tensors, params, ["input"])
    assert out["loss"] == pytest.approx(value.item(), rel=1e-6)
    grad = out["grads"]["input"]  # in the form its input was sent in: typed, base64
    assert grad["shape"] == list(x.shape)
    got = np.frombuffer(base64.b64decode(grad["b64"]), np.float32).reshape(x.shape)
    torch.testing.assert_close(torch.tensor(got), grads["input"])

    nested = {"inputs": {k: v.tolist() for k, v in tensors.items()}, "params": params}
    out = (await asgi_client.post("/v1/losses/cross_entropy/evaluate", json=nested)).json()
    assert out["loss"] == pytest.approx(value.item(), rel=1e-6)
    torch.testing.assert_close(torch.tensor(out["grads"]["input"]), grads["input"])


async def test_v1_composition_matches_torch(asgi_client: httpx.AsyncClient) -> None:
    tensors, _ = make_case("multi_margin_loss")
    body = {
        "terms": [
            {"loss": "cross_entropy", "weight": 0.25, "params": {"label_smoothing": 0.1}},
            {"loss": "multi_margin_loss", "weight": 2.0, "label": "hinge"},
        ],
        "inputs": {k: v.tolist() for k, v in tensors.items()},
    }
    r = await asgi_client.post("/v1/evaluate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    x = tensors["input"].clone().requires_grad_(True)
    ce = F.cross_entropy(x, tensors["target"], label_smoothing=0.1)
    hinge = F.multi_margin_loss(x, tensors["target"])
    total = 0.25 * ce + 2.0 * hinge
    (grad,) = torch.autograd.grad(total, x)
    assert out["terms"]["cross_entropy"] == pytest.approx(ce.item(), rel=1e-6)
    assert out["terms"]["hinge"] == pytest.approx(hinge.item(), rel=1e-6)
    assert out["loss"] == pytest.approx(total.item(), rel=1e-6)
    torch.testing.assert_close(torch.tensor(out["grads"]["input"]), grad)


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        (
            "/v1/losses/mse_loss/evaluate",
            {"inputs": {"input": [1.0], "target": [1.0]}, "params": {"reductoin": "sum"}},
            422,
            "reductoin",
        ),
        (
            "/v1/losses/mse_loss/evaluate",
            {"inputs": {"input": [[1.0], [2.0, 3.0]], "target": [1.0]}},
            400,
            "input",
        ),
        ("/v1/losses/mse_loss/evaluate", {"inputs": [1.0]}, 400, "inputs"),
        (
            "/v1/evaluate",
            {"terms": [{"loss": "cross_entropyy"}], "inputs": {"input": [[0.1]], "target": [0]}},
            404,
            "terms.0.loss",
        ),
        ("/v1/evaluate", {"terms": [], "inputs": {"input": [[0.1]], "target": [0]}}, 400, "terms"),
    ],
)
async def test_v1_errors_name_the_field(
    asgi_client: httpx.AsyncClient, path: str, body: dict[str, Any], status: int, field: str
) -> None:
    r = await asgi_client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and r.json()["error"], r.json()
