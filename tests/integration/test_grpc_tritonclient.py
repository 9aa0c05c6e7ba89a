"""The stock ``tritonclient.grpc`` (sync and ``aio``) against a live server's gRPC port: every
built-in and zoo loss, value and gradients as raw tensors, compared with local torch."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from lossreg.protocol import numpy_dtype
from tests.support.loss_cases import grad_names, make_case, reference, zoo_case, zoo_reference

grpcclient = pytest.importorskip("tritonclient.grpc")
grpcaio = pytest.importorskip("tritonclient.grpc.aio")

LOSSES = sorted(
    ep.name
    for ep in importlib.metadata.entry_points(group="lossreg.losses")
    if ep.value.startswith("lossreg_service.losses.")
)
DATATYPE = {
    torch.float16: "FP16",
    torch.bfloat16: "BF16",
    torch.float32: "FP32",
    torch.float64: "FP64",
    torch.int32: "INT32",
    torch.int64: "INT64",
}


def _is_zoo(name: str) -> bool:
    ep = next(e for e in importlib.metadata.entry_points(group="lossreg.losses") if e.name == name)
    return ep.value.startswith("lossreg_service.losses.zoo.")


def _case(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return zoo_case(name) if _is_zoo(name) else make_case(name)


def _expected(
    name: str, tensors: dict[str, torch.Tensor], params: dict[str, Any], grad: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if _is_zoo(name):
        value, g = zoo_reference(name, tensors, params)
        return value, {"input": g}
    return reference(name, tensors, params, grad)


@pytest.fixture(scope="module")
def client(grpc_server: tuple[str, str]) -> Iterator[Any]:
    c = grpcclient.InferenceServerClient(grpc_server[1])
    yield c
    c.close()


def _inputs(module: Any, tensors: dict[str, torch.Tensor]) -> list[Any]:
    out = []
    for name, tensor in tensors.items():
        item = module.InferInput(name, list(tensor.shape), DATATYPE[tensor.dtype])
        if tensor.dtype == torch.bfloat16:  # tritonclient takes ml_dtypes' bfloat16 arrays
            import ml_dtypes

            array = tensor.float().numpy().astype(ml_dtypes.bfloat16)
        else:
            array = tensor.numpy()
        item.set_data_from_numpy(array)
        out.append(item)
    return out


def _tensor(result: Any, name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(result.as_numpy(name)))  # a writable copy


def _grads_wanted(name: str, tensors: dict[str, torch.Tensor]) -> list[str]:
    """The sent inputs whose gradient the loss computes by default."""
    if _is_zoo(name):
        return ["input"]
    return grad_names(_REGISTRY.get(name).spec, tensors, default=True)


class _Registry:
    """The registry, built on first use (discovery imports every loss)."""

    def __init__(self) -> None:
        self._registry: Any = None

    def get(self, name: str) -> Any:
        if self._registry is None:
            from lossreg_service.registry import LossRegistry

            self._registry = LossRegistry.from_entry_points()
        return self._registry.get(name)


_REGISTRY = _Registry()


def test_the_loss_list_covers_builtins_and_zoo() -> None:
    assert len(LOSSES) == 30 and sum(_is_zoo(n) for n in LOSSES) == 10


@pytest.mark.parametrize("name", LOSSES)
def test_sync_client_value_and_gradients_match_torch(client: Any, name: str) -> None:
    tensors, params = _case(name)
    grad = _grads_wanted(name, tensors)
    outputs = [grpcclient.InferRequestedOutput("loss")] + [
        grpcclient.InferRequestedOutput(f"grad_{n}") for n in grad
    ]
    result = client.infer(
        name, _inputs(grpcclient, tensors), outputs=outputs, parameters=params or None
    )
    value, grads = _expected(name, tensors, params, grad)
    torch.testing.assert_close(_tensor(result, "loss"), value)
    for n in grad:
        got = result.as_numpy(f"grad_{n}")
        assert got.dtype == tensors[n].numpy().dtype and got.shape == tuple(tensors[n].shape)
        torch.testing.assert_close(_tensor(result, f"grad_{n}"), grads[n])
    response = result.get_response()
    assert response.model_name == name and len(response.raw_output_contents) == len(outputs)


def test_aio_client_evaluates_every_loss_concurrently(grpc_server: tuple[str, str]) -> None:
    async def run() -> dict[str, Any]:
        async with grpcaio.InferenceServerClient(grpc_server[1]) as c:
            calls = []
            for name in LOSSES:
                tensors, params = _case(name)
                calls.append(c.infer(name, _inputs(grpcaio, tensors), parameters=params or None))
            results = await asyncio.wait_for(asyncio.gather(*calls), 120)
            return dict(zip(LOSSES, results))

    results = asyncio.run(run())
    for name, result in results.items():
        tensors, params = _case(name)
        grad = _grads_wanted(name, tensors)
        value, grads = _expected(name, tensors, params, grad)
        torch.testing.assert_close(_tensor(result, "loss"), value)
        for n in grad:  # no outputs listed: the loss and every sent differentiable input's grad
            torch.testing.assert_close(_tensor(result, f"grad_{n}"), grads[n])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_bfloat_and_double_travel_raw(client: Any, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = {"input": torch.randn(4, 5, generator=g).to(dtype), "target": torch.zeros(4, 5)}
    tensors["target"] = tensors["target"].to(dtype)
    result = client.infer("mse_loss", _inputs(grpcclient, tensors))
    output = next(o for o in result.get_response().outputs if o.name == "grad_input")
    assert output.datatype == DATATYPE[dtype]
    leaf = tensors["input"].clone().requires_grad_(True)
    value = torch.nn.functional.mse_loss(leaf, tensors["target"])
    (grad,) = torch.autograd.grad(value, leaf)
    got = torch.from_numpy(np.array(result.as_numpy("grad_input"), dtype=np.float32))
    torch.testing.assert_close(got, grad.float(), rtol=1e-2, atol=1e-2)
    assert float(result.as_numpy("loss")) == pytest.approx(float(value.detach()), rel=1e-2)


def test_only_the_requested_outputs_and_the_upstream_gradient(client: Any) -> None:
    tensors, _ = make_case("huber_loss")
    params = {"reduction": "none", "delta": 0.5}
    upstream = torch.rand(tensors["input"].shape, generator=torch.Generator().manual_seed(2))
    inputs = _inputs(grpcclient, {**tensors, "grad_loss": upstream})
    result = client.infer(
        "huber_loss",
        inputs,
        outputs=[grpcclient.InferRequestedOutput("grad_input")],
        parameters=params,
    )
    assert [o.name for o in result.get_response().outputs] == ["grad_input"]
    leaf = tensors["input"].clone().requires_grad_(True)
    value = torch.nn.functional.huber_loss(leaf, tensors["target"], **params)
    (grad,) = torch.autograd.grad(value, leaf, upstream)
    torch.testing.assert_close(_tensor(result, "grad_input"), grad)


def test_contents_instead_of_raw_bytes(grpc_server: tuple[str, str]) -> None:
    """Values in ``contents`` (what KServe's client sends for JSON-like requests) work too."""
    from lossreg_service.server.grpc.proto import grpc_service_pb2 as pb

    stub = _stub(grpc_server[1])
    request = pb.ModelInferRequest(model_name="l1_loss")
    a = request.inputs.add(name="input", datatype="FP32", shape=[3])
    a.contents.fp32_contents.extend([1.0, -2.0, 3.0])
    b = request.inputs.add(name="target", datatype="FP64", shape=[3])
    b.contents.fp64_contents.extend([0.0, 0.0, 0.0])
    request.parameters["reduction"].string_param = "sum"
    response = stub.ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == ["loss", "grad_input"]
    loss, grad = (
        np.frombuffer(raw, numpy_dtype(o.datatype))
        for o, raw in zip(response.outputs, response.raw_output_contents)
    )
    assert loss.tolist() == [6.0] and response.outputs[0].datatype == "FP64"  # promoted
    assert grad.tolist() == [1.0, -1.0, 1.0] and response.outputs[1].datatype == "FP32"


def test_stream_infer_answers_each_request_and_reports_errors_in_the_stream(
    grpc_server: tuple[str, str],
) -> None:
    from lossreg_service.server.grpc.proto import grpc_service_pb2 as pb

    def request(model: str) -> Any:
        r = pb.ModelInferRequest(model_name=model)
        for name in ("input", "target"):
            t = r.inputs.add(name=name, datatype="FP32", shape=[2])
            t.contents.fp32_contents.extend([1.0, 3.0] if name == "input" else [0.0, 0.0])
        return r

    stub = _stub(grpc_server[1])
    answers = list(
        stub.ModelStreamInfer(iter([request("mse_loss"), request("nope"), request("l1_loss")]))
    )
    assert len(answers) == 3
    assert np.frombuffer(answers[0].infer_response.raw_output_contents[0], np.float32) == 5.0
    assert "no loss named 'nope'" in answers[1].error_message
    assert np.frombuffer(answers[2].infer_response.raw_output_contents[0], np.float32) == 2.0


def _stub(target: str) -> Any:
    import grpc

    from lossreg_service.server.grpc.proto import grpc_service_pb2_grpc as pb_grpc

    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
