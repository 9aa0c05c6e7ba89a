"""The engine checks a request before computing and says which field is wrong and why."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lossreg.errors import (
    InvalidInput,
    InvalidParameter,
    LossRejectedInput,
    ShapeMismatch,
)
from lossreg_service.engine import Term, evaluate, evaluate_terms, resolve_device
from lossreg_service.registry import LossRegistry

REGISTRY = LossRegistry.from_entry_points(autoload=False)
CE = REGISTRY.get("cross_entropy")
MSE = REGISTRY.get("mse_loss")


def _ce_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input": torch.randn(4, 3, generator=g),
        "target": torch.randint(0, 3, (4,), generator=g),
    }


@pytest.mark.parametrize(
    ("inputs", "kwargs", "error", "field", "text"),
    [
        ({"input": torch.randn(4, 3)}, {}, InvalidInput, "target", "missing input 'target'"),
        ({**_ce_inputs(), "extra": torch.ones(1)}, {}, InvalidInput, "extra", "unknown input"),
        ({"input": torch.randn(4, 3).int(), "target": torch.zeros(4).long()}, {}, InvalidInput,
         "input", "has dtype int32"),
        (_ce_inputs(), {"grad": ["target"]}, InvalidInput, "target", "only floating-point"),
        (_ce_inputs(), {"grad": ["logits"]}, InvalidInput, "logits", "no such input"),
        (_ce_inputs(), {"grad": ["weight"]}, InvalidInput, "weight", "not differentiable"),
        (_ce_inputs(), {"params": {"label_smoothing": 2}}, InvalidParameter, "label_smoothing",
         "less than or equal to 1"),
        (_ce_inputs(), {"params": {"margin": 1}}, InvalidParameter, "margin", "unknown parameter"),
        (_ce_inputs(), {"params": {"reduction": "avg"}}, InvalidParameter, "reduction", "'none'"),
        ({**_ce_inputs(), "weight": torch.ones(5)}, {}, ShapeMismatch, "weight", "dimension C"),
    ],
)  # fmt: skip
def test_bad_requests_name_the_field(inputs, kwargs, error, field, text):
    params = kwargs.pop("params", {})
    with pytest.raises(error) as excinfo:
        evaluate(CE, inputs, params, **kwargs)
    assert excinfo.value.field == field
    assert text in str(excinfo.value)


def test_declared_shapes_are_checked_before_torch_broadcasts():
    with pytest.raises(ShapeMismatch) as excinfo:
        evaluate(MSE, {"input": torch.randn(4, 3), "target": torch.randn(4, 1)})
    assert excinfo.value.field == "target"
    assert "[4, 1]" in str(excinfo.value) and "[4, 3]" in str(excinfo.value)


def test_grad_loss_must_match_the_loss_shape():
    x = {"input": torch.randn(4, 3), "target": torch.randn(4, 3)}
    with pytest.raises(ShapeMismatch) as excinfo:
        evaluate(MSE, x, {"reduction": "none"}, grad_loss=torch.ones(4))
    assert excinfo.value.field == "grad_loss"


def test_what_torch_refuses_inside_the_loss_is_a_client_error():
    bce = REGISTRY.get("binary_cross_entropy")
    inputs = {"input": torch.tensor([0.5, 1.5]), "target": torch.tensor([0.0, 1.0])}
    with pytest.raises(LossRejectedInput, match="binary_cross_entropy") as excinfo:
        evaluate(bce, inputs)
    assert excinfo.value.status_code == 422


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "multi_margin_loss"])
def test_class_indices_out_of_range_name_the_target(name):
    inputs = {"input": torch.randn(4, 3), "target": torch.tensor([0, 1, 2, 7])}
    with pytest.raises(InvalidInput) as excinfo:
        evaluate(REGISTRY.get(name), inputs)
    assert excinfo.value.field == "target"
    assert "class index 7" in str(excinfo.value) and "[0, 3)" in str(excinfo.value)
    inputs["target"] = torch.tensor([0, 1, 2, -100])  # the default ignore_index is allowed
    if name != "multi_margin_loss":
        assert torch.isfinite(evaluate(REGISTRY.get(name), inputs).loss)


def test_integer_class_indices_of_any_width_are_cast():
    inputs = _ce_inputs()
    as_int32 = {**inputs, "target": inputs["target"].int()}
    torch.testing.assert_close(evaluate(CE, as_int32).loss, evaluate(CE, inputs).loss)


def test_value_only_and_selected_gradients():
    inputs = {"input": torch.randn(3, 2), "target": torch.randn(3, 2)}
    assert evaluate(MSE, inputs, grad=[]).grads == {}
    assert set(evaluate(MSE, inputs).grads) == {"input"}


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_computed_in_float32_returns_grads_in_input_dtype(low):
    inputs = {
        k: v.to(low) for k, v in {"input": torch.randn(8, 4), "target": torch.randn(8, 4)}.items()
    }
    result = evaluate(MSE, inputs, compute_dtype=torch.float32)
    assert result.grads["input"].dtype == low
    assert result.loss.dtype == torch.float32
    x32 = inputs["input"].float().requires_grad_()
    expected = F.mse_loss(x32, inputs["target"].float())
    expected.backward()
    torch.testing.assert_close(result.loss, expected.detach())
    torch.testing.assert_close(result.grads["input"], x32.grad.to(low))


def test_composition_is_the_weighted_sum_with_its_gradient():
    margin = REGISTRY.get("multi_margin_loss")
    inputs = _ce_inputs()
    terms = [Term(CE, {"label_smoothing": 0.1}, 0.3), Term(margin, {"margin": 0.5}, 0.7)]
    result = evaluate_terms(terms, inputs)
    x = inputs["input"].clone().requires_grad_()
    ce = F.cross_entropy(x, inputs["target"], label_smoothing=0.1)
    mm = F.multi_margin_loss(x, inputs["target"], margin=0.5)
    total = 0.3 * ce + 0.7 * mm
    total.backward()
    torch.testing.assert_close(result.loss, total.detach())
    torch.testing.assert_close(result.terms["cross_entropy"], ce.detach())
    torch.testing.assert_close(result.terms["multi_margin_loss"], mm.detach())
    torch.testing.assert_close(result.grads["input"], x.grad)


def test_composition_needs_scalar_terms():
    terms = [Term(CE, {"reduction": "none"}, 0.5), Term(CE, {}, 0.5, label="ce2")]
    with pytest.raises(InvalidParameter, match="scalar"):
        evaluate_terms(terms, _ce_inputs())


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(ValueError):
        resolve_device("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    inputs = _ce_inputs()
    cpu = evaluate(CE, inputs)
    gpu = evaluate(CE, inputs, device=resolve_device("cuda:0"))
    assert gpu.grads["input"].device.type == "cuda"
    torch.testing.assert_close(gpu.loss.cpu(), cpu.loss)
    torch.testing.assert_close(gpu.grads["input"].cpu(), cpu.grads["input"])


def test_checks_remembered_for_a_signature_still_refuse_what_differs() -> None:
    """The engine remembers the checks of requests it has seen (`checked_terms`): the same
    request again is answered alike, and a request differing in a parameter, a shape, a dtype
    or the gradients asked for is checked afresh."""
    inputs = _ce_inputs()
    first = evaluate(CE, inputs, {"label_smoothing": 0.1})
    again = evaluate(CE, inputs, {"label_smoothing": 0.1})
    assert torch.equal(first.grads["input"], again.grads["input"])
    with pytest.raises(InvalidParameter, match="label_smoothing"):
        evaluate(CE, inputs, {"label_smoothing": "lots"})
    with pytest.raises(ShapeMismatch):
        evaluate(CE, {**inputs, "target": inputs["target"][:2]}, {"label_smoothing": 0.1})
    with pytest.raises(InvalidInput, match="has dtype int32"):
        evaluate(CE, {**inputs, "input": inputs["input"].int()}, {"label_smoothing": 0.1})
    with pytest.raises(InvalidInput, match="only floating-point"):
        evaluate(CE, inputs, {"label_smoothing": 0.1}, grad=["target"])


def test_remembered_checks_are_bounded_and_hand_out_copies() -> None:
    from lossreg_service.engine import _compute

    for rows in range(1, _compute._CHECKED_MOST + 50):
        evaluate(MSE, {"input": torch.ones(rows), "target": torch.zeros(rows)}, grad=[])
    assert len(_compute._CHECKED) <= _compute._CHECKED_MOST
    info = _compute.tensor_info(_ce_inputs())
    validated, names = _compute.checked_terms([Term(CE, {"ignore_index": 1})], info, None)
    validated[0]["ignore_index"] = 2  # a caller changing what it was handed
    names.append("target")
    again, names_again = _compute.checked_terms([Term(CE, {"ignore_index": 1})], info, None)
    assert again == [{"ignore_index": 1}]
    assert names_again == ["input"]


@pytest.mark.parametrize("ignore_index", [None, -100, 7])
def test_class_indices_out_of_range_are_refused_past_the_one_read_fast_path(
    ignore_index: int | None,
) -> None:
    """In-range indices pass on one min/max read; anything else is checked exactly, so an
    ignore_index is still allowed and an out-of-range index still named."""
    inputs = _ce_inputs()
    params = {} if ignore_index is None else {"ignore_index": ignore_index}
    target = inputs["target"].clone()
    if ignore_index is not None:
        target[0] = ignore_index
        out = evaluate(CE, {**inputs, "target": target}, params)
        expected = F.cross_entropy(inputs["input"], target, ignore_index=ignore_index)
        torch.testing.assert_close(out.loss, expected)
    target[1] = 3  # the input has 3 classes
    with pytest.raises(InvalidInput, match="class index 3") as raised:
        evaluate(CE, {**inputs, "target": target}, params)
    assert raised.value.field == "target"
