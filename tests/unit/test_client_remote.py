"""RemoteLoss: autograd through the server, round trips, parameters, autocast, copies."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest
import torch
import torch.nn.functional as F

from lossreg import Client, RemoteLoss, errors
from lossreg.protocol import HEADER_LENGTH, split_body
from tests.support.client_fakes import FakeServer


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(fake: FakeServer) -> Iterator[Client]:
    with Client("http://lossreg.test", transport=fake.transport()) as c:
        yield c


def _infers(fake: FakeServer) -> list[dict]:
    """The JSON headers of the infer requests, in order."""
    out = []
    for request, body in zip(fake.requests, fake.bodies):
        if request.url.path.endswith("/infer"):
            head, _ = split_body(body, request.headers[HEADER_LENGTH])
            out.append(orjson.loads(head))
    return out


def test_import_lossreg_does_not_import_torch() -> None:
    code = (
        "import sys, lossreg\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "lossreg.Client('http://127.0.0.1:9').close()\n"
        "assert 'torch' not in sys.modules\n"
        "lossreg.RemoteLoss\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scalar_loss_one_round_trip_and_local_gradients(client: Client, fake: FakeServer) -> None:
    loss_fn = RemoteLoss("cross_entropy", client=client, label_smoothing=0.1)
    x = torch.randn(6, 4, requires_grad=True)
    y = torch.randint(0, 4, (6,))
    loss = loss_fn(x, y)
    assert loss.requires_grad and loss.shape == ()
    assert len(_infers(fake)) == 1
    loss.backward()
    assert len(_infers(fake)) == 1, "backward needs no second round trip"
    x_local = x.detach().clone().requires_grad_()
    expected = F.cross_entropy(x_local, y, label_smoothing=0.1)
    expected.backward()
    assert torch.allclose(loss, expected)
    assert torch.allclose(x.grad, x_local.grad)
    header = _infers(fake)[0]
    assert header["parameters"] == {"label_smoothing": 0.1}
    assert [o["name"] for o in header["outputs"]] == ["loss", "grad_input"]


def test_upstream_gradient_scales_the_scalar_gradient(client: Client) -> None:
    loss_fn = RemoteLoss("mse_loss", client=client)
    x = torch.randn(5, requires_grad=True)
    y = torch.randn(5)
    (loss_fn(x, y) * 1024.0).backward()  # what a GradScaler does
    x_local = x.detach().clone().requires_grad_()
    (F.mse_loss(x_local, y) * 1024.0).backward()
    assert torch.allclose(x.grad, x_local.grad)


def test_unreduced_loss_sends_the_upstream_gradient_in_backward(
    client: Client, fake: FakeServer
) -> None:
    loss_fn = RemoteLoss("mse_loss", client=client, reduction="none")
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.randn(3, 4)
    weights = torch.rand(3, 4)
    loss = loss_fn(x, y)
    assert loss.shape == (3, 4)
    (loss * weights).sum().backward()
    forward, backward = _infers(fake)
    assert [o["name"] for o in forward["outputs"]] == ["loss"]
    assert [i["name"] for i in backward["inputs"]] == ["input", "target", "grad_loss"]
    x_local = x.detach().clone().requires_grad_()
    (F.mse_loss(x_local, y, reduction="none") * weights).sum().backward()
    assert torch.allclose(x.grad, x_local.grad)


def test_only_inputs_that_require_grad_are_differentiated(client: Client, fake: FakeServer) -> None:
    loss_fn = RemoteLoss("margin_ranking_loss", client=client, margin=0.2)
    a = torch.randn(8, requires_grad=True)
    b = torch.randn(8)
    target = torch.sign(torch.randn(8))
    loss_fn(a, b, target).backward()
    assert [o["name"] for o in _infers(fake)[-1]["outputs"]] == ["loss", "grad_input1"]
    a_local = a.detach().clone().requires_grad_()
    F.margin_ranking_loss(a_local, b, target, margin=0.2).backward()
    assert torch.allclose(a.grad, a_local.grad)


def test_no_grad_asks_for_the_value_only(client: Client, fake: FakeServer) -> None:
    loss_fn = RemoteLoss("mse_loss", client=client)
    x = torch.randn(4, requires_grad=True)
    with torch.no_grad():
        loss = loss_fn(x, torch.zeros(4))
    assert not loss.requires_grad
    assert [o["name"] for o in _infers(fake)[-1]["outputs"]] == ["loss"]
    assert torch.allclose(loss, (x.detach() ** 2).mean())


def test_parameters_can_change_between_steps(client: Client, fake: FakeServer) -> None:
    loss_fn = RemoteLoss("huber_loss", client=client, delta=1.0)
    x = torch.randn(10) * 3
    y = torch.zeros(10)
    values = []
    for delta in (0.5, 1.0, 2.0):
        loss_fn.params["delta"] = delta
        values.append(loss_fn(x, y))
    assert loss_fn.set_params(delta=3.0) is loss_fn
    values.append(loss_fn(x, y))
    deltas = [h["parameters"]["delta"] for h in _infers(fake)]
    assert deltas == [0.5, 1.0, 2.0, 3.0]
    for value, delta in zip(values, deltas):
        assert torch.allclose(value, F.huber_loss(x, y, delta=delta))


def test_two_remote_terms_in_one_graph(client: Client) -> None:
    ce = RemoteLoss("cross_entropy", client=client)
    mse = RemoteLoss("mse_loss", client=client)
    x = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    (ce(x, y) + 0.5 * mse(x.softmax(-1), F.one_hot(y, 3).float())).backward()
    x_local = x.detach().clone().requires_grad_()
    local = F.cross_entropy(x_local, y) + 0.5 * F.mse_loss(
        x_local.softmax(-1), F.one_hot(y, 3).float()
    )
    local.backward()
    assert torch.allclose(x.grad, x_local.grad, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(client: Client, reduction: str) -> None:
    loss_fn = RemoteLoss("smooth_l1_loss", client=client, reduction=reduction, beta=0.5)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: loss_fn(a, y), (x,))


def test_autocast_computes_low_precision_inputs_in_float32(
    client: Client, fake: FakeServer
) -> None:
    loss_fn = RemoteLoss("cross_entropy", client=client)
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(8, 5)
    y = torch.randint(0, 3, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        loss = loss_fn(logits, y)
    loss.backward()
    assert _infers(fake)[-1]["inputs"][0]["datatype"] == "FP32"
    remote_grad = layer.weight.grad.clone()
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy(layer(x), y)
    expected.backward()
    assert loss.dtype == expected.dtype == torch.float32
    assert torch.allclose(loss, expected)
    assert torch.allclose(remote_grad, layer.weight.grad)


def test_server_errors_surface_from_forward(client: Client) -> None:
    loss_fn = RemoteLoss("mse_loss", client=client, gamma=2.0)
    with pytest.raises(errors.InvalidParameter, match="unknown parameter 'gamma'"):
        loss_fn(torch.randn(3, requires_grad=True), torch.randn(3))
    with pytest.raises(errors.LossNotFound):
        RemoteLoss("no_such_loss", client=client)(torch.randn(3))


def test_copies_make_their_own_client(client: Client) -> None:
    loss_fn = RemoteLoss("mse_loss", client=client, reduction="sum")
    for clone in (copy.deepcopy(loss_fn), pickle.loads(pickle.dumps(loss_fn))):
        assert clone._client is None
        assert clone.params == {"reduction": "sum"}
        assert clone.client is not client
        assert clone.client.url == client.url and clone.client.retries == client.retries
        clone.close()
    assert loss_fn.client is client


def test_repr_and_ownership(client: Client) -> None:
    loss_fn = RemoteLoss("focal", url="http://lossreg.test:8000", gamma=2.0)
    assert repr(loss_fn) == "RemoteLoss('focal', url=http://lossreg.test:8000, gamma=2.0)"
    owned = loss_fn.client
    loss_fn.close()
    assert owned._http.is_closed
    shared = RemoteLoss("mse_loss", client=client)
    shared.close()
    assert not client._http.is_closed
    with pytest.raises(ValueError, match="not both"):
        RemoteLoss("mse_loss", client=client, url="http://x")


def test_repeated_backward_accumulates_like_local(client: Client) -> None:
    """The server's gradient is handed to autograd as is; repeated backwards must not alias it."""
    loss_fn = RemoteLoss("mse_loss", client=client)
    x = torch.randn(5, requires_grad=True)
    y = torch.randn(5)
    x_local = x.detach().clone().requires_grad_()
    for fn, leaf in ((loss_fn, x), (F.mse_loss, x_local)):
        loss = fn(leaf, y)
        for _ in range(3):
            loss.backward(retain_graph=True)
    assert torch.allclose(x.grad, x_local.grad)
    with pytest.raises(RuntimeError):  # first-order only
        grad = torch.autograd.grad(loss_fn(x, y), x, create_graph=True)[0]
        grad.sum().backward()


