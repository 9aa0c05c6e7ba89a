"""The unbatched and promoted-integer input forms over the wire: `Client.evaluate` (KServe v2,
binary) and curl-style `/v1` JSON give torch's value and gradients."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch

from lossreg import Client
from tests.support.loss_cases import FORMS, make_form, reference


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as c:
        yield c


def _float_grads(client: Client, name: str, tensors: dict[str, torch.Tensor]) -> list[str]:
    spec = client.spec(name)
    return [t.name for t in spec.inputs if t.differentiable and tensors[t.name].is_floating_point()]


@pytest.mark.parametrize("form", list(FORMS))
def test_form_over_kserve_v2(client: Client, form: str) -> None:
    name, tensors, params = make_form(form)
    grad = _float_grads(client, name, tensors)
    result = client.evaluate(name, params=params, grad=grad, **tensors)
    value, grads = reference(name, tensors, params, grad)
    torch.testing.assert_close(result.loss, value)
    for key, expected in grads.items():
        torch.testing.assert_close(result.grads[key], expected)


@pytest.mark.parametrize(
    "form", ["ce unbatched index", "margin_ranking int target", "cosine unbatched"]
)
def test_form_over_v1_json(server_url: str, form: str) -> None:
    name, tensors, params = make_form(form)
    body = {
        "inputs": {
            k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape),
                "data": v.flatten().tolist()}
            for k, v in tensors.items()
        },
        "params": params,
    }  # fmt: skip
    r = httpx.post(f"{server_url}/v1/losses/{name}/evaluate", json=body, timeout=30)
    assert r.status_code == 200, r.text
    value, grads = reference(name, tensors, params, [])
    assert r.json()["loss"] == pytest.approx(float(value), rel=1e-5)
