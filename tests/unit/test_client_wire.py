"""What the client puts on the wire and how it reads answers (against the server's own codec)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F

from lossreg import Client, EvaluateResult
from lossreg._arrays import to_wire
from lossreg._wire import infer_body, new_buffer
from lossreg.protocol import HEADER_LENGTH, slice_binary_data, split_body
from tests.support.client_fakes import FakeServer


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(fake: FakeServer) -> Iterator[Client]:
    with Client("http://lossreg.test", transport=fake.transport()) as c:
        yield c


def _last_infer(fake: FakeServer) -> tuple[dict, dict[str, memoryview]]:
    request, body = fake.requests[-1], fake.bodies[-1]
    head, tail = split_body(body, request.headers[HEADER_LENGTH])
    header = orjson.loads(head)
    return header, slice_binary_data(header["inputs"], tail)


def test_tensors_travel_as_binary_not_json(client: Client, fake: FakeServer) -> None:
    x = torch.randn(4, 3)
    y = torch.tensor([0, 2, 1, 1])
    client.evaluate("cross_entropy", x, y, params={"label_smoothing": 0.1}, grad=["input"])
    request = fake.requests[-1]
    assert request.url.path == "/v2/models/cross_entropy/infer"
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert int(request.headers["Content-Length"]) == len(fake.bodies[-1])
    header, binary = _last_infer(fake)
    assert [i["name"] for i in header["inputs"]] == ["input", "target"]
    assert all("data" not in i for i in header["inputs"])
    assert header["inputs"][0] == {
        "name": "input",
        "datatype": "FP32",
        "shape": [4, 3],
        "parameters": {"binary_data_size": 48},
    }
    assert header["inputs"][1]["datatype"] == "INT64"
    assert header["parameters"] == {"label_smoothing": 0.1}
    assert header["outputs"] == [
        {"name": "loss", "parameters": {"binary_data": True}},
        {"name": "grad_input", "parameters": {"binary_data": True}},
    ]
    assert np.array_equal(np.frombuffer(binary["input"], "<f4").reshape(4, 3), x.numpy())
    assert np.array_equal(np.frombuffer(binary["target"], "<i8"), y.numpy())


def test_default_grad_asks_for_binary_outputs(client: Client, fake: FakeServer) -> None:
    client.evaluate("mse_loss", torch.zeros(2), torch.ones(2))
    header, _ = _last_infer(fake)
    assert "outputs" not in header
    assert header["parameters"] == {"binary_data_output": True}


def test_the_body_is_sent_from_the_callers_memory() -> None:
    x = torch.randn(64, 10)
    target = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    wires = {"input": to_wire("input", x), "target": to_wire("target", target)}
    call = infer_body("mse_loss", wires, {}, None, None)
    header, *buffers = call.chunks
    assert len(buffers) == 2
    assert np.shares_memory(np.asarray(buffers[0]), x.numpy())
    assert np.shares_memory(np.asarray(buffers[1]), target)
    assert call.header_length == len(header)


def test_non_contiguous_and_scalar_inputs_are_sent_correctly(
    client: Client, fake: FakeServer
) -> None:
    base = torch.randn(6, 8)
    x = base[:, ::2].t()  # non-contiguous view
    y = torch.randn(4, 6)
    result = client.evaluate("mse_loss", x, y)
    assert torch.allclose(result.loss, F.mse_loss(x, y))
    assert torch.allclose(result.grads["input"], 2 * (x - y) / x.numel())


def test_answers_are_writable_aligned_views_without_warnings(client: Client) -> None:
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 7, dtype=torch.float64)
    result = client.evaluate("mse_loss", x, y, grad=["input"])
    grad = result.grads["input"]
    assert grad.dtype == torch.float64 and grad.shape == (5, 7)
    assert grad.data_ptr() % grad.element_size() == 0
    grad.add_(1.0)  # writable: torch shares the buffer, no read-only warning
    assert not result.loss.requires_grad


def test_new_buffer_aligns_the_binary_part() -> None:
    for header_length in (0, 1, 37, 200):
        buf = new_buffer(1000, header_length)
        assert buf.size == 1000 and buf.flags.writeable
        assert (buf.ctypes.data + header_length) % 64 == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_gradients_come_back_in_the_inputs_dtype(client: Client, dtype: torch.dtype) -> None:
    x = torch.randn(3, 5).to(dtype).requires_grad_()
    y = torch.tensor([4, 0, 2])
    result = client.evaluate("cross_entropy", x, y, grad=["input"])
    x.grad = None
    expected = F.cross_entropy(x, y)
    expected.backward()
    assert result.grads["input"].dtype == dtype
    assert result.loss.dtype == expected.dtype
    assert torch.equal(result.grads["input"], x.grad)
    assert torch.equal(result.loss, expected.detach())


def test_numpy_in_numpy_out(client: Client) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3))
    y = rng.normal(size=(4, 3))
    result = client.evaluate("mse_loss", input=x, target=y)
    assert isinstance(result, EvaluateResult)
    assert isinstance(result.loss, np.ndarray) and result.loss.shape == ()
    assert result.loss.dtype == np.float64
    np.testing.assert_allclose(result.item(), np.mean((x - y) ** 2))
    np.testing.assert_allclose(result.grads["input"], 2 * (x - y) / x.size)


def test_unreduced_loss_with_upstream_gradient(client: Client, fake: FakeServer) -> None:
    x = torch.randn(4, 3, requires_grad=True)
    y = torch.randn(4, 3)
    upstream = torch.rand(4, 3)
    result = client.evaluate(
        "mse_loss", x, y, params={"reduction": "none"}, grad=["input"], grad_loss=upstream
    )
    header, binary = _last_infer(fake)
    assert [i["name"] for i in header["inputs"]] == ["input", "target", "grad_loss"]
    F.mse_loss(x, y, reduction="none").backward(upstream)
    assert torch.allclose(result.grads["input"], x.grad)
    assert result.loss.shape == (4, 3)


def test_positional_then_named_tensors_and_none_left_out(client: Client, fake: FakeServer) -> None:
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    weight = torch.tensor([1.0, 2.0, 0.5])
    result = client.evaluate("cross_entropy", x, target=y, weight=weight, grad=[])
    assert torch.allclose(result.loss, F.cross_entropy(x, y, weight=weight))
    assert result.grads == {}
    client.evaluate("cross_entropy", x, y, weight=None, grad=[])
    header, _ = _last_infer(fake)
    assert [i["name"] for i in header["inputs"]] == ["input", "target"]


def test_binding_mistakes_are_type_errors(client: Client) -> None:
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match="at most 3 tensors"):
        client.evaluate("cross_entropy", x, x, x, x)
    with pytest.raises(TypeError, match="two values for input 'input'"):
        client.evaluate("cross_entropy", x, input=x)


def test_params_accept_numpy_and_tensor_scalars(client: Client, fake: FakeServer) -> None:
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    client.evaluate("cross_entropy", x, y, params={"label_smoothing": torch.tensor(0.25)}, grad=[])
    header, _ = _last_infer(fake)
    assert header["parameters"]["label_smoothing"] == 0.25
    client.evaluate("cross_entropy", x, y, params={"ignore_index": np.int64(1)}, grad=[])
    header, _ = _last_infer(fake)
    assert header["parameters"]["ignore_index"] == 1


def test_loss_names_are_quoted_in_paths(client: Client, fake: FakeServer) -> None:
    client.spec("lossreg:mse_loss")
    assert fake.requests[-1].url.raw_path == b"/v1/losses/lossreg%3Amse_loss"


def test_catalog(client: Client, fake: FakeServer) -> None:
    everything = client.losses()
    assert {"cross_entropy", "mse_loss", "nll_loss"} <= {s.name for s in everything}
    regression = client.losses(pattern="*l1*", tags="regression")
    assert {s.name for s in regression} == {"l1_loss", "smooth_l1_loss"}
    assert fake.requests[-1].url.params.get_list("tag") == ["regression"]
    spec = client.spec("cross_entropy")
    assert [t.name for t in spec.inputs] == ["input", "target"]
    calls = len(fake.requests)
    assert client.spec("cross_entropy") is spec  # cached
    assert len(fake.requests) == calls
    client.spec("cross_entropy", refresh=True)
    assert len(fake.requests) == calls + 1


def test_api_key_and_headers(fake: FakeServer) -> None:
    with Client(
        "http://lossreg.test", api_key="k1", headers={"X-Team": "vision"},
        transport=fake.transport(),
    ) as client:  # fmt: skip
        client.health()
    assert fake.requests[-1].headers["Authorization"] == "Bearer k1"
    assert fake.requests[-1].headers["X-Team"] == "vision"
    assert fake.requests[-1].headers["User-Agent"].startswith("lossreg-python/")