# -- what fastai asks of a loss -----------------------------------------------------------------


def test_reduction_is_an_attribute_and_a_per_call_keyword(client: Client, fake: FakeServer) -> None:
    """fastai's `loss_not_reduced` sets `.reduction` when the loss has one, else passes
    `reduction='none'` to the call: both must give per-sample losses, then restore."""
    loss_fn = RemoteLoss("cross_entropy", client=client)
    x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    assert hasattr(loss_fn, "reduction") and loss_fn.reduction == "mean"
    loss_fn.reduction = "none"
    torch.testing.assert_close(loss_fn(x, y), F.cross_entropy(x, y, reduction="none"))
    loss_fn.reduction = "mean"
    per_call = loss_fn(x, y, reduction="sum")
    torch.testing.assert_close(per_call, F.cross_entropy(x, y, reduction="sum"))
    assert loss_fn.params == {"reduction": "mean"}, "a keyword applies to that call only"
    del loss_fn.reduction
    assert loss_fn.params == {} and loss_fn.reduction == "mean"
    assert [h["parameters"].get("reduction") for h in _infers(fake)] == ["none", "sum"]


def test_activation_and_decodes_as_fastai_losses_give_them(client: Client) -> None:
    x = torch.randn(5, 4)
    ce = RemoteLoss("cross_entropy", client=client)
    torch.testing.assert_close(ce.activation(x), x.softmax(1))
    assert torch.equal(ce.decodes(ce.activation(x)), x.argmax(1))
    bce = RemoteLoss("binary_cross_entropy_with_logits", client=client)
    torch.testing.assert_close(bce.activation(x), torch.sigmoid(x))
    assert torch.equal(bce.decodes(bce.activation(x)), torch.sigmoid(x) > 0.5)
    mse = RemoteLoss("mse_loss", client=client)
    assert mse.activation(x) is x and mse.decodes(x) is x  # nothing known: the identity


def test_tensor_parameters_travel_as_inputs_and_survive_pickling(
    client: Client, fake: FakeServer
) -> None:
    w = torch.tensor([0.5, 2.0, 1.0])
    loss_fn = RemoteLoss("cross_entropy", client=client, weight=w, label_smoothing=0.1)
    x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(loss_fn(x, y), F.cross_entropy(x, y, weight=w, label_smoothing=0.1))
    header = _infers(fake)[-1]
    assert [i["name"] for i in header["inputs"]] == ["input", "target", "weight"]
    assert header["parameters"] == {"label_smoothing": 0.1}
    copy_ = pickle.loads(pickle.dumps(loss_fn))
    assert torch.equal(copy_.weight, w) and copy_.label_smoothing == 0.1
    loss_fn.set_params(weight=[1.0, 1.0, 3.0])  # a list is a tensor parameter's value too
    torch.testing.assert_close(
        loss_fn(x, y),
        F.cross_entropy(x, y, weight=torch.tensor([1.0, 1.0, 3.0]), label_smoothing=0.1),
    )
