"""The custom-loss tutorials' code, as written, through a real server: catalog, curl-style
JSON, `Client` and `RemoteLoss`, each against the same loss run locally.

The losses (`tests/tutorials/losses.py`) are served by an installed plugin distribution, the way
a user publishes them; nothing here is a look-alike of the server or of the losses.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch
import torch.nn.functional as F

from lossreg import Client, RemoteLoss, errors
from lossreg_service.settings import Settings
from tests.support.server import serve
from tests.tutorials import install
from tests.tutorials.losses import (
    ClippedMSE,
    DiceLoss,
    FlatCrossEntropy,
    WeightedCrossEntropy,
    my_loss,
    per_sample_mse,
)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = install(tmp_path_factory.mktemp("tutorial-plugin"))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        with serve(Settings(device="cpu", log_level="warning")) as base:
            yield base


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[Client]:
    with Client(url) as c:
        yield c


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


# -- catalog and parameter inference -----------------------------------------------------------


def test_dice_tutorial_signature_is_read_as_python_would(http: httpx.Client) -> None:
    spec = http.get("/v1/losses/tutorial_dice").json()
    assert spec["available"] is True
    props = spec["params_schema"]["properties"]
    assert list(props) == ["smooth"]  # size_average (legacy) is not exposed
    assert [t["name"] for t in spec["tensor_params"]] == ["weight"]  # weight=None: a tensor
    assert "Base class for all neural network modules" not in spec["doc"] + spec["summary"]
    # smooth=1 is a number: 1e-5 is accepted and used
    x, t = torch.randn(2, 1, 4, 4), torch.randint(0, 2, (2, 1, 4, 4)).float()
    body = {"inputs": {"inputs": x.tolist(), "targets": t.tolist()}, "params": {"smooth": 1e-5}}
    r = http.post("/v1/losses/tutorial_dice/evaluate", json=body)
    assert r.status_code == 200, r.text
    expected = DiceLoss()(x, t, smooth=1e-5)
    assert r.json()["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_an_unconstructable_class_is_unavailable_with_its_error(http: httpx.Client) -> None:
    spec = http.get("/v1/losses/broken_custom").json()
    assert spec["available"] is False
    assert "CustomLoss() with its default arguments failed" in spec["error"]
    assert "loss_cls" in spec["error"]
    r = http.post("/v1/losses/broken_custom/evaluate", json={"inputs": {"inp": [1.0]}})
    assert r.status_code == 503 and r.json()["code"] == "loss_unavailable"


def test_fastai_style_targ_takes_integer_labels(client: Client) -> None:
    x, y = torch.randn(6, 3), torch.randint(0, 3, (6,))
    result = client.evaluate("flat_ce", _leaf(x), y)
    xr = _leaf(x)
    expected = FlatCrossEntropy()(xr, y)
    expected.backward()
    torch.testing.assert_close(result.loss, expected.detach())
    torch.testing.assert_close(result.grads["inp"], xr.grad)
    assert set(result.grads) == {"inp"}  # a target's gradient only when asked for


# -- RemoteLoss: parameters as attributes, tensor parameters ------------------------------------


def test_class_weights_as_constructor_tensor_then_set_every_epoch(client: Client) -> None:
    """The tutorial's weighted cross-entropy: `weight` in the constructor, then a callback sets
    `loss_func.weight` every epoch. Every forward must use the weight set last."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    remote = RemoteLoss("weighted_ce", client=client, weight=torch.tensor([1.0, 2.0, 3.0]))
    for epoch, w in enumerate([None, torch.tensor([0.2, 5.0, 1.0]), torch.tensor([3.0, 1, 1])]):
        if w is not None:
            remote.weight = w  # what the tutorial's callback does
        used = remote.weight
        assert used is remote.params["weight"], "the attribute is the parameter sent"
        local = WeightedCrossEntropy(weight=used)
        xr, xl = _leaf(x), _leaf(x)
        value = remote(xr, y)
        value.backward()
        expected = local(xl, y)
        expected.backward()
        torch.testing.assert_close(value, expected, msg=f"epoch {epoch}")
        torch.testing.assert_close(xr.grad, xl.grad)


def test_scalar_parameters_are_attributes_and_other_names_stay_plain(client: Client) -> None:
    remote = RemoteLoss("tutorial_dice", client=client)
    assert remote.smooth == 1  # the loss's default, read from its spec
    remote.smooth = 1e-5
    assert remote.params == {"smooth": 1e-5}
    remote.note = "epoch 3"  # not a parameter: a plain attribute, never sent
    assert "note" not in remote.params and remote.note == "epoch 3"
    x, t = torch.randn(2, 1, 4, 4), torch.randint(0, 2, (2, 1, 4, 4)).float()
    torch.testing.assert_close(remote(x, t), DiceLoss()(x, t, smooth=1e-5))
    with pytest.raises(AttributeError):
        _ = remote.smoth


def test_unknown_keyword_and_parameter_errors_teach(client: Client) -> None:
    remote = RemoteLoss("weighted_ce", client=client)
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    with pytest.raises(errors.InvalidInput, match=r"unknown input 'wieght'.*did you mean 'weight'"):
        remote(x, y, wieght=torch.ones(3))
    with pytest.raises(errors.InvalidParameter, match="did you mean 'reduction'"):
        RemoteLoss("mse_loss", client=client, reductio="sum")(x, x)
    with pytest.raises(errors.InvalidInput, match="send an integer tensor") as info:
        RemoteLoss("nll_loss", client=client)(x.log_softmax(1), y.float())
    assert info.value.field == "target"


