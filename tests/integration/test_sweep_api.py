"""POST /v1/losses/{name}/sweep on a real server: values and gradients against torch, limits,
bad input naming the field, the non-finite policy, API keys and the OpenAPI document."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossreg.protocol.sweep import MAX_SWEEP_ELEMENTS, MAX_SWEEP_POINTS
from lossreg_service.settings import Settings
from tests.support.loss_cases import CASES, make_case, reference
from tests.support.server import serve

OFFSETS = [-0.05, -0.02, 0.0, 0.03, 0.05]


@pytest.fixture(scope="module")
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=60) as client:
        yield client


def _typed(t: torch.Tensor) -> dict[str, Any]:
    dtype = "float32" if t.is_floating_point() else "int64"
    return {"dtype": dtype, "shape": list(t.shape), "data": t.flatten().tolist()}


def _swept_input(http: httpx.Client, name: str, tensors: dict[str, torch.Tensor]) -> str:
    spec = http.get(f"/v1/losses/{name}").json()
    return next(
        i["name"]
        for i in spec["inputs"]
        if i["differentiable"] and i["name"] in tensors and tensors[i["name"]].is_floating_point()
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_sweep_matches_torch_at_every_point(http: httpx.Client, name: str) -> None:
    tensors, params = make_case(name)
    swept = _swept_input(http, name, tensors)
    index = [0] * tensors[swept].dim()
    start = float(tensors[swept][tuple(index)])
    values = [start + d for d in OFFSETS]
    body = {
        "inputs": {k: _typed(v) for k, v in tensors.items()},
        "params": params,
        "sweep": {"input": swept, "index": index, "values": values},
    }
    r = http.post(f"/v1/losses/{name}/sweep", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["name"] == name and out["input"] == swept and out["index"] == index
    assert out["nonfinite"] == [] and len(out["x"]) == len(values)
    for k, x in enumerate(out["x"]):
        assert x == pytest.approx(values[k], rel=1e-6)  # float32-rounded
        moved = {n: t.clone() for n, t in tensors.items()}
        moved[swept][tuple(index)] = x
        value, grads = reference(name, moved, params, [swept])
        assert out["loss"][k] == pytest.approx(value.item(), rel=1e-5, abs=1e-6)
        assert out["grad"][k] == pytest.approx(grads[swept][tuple(index)].item(), rel=1e-5,
                                               abs=1e-6)  # fmt: skip


def _focal(x: torch.Tensor, y: int, gamma: float) -> torch.Tensor:
    """Multiclass focal loss of one sample, straight from its formula."""
    log_p = x.log_softmax(-1)[y]
    return -((1 - log_p.exp()) ** gamma) * log_p


@pytest.mark.parametrize("gamma", [0.0, 2.0, 5.0])
def test_focal_sweep_over_range_matches_the_formula(http: httpx.Client, gamma: float) -> None:
    body = {
        "inputs": {"input": [[0.0, 1.0, -1.0]], "target": [0]},
        "params": {"gamma": gamma},
        "sweep": {"input": "input", "index": [0, 0], "start": -6, "stop": 6, "points": 25},
    }
    r = http.post("/v1/losses/focal/sweep", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["x"][0] == -6 and out["x"][-1] == 6 and len(out["x"]) == 25
    for k, x in enumerate(out["x"]):
        leaf = torch.tensor([x, 1.0, -1.0], dtype=torch.float64, requires_grad=True)
        value = _focal(leaf, 0, gamma)
        (grad,) = torch.autograd.grad(value, leaf)
        assert out["loss"][k] == pytest.approx(value.item(), rel=1e-5, abs=1e-6)
        assert out["grad"][k] == pytest.approx(grad[0].item(), rel=1e-4, abs=1e-6)


def test_one_point_equals_evaluate(http: httpx.Client) -> None:
    inputs = {"input": [[2.0, 0.5, -1.0]], "target": [2]}
    params = {"label_smoothing": 0.1}
    sweep = {"input": "input", "index": [0, 1], "values": [0.75]}
    out = http.post("/v1/losses/cross_entropy/sweep",
                    json={"inputs": inputs, "params": params, "sweep": sweep}).json()  # fmt: skip
    moved = {"input": [[2.0, 0.75, -1.0]], "target": [2]}
    single = http.post("/v1/losses/cross_entropy/evaluate",
                       json={"inputs": moved, "params": params}).json()  # fmt: skip
    # the same float32 numbers, bit for bit (JSON may spell a float32 in more than one way)
    assert np.float32(out["loss"][0]) == np.float32(single["loss"])
    assert np.float32(out["grad"][0]) == np.float32(single["grads"]["input"][0][1])


def test_input_that_is_not_differentiable_has_no_gradient(http: httpx.Client) -> None:
    # soft_margin_loss's target (±1 labels) has no gradient in torch either.
    body = {
        "inputs": {"input": [0.3], "target": [1.0]},
        "sweep": {"input": "target", "index": [0], "values": [-1.0, 1.0]},
    }
    out = http.post("/v1/losses/soft_margin_loss/sweep", json=body).json()
    assert out["grad"] is None
    expected = [F.soft_margin_loss(torch.tensor([0.3]), torch.tensor([t])).item()
                for t in (-1.0, 1.0)]  # fmt: skip
    assert out["loss"] == pytest.approx(expected, rel=1e-6)


BASE = {"inputs": {"input": [[2.0, 0.5, -1.0]], "target": [0]}}


@pytest.mark.parametrize(
    ("sweep", "extra", "status", "field"),
    [
        ({"input": "input", "index": [0, 0], "start": 0, "stop": 1,
          "points": MAX_SWEEP_POINTS + 1}, {}, 400, "sweep.points"),
        ({"input": "input", "index": [0, 0], "values": [0.0] * (MAX_SWEEP_POINTS + 1)},
         {}, 400, "sweep.values"),
        ({"input": "input", "index": [0, 0], "start": 0, "stop": 1}, {}, 400, "sweep"),
        ({"input": "input", "index": [0, 0], "values": [1.0], "points": 3}, {}, 400, "sweep"),
        ({"input": "logits", "index": [0, 0], "values": [1.0]}, {}, 422, "sweep.input"),
        ({"input": "target", "index": [0], "values": [1.0]}, {}, 422, "sweep.input"),
        ({"input": "input", "index": [0, 3], "values": [1.0]}, {}, 422, "sweep.index"),
        ({"input": "input", "index": [0], "values": [1.0]}, {}, 422, "sweep.index"),
        ({"input": "input", "index": [0, 0], "values": [1e39]}, {}, 422, "sweep.values"),
        ({"input": "input", "index": [0, 0], "values": [1.0]},
         {"params": {"label_smoothing": 2}}, 422, "label_smoothing"),
        ({"input": "input", "index": [0, 0], "values": [1.0]},
         {"params": {"reduction": "none"}}, 422, "reduction"),
        ({"input": "input", "index": [0, 0], "values": [1.0]},
         {"inputs": {"input": [[2.0, 0.5, -1.0]]}}, 422, "target"),
        ({"input": "input", "index": [0, 0], "values": [1.0]},
         {"colour": "red"}, 400, "colour"),
    ],
)  # fmt: skip
def test_bad_sweeps_are_4xx_naming_the_field(
    http: httpx.Client, sweep: dict[str, Any], extra: dict[str, Any], status: int, field: str
) -> None:
    r = http.post("/v1/losses/cross_entropy/sweep", json={**BASE, "sweep": sweep, **extra})
    assert r.status_code == status, r.text
    assert r.json()["field"] == field, r.text


def test_the_most_points_are_accepted(http: httpx.Client) -> None:
    sweep = {"input": "input", "index": [0, 0], "start": -1, "stop": 1, "points": MAX_SWEEP_POINTS}
    r = http.post("/v1/losses/cross_entropy/sweep", json={**BASE, "sweep": sweep})
    assert r.status_code == 200, r.text
    assert len(r.json()["loss"]) == MAX_SWEEP_POINTS


def test_points_times_input_size_is_bounded(http: httpx.Client) -> None:
    size = MAX_SWEEP_ELEMENTS // 1000 + 1  # 1000 points x (size + 1) elements: just past it
    x = np.zeros(size, np.float32)
    body = {
        "inputs": {"input": {"dtype": "float32", "shape": [size],
                             "b64": base64.b64encode(x.tobytes()).decode()},
                   "target": {"dtype": "float32", "shape": [size],
                              "b64": base64.b64encode(x.tobytes()).decode()}},
        "sweep": {"input": "input", "index": [0], "start": 0, "stop": 1, "points": 1000},
    }  # fmt: skip
    r = http.post("/v1/losses/mse_loss/sweep", json=body)
    assert r.status_code == 422 and r.json()["field"] == "sweep.points", r.text


def test_nonfinite_points_rejected_or_flagged(http: httpx.Client) -> None:
    body: dict[str, Any] = {
        "inputs": {"input": [0.0], "target": [0.0]},
        "sweep": {"input": "input", "index": [0], "values": [1.0, 1e30, 2.0]},
    }
    rejected = http.post("/v1/losses/mse_loss/sweep", json=body)  # (1e30)^2 overflows float32
    assert rejected.status_code == 422, rejected.text
    error = rejected.json()
    assert error["code"] == "non_finite" and error["field"] == "loss"
    assert "point 1" in error["error"]
    allowed = http.post("/v1/losses/mse_loss/sweep", json={**body, "nonfinite": "allow"}).json()
    assert allowed["loss"] == [1.0, None, 4.0] and allowed["nonfinite"] == ["loss"]
    assert allowed["grad"] == [2.0, pytest.approx(2e30, rel=1e-6), 4.0]


def test_nonfinite_input_is_rejected_naming_it(http: httpx.Client) -> None:
    nan = base64.b64encode(np.array([np.nan], np.float32).tobytes()).decode()
    body = {
        "inputs": {"input": [0.0], "target": {"dtype": "float32", "shape": [1], "b64": nan}},
        "sweep": {"input": "input", "index": [0], "values": [1.0, 2.0]},
    }
    r = http.post("/v1/losses/mse_loss/sweep", json=body)
    assert r.status_code == 422 and r.json()["field"] == "target", r.text


def test_unknown_loss_is_404(http: httpx.Client) -> None:
    r = http.post("/v1/losses/cross_entropi/sweep", json=BASE)
    assert r.status_code == 404 and "cross_entropy" in r.json()["suggestions"]


def test_sweep_is_in_the_openapi_document(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    assert "post" in doc["paths"]["/v1/losses/{name}/sweep"]
    axis = doc["components"]["schemas"]["SweepAxis"]
    assert axis["properties"]["points"]["anyOf"][0]["maximum"] == MAX_SWEEP_POINTS


def test_sweep_needs_the_api_key_when_set() -> None:
    body = {**BASE, "sweep": {"input": "input", "index": [0, 0], "values": [0.0, 1.0]}}
    with serve(Settings(device="cpu", log_level="warning", api_keys=["k1"])) as url:
        assert httpx.post(f"{url}/v1/losses/cross_entropy/sweep", json=body).status_code == 401
        ok = httpx.post(f"{url}/v1/losses/cross_entropy/sweep", json=body,
                        headers={"Authorization": "Bearer k1"})  # fmt: skip
        assert ok.status_code == 200 and len(ok.json()["loss"]) == 2
        page = httpx.get(f"{url}/")  # the page itself is open: it asks for the key
        assert page.status_code == 200 and "lossreg explorer" in page.text
