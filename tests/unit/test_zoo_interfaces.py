"""The zoo through every interface: the registry and engine, the CLI, and the HTTP API.

Each loss is discovered through its entry point, evaluated by the engine and compared with a
direct call (value and gradient); its catalog entry carries a complete schema and its doc;
``lossreg show`` prints that doc; a real server evaluates it and answers 422 for bad input.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lossreg.errors import InvalidInput
from lossreg_service.cli import app
from lossreg_service.engine import evaluate
from lossreg_service.losses import zoo
from lossreg_service.registry import LossRegistry
from lossreg_service.settings import Settings
from tests.support.loss_cases import zoo_case as _case
from tests.support.server import serve

ZOO = sorted(zoo.__all__)


@pytest.fixture(scope="module")
def registry() -> LossRegistry:
    return LossRegistry.from_entry_points()


def test_every_zoo_loss_is_registered_from_lossreg(registry: LossRegistry) -> None:
    for name in ZOO:
        spec = registry.spec(name)
        assert spec.available and spec.distribution == "lossreg", name
        assert spec.entry_point.startswith("lossreg_service.losses.zoo."), name


@pytest.mark.parametrize("name", ZOO)
def test_engine_matches_a_direct_call(name: str, registry: LossRegistry) -> None:
    inputs, params = _case(name)
    result = evaluate(registry.get(name), inputs, params)

    leaf = inputs["input"].clone().requires_grad_(True)
    direct_inputs = {**inputs, "input": leaf}
    if not direct_inputs["target"].is_floating_point():
        direct_inputs["target"] = direct_inputs["target"].long()
    tensors = [direct_inputs.pop(k) for k in ("input", "target")]
    expected = getattr(zoo, name)(*tensors, **direct_inputs, **params)
    (grad,) = torch.autograd.grad(expected, leaf)
    torch.testing.assert_close(result.loss, expected.detach())
    assert list(result.grads) == ["input"]
    torch.testing.assert_close(result.grads["input"], grad)


@pytest.mark.parametrize("name", ["dice", "focal", "lovasz_softmax", "weighted_cross_entropy"])
def test_engine_vector_jacobian_product_of_unreduced_losses(
    name: str, registry: LossRegistry
) -> None:
    inputs, params = _case(name)
    params = {**params, "reduction": "none"}
    leaf = inputs["input"].clone().requires_grad_(True)
    target = inputs["target"].long()
    weight = {"weight": inputs["weight"]} if "weight" in inputs else {}
    expected = getattr(zoo, name)(leaf, target, **weight, **params)
    upstream = torch.rand(expected.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(expected, leaf, upstream)
    result = evaluate(registry.get(name), inputs, params, grad_loss=upstream)
    torch.testing.assert_close(result.loss, expected.detach())
    torch.testing.assert_close(result.grads["input"], grad)


@pytest.mark.parametrize("name", ZOO)
def test_specs_are_complete(name: str, registry: LossRegistry) -> None:
    spec = registry.spec(name)
    assert spec.summary and "Example" in spec.doc and f"lossreg eval {name}" in spec.doc
    assert "shapes" in spec.doc.lower() and spec.tags
    schema = spec.params_schema
    assert schema["additionalProperties"] is False
    for pname, prop in schema["properties"].items():
        assert "default" in prop, f"{name}.{pname} has no default in its schema"
    jsonschema.validate({k: v["default"] for k, v in schema["properties"].items()}, schema)
    assert [t.name for t in spec.inputs] == ["input", "target"]
    assert spec.differentiable == ("input",)


def test_schema_ranges_and_enums(registry: LossRegistry) -> None:
    props = {n: registry.spec(n).params_schema["properties"] for n in ZOO}
    assert props["dice"]["smooth"]["minimum"] == 0
    assert props["dice"]["mode"]["enum"] == ["binary", "multiclass", "multilabel"]
    assert props["tversky"]["alpha"]["minimum"] == 0 and props["tversky"]["beta"]["minimum"] == 0
    assert props["focal"]["gamma"]["minimum"] == 0
    alpha = props["focal"]["alpha"]["anyOf"][0]
    assert (alpha["minimum"], alpha["maximum"]) == (0, 1)
    assert props["generalized_dice"]["weight_type"]["enum"] == ["square", "simple", "uniform"]
    assert props["dice_cross_entropy"]["ce_weight"]["minimum"] == 0
    assert props["dice_cross_entropy"]["reduction"]["enum"] == ["mean", "sum"]
    assert props["lovasz_hinge"]["mode"]["enum"] == ["binary", "multilabel"]


# -- the command line -------------------------------------------------------------------------


def test_cli_show_prints_the_doc() -> None:
    result = CliRunner().invoke(app, ["show", "dice"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "loss[b, c] = 1 - (2 TP + smooth)" in result.output
    assert "lossreg eval dice" in result.output and "include_background" in result.output


def test_cli_eval_on_npy_files(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, (2, 4, 4))
    np.save(tmp_path / "logits.npy", x)
    np.save(tmp_path / "labels.npy", y)
    args = ["eval", "dice", "--input", str(tmp_path / "logits.npy")]
    args += ["--target", str(tmp_path / "labels.npy"), "-p", "mode=multiclass"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    expected = zoo.dice(torch.from_numpy(x), torch.from_numpy(y)).item()
    assert f"{expected:.6g}"[:6] in result.output


# -- the HTTP API -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with serve(Settings(device="cpu", log_level="warning")) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client


def test_catalog_lists_the_zoo_with_docs(http: httpx.Client) -> None:
    listed = http.get("/v1/losses", params={"tag": "segmentation"}).json()["losses"]
    assert set(ZOO) - {"log_cosh"} <= {s["name"] for s in listed}
    spec = http.get("/v1/losses/dice").json()
    assert "lossreg eval dice" in spec["doc"] and spec["params_schema"]["properties"]["smooth"]
    assert spec["tensor_params"][0]["name"] == "weight"


def test_http_evaluate_matches_a_direct_call(http: httpx.Client) -> None:
    inputs, params = _case("dice")
    body = {"inputs": {k: v.tolist() for k, v in inputs.items()}, "params": params}
    r = http.post("/v1/losses/dice/evaluate", json=body)
    assert r.status_code == 200, r.text
    leaf = inputs["input"].clone().requires_grad_(True)
    expected = zoo.dice(leaf, inputs["target"].long(), inputs["weight"], **params)
    (grad,) = torch.autograd.grad(expected, leaf)
    assert r.json()["loss"] == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(torch.tensor(r.json()["grads"]["input"]), grad)


@pytest.mark.parametrize(
    ("inputs", "params", "field"),
    [
        ({"input": [[[0.1, 0.2]]], "target": [[0, 1]]}, {}, "input"),  # one channel, multiclass
        ({"input": [[[0.1], [0.2]]], "target": [[7]]}, {}, "target"),  # class 7 of 2
        ({"input": [[[0.1], [0.2]]], "target": [[1]]}, {"smooth": -1}, "smooth"),
    ],
    ids=["single-channel", "class-out-of-range", "negative-smooth"],
)
def test_http_bad_input_is_422_naming_the_field(
    http: httpx.Client, inputs: dict[str, Any], params: dict[str, Any], field: str
) -> None:
    r = http.post("/v1/losses/dice/evaluate", json={"inputs": inputs, "params": params})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    if field == "input":
        assert r.json()["code"] == InvalidInput.code


# -- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ZOO)
def test_cuda_matches_cpu(name: str, registry: LossRegistry) -> None:
    inputs, params = _case(name)
    on_cpu = evaluate(registry.get(name), inputs, params)
    on_gpu = evaluate(registry.get(name), inputs, params, device="cuda")
    torch.testing.assert_close(on_gpu.loss.cpu(), on_cpu.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        on_gpu.grads["input"].cpu(), on_cpu.grads["input"], rtol=1e-4, atol=1e-5
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bad_class_index_is_an_error_not_a_device_assert(registry: LossRegistry) -> None:
    """Checked before one_hot/gather, which would abort the CUDA context on index 7."""
    inputs = {"input": torch.randn(2, 3, 4), "target": torch.full((2, 4), 7)}
    for name in ("dice", "focal", "lovasz_softmax", "weighted_cross_entropy"):
        with pytest.raises(InvalidInput) as caught:
            evaluate(registry.get(name), inputs, device="cuda")
        assert caught.value.field == "target"
    assert torch.isfinite(torch.ones(1, device="cuda").sum())  # the context is still usable