# -- differentiable inputs -----------------------------------------------------------------------


def test_a_target_that_requires_grad_gets_the_custom_backward_gradient(client: Client) -> None:
    """The autograd.Function tutorial's `grad_target`: RemoteLoss gives what local torch does."""
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(5, generator=g) * 3, torch.randn(5, generator=g)
    xr, tr, xl, tl = _leaf(x), _leaf(t), _leaf(x), _leaf(t)
    RemoteLoss("clipped_mse", client=client)(xr, tr).backward()
    ClippedMSE.apply(xl, tl).backward()
    torch.testing.assert_close(xr.grad, xl.grad)
    torch.testing.assert_close(tr.grad, tl.grad)
    autograd = 2 * (x - t) / 5
    assert not torch.allclose(xr.grad, autograd), "the custom backward, not autograd's"


@pytest.mark.parametrize("loss", ["tutorial_mse", "accelerate_mse", "kl_div", "mse_loss"])
def test_distillation_target_gets_torch_gradient(client: Client, loss: str) -> None:
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    local_fn = {
        "tutorial_mse": my_loss,
        "accelerate_mse": my_loss,
        "kl_div": lambda a, b: F.kl_div(a.log_softmax(1), b.softmax(1), reduction="batchmean"),
        "mse_loss": F.mse_loss,
    }[loss]
    params = {"reduction": "batchmean"} if loss == "kl_div" else {}
    remote_fn = RemoteLoss(loss, client=client, **params)
    if loss == "kl_div":
        wrap = lambda a, b: remote_fn(a.log_softmax(1), b.softmax(1))  # noqa: E731
    else:
        wrap = remote_fn
    sr, tr, sl, tl = _leaf(student), _leaf(teacher), _leaf(student), _leaf(teacher)
    wrap(sr, tr).backward()
    local_fn(sl, tl).backward()
    torch.testing.assert_close(sr.grad, sl.grad)
    torch.testing.assert_close(tr.grad, tl.grad)


def test_a_non_differentiable_input_that_requires_grad_is_refused_clearly(client: Client) -> None:
    x, t = torch.randn(4), _leaf(torch.randn(4).sign())
    with pytest.raises(errors.InvalidInput, match="non-differentiable") as info:
        RemoteLoss("soft_margin_loss", client=client)(_leaf(x), t)
    assert info.value.field == "target"
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'target'"):
        F.soft_margin_loss(_leaf(x), t).backward()  # torch refuses too


# -- non-scalar losses: refused without grad_loss on v1, v2 and the client ---------------------


def test_non_scalar_loss_without_grad_loss_is_refused_everywhere(
    http: httpx.Client, client: Client
) -> None:
    x, t = torch.randn(3, 2), torch.randn(3, 2)
    v1 = http.post(
        "/v1/losses/per_sample_mse/evaluate",
        json={"inputs": {"input": x.tolist(), "target": t.tolist()}},
    )
    assert v1.status_code == 422 and v1.json()["field"] == "grad_loss", v1.text
    tensors = [
        {"name": n, "shape": [3, 2], "datatype": "FP32", "data": v.flatten().tolist()}
        for n, v in (("input", x), ("target", t))
    ]
    v2 = http.post("/v2/models/per_sample_mse/infer", json={"inputs": tensors})
    assert v2.status_code == 422 and v2.json()["field"] == "grad_loss", v2.text
    assert v2.json()["error"] == v1.json()["error"]
    with pytest.raises(errors.InvalidInput, match="non-scalar loss needs grad_loss") as info:
        client.evaluate("per_sample_mse", x, t)
    assert info.value.field == "grad_loss"
    # the value alone, or with an upstream gradient, is fine
    assert client.evaluate("per_sample_mse", x, t, grad=[]).loss.shape == (3,)
    up = torch.tensor([1.0, 0.5, 2.0])
    result = client.evaluate("per_sample_mse", x, t, grad_loss=up, grad=["input"])
    xl = _leaf(x)
    (per_sample_mse(xl, t) * up).sum().backward()
    torch.testing.assert_close(result.grads["input"], xl.grad)


def test_v2_metadata_gives_the_loss_shape_it_knows(http: httpx.Client) -> None:
    def loss_shape(name: str) -> tuple[list[int], str]:
        out = http.get(f"/v2/models/{name}").json()["outputs"][0]
        assert out["name"] == "loss"
        return out["shape"], out["parameters"]["shape"]

    assert loss_shape("per_sample_mse") == ([-1], "[N]")  # declared by the plugin
    assert loss_shape("mse_loss") == ([-1], "[] unless reduction='none'")
    shape, text = loss_shape("tutorial_mse")  # no reduction, nothing declared
    assert "reduction" not in text and "undeclared" in text


def test_remote_loss_of_a_non_scalar_plugin_backpropagates_like_local(client: Client) -> None:
    x, t = torch.randn(3, 2), torch.randn(3, 2)
    remote = RemoteLoss("per_sample_mse", client=client)
    up = torch.tensor([1.0, 0.5, 2.0])
    for _ in range(2):  # the first call learns the loss is non-scalar; the second knows
        xr, xl = _leaf(x), _leaf(x)
        (remote(xr, t) * up).sum().backward()
        (per_sample_mse(xl, t) * up).sum().backward()
        torch.testing.assert_close(xr.grad, xl.grad)
