"""The real ``tritonclient.http`` client against a real server, for every built-in torch loss.

Binary and JSON modes, loss and gradients compared with plain ``torch.nn.functional`` + autograd.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.loss_cases import (
    CASES,
    NOT_SERVED,
    make_case,
    reference,
    torch_nn_loss_functions,
)

tritonclient_http = pytest.importorskip("tritonclient.http")

TORCH_NN = sorted(
    ep.name
    for ep in importlib.metadata.entry_points(group="lossreg.losses")
    if ep.value.startswith("lossreg_service.losses.torch_nn:")
)
DATATYPE = {torch.float32: "FP32", torch.float64: "FP64", torch.int64: "INT64"}


def test_every_torch_nn_loss_has_a_case() -> None:
    assert set(TORCH_NN) == torch_nn_loss_functions() - set(NOT_SERVED)
    assert set(TORCH_NN) <= set(CASES)


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[Any]:
    client = tritonclient_http.InferenceServerClient(server_url.removeprefix("http://"))
    yield client
    client.close()


def _inputs(tensors: dict[str, torch.Tensor], binary: bool) -> list[Any]:
    out = []
    for name, tensor in tensors.items():
        item = tritonclient_http.InferInput(name, list(tensor.shape), DATATYPE[tensor.dtype])
        item.set_data_from_numpy(tensor.numpy(), binary_data=binary)
        out.append(item)
    return out


def _tensor(result: Any, name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(result.as_numpy(name)))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", TORCH_NN)
def test_loss_and_gradients_match_torch(client: Any, name: str, binary: bool) -> None:
    tensors, params = make_case(name)
    spec = client.get_model_metadata(name)
    differentiable = [
        o["name"].removeprefix("grad_") for o in spec["outputs"] if o["name"].startswith("grad_")
    ]
    grad = [n for n in differentiable if n in tensors and tensors[n].is_floating_point()]
    outputs = [tritonclient_http.InferRequestedOutput("loss", binary_data=binary)] + [
        tritonclient_http.InferRequestedOutput(f"grad_{n}", binary_data=binary) for n in grad
    ]
    # poisson_nll_loss(full=True)'s target gradient is NaN at a zero count, in torch too
    sent = {**params, "nonfinite": "allow"}
    result = client.infer(name, _inputs(tensors, binary), outputs=outputs, parameters=sent)

    value, grads = reference(name, tensors, params, grad)
    torch.testing.assert_close(_tensor(result, "loss"), value)
    for n in grad:
        got = result.as_numpy(f"grad_{n}")
        assert got.dtype == np.float32 and list(got.shape) == list(tensors[n].shape)
        torch.testing.assert_close(torch.from_numpy(np.array(got)), grads[n], equal_nan=True)
    outputs_sent = result.get_response()["outputs"]
    assert all(("binary_data_size" in o.get("parameters", {})) == binary for o in outputs_sent)


def test_qualified_name_and_default_outputs(client: Any) -> None:
    """``dist:name`` (tritonclient quotes the colon) and no outputs listed: all, binary."""
    tensors, params = make_case("cross_entropy")
    result = client.infer("lossreg:cross_entropy", _inputs(tensors, True), parameters=params)
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["loss", "grad_input"]
    value, grads = reference("cross_entropy", tensors, params, ["input"])
    torch.testing.assert_close(_tensor(result, "loss"), value)
    torch.testing.assert_close(_tensor(result, "grad_input"), grads["input"])


def test_server_and_model_metadata(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "lossreg" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("mse_loss")
    assert not client.is_model_ready("no_such_loss")
    version = client.get_model_metadata("mse_loss")["versions"][0]
    assert client.is_model_ready("mse_loss", model_version=version)
    assert not client.is_model_ready("mse_loss", model_version="999")


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_and_response(client: Any, algorithm: str) -> None:
    tensors, params = make_case("mse_loss")
    tensors = {k: v.repeat(50, 50) for k, v in tensors.items()}  # big enough to be compressed
    result = client.infer(
        "mse_loss",
        _inputs(tensors, True),
        parameters=params,
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    value, grads = reference("mse_loss", tensors, params, ["input"])
    torch.testing.assert_close(_tensor(result, "loss"), value)
    torch.testing.assert_close(_tensor(result, "grad_input"), grads["input"])


def test_errors_reach_tritonclient_as_its_exception(client: Any) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="no loss named 'cross_entropyy'") as info:
        client.get_model_metadata("cross_entropyy")
    assert info.value.status() == "404"
    tensors, _ = make_case("mse_loss")
    with pytest.raises(InferenceServerException, match="unknown parameter 'margin'") as info:
        client.infer("mse_loss", _inputs(tensors, True), parameters={"margin": 1.0})
    assert info.value.status() == "422"
