"""The zoo's edge cases are defined, finite and tested: never a silent NaN, never a 500.

Empty masks, every pixel ignored, a single channel in multiclass mode, targets of the wrong
kind, and float16/bfloat16 inputs large enough that half-precision sums would overflow.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lossreg.errors import InvalidInput, InvalidParameter, ShapeMismatch
from lossreg_service.engine import evaluate
from lossreg_service.losses import zoo
from lossreg_service.registry import LossRegistry

MODE_LOSSES = ("dice", "jaccard", "tversky", "generalized_dice", "dice_cross_entropy", "focal")
OVERLAP_LOSSES = ("dice", "jaccard", "tversky", "generalized_dice")
MULTICLASS_LOSSES = (*MODE_LOSSES, "lovasz_softmax", "weighted_cross_entropy")


@pytest.fixture(scope="module")
def registry() -> LossRegistry:
    return LossRegistry.from_entry_points()


def _value_and_grad(fn: Any, x: Tensor, t: Tensor, **params: Any) -> tuple[Tensor, Tensor]:
    leaf = x.detach().requires_grad_(True)
    out = fn(leaf, t, **params)
    (grad,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
    return out.detach(), torch.zeros_like(leaf) if grad is None else grad


# -- empty masks ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAP_LOSSES)
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("smooth", [0.0, 1e-5])
@pytest.mark.parametrize("batch", [False, True])
def test_both_empty_is_zero_with_finite_gradient(
    name: str, mode: str, smooth: float, batch: bool
) -> None:
    channels = 1 if mode == "binary" else 3
    x = torch.zeros(2, channels, 4, 4)  # probabilities: nothing predicted
    t = torch.zeros(2, channels, 4, 4)  # nothing there
    out, grad = _value_and_grad(
        getattr(zoo, name),
        x,
        t,
        mode=mode,
        from_logits=False,
        smooth=smooth,
        batch=batch,
        reduction="none",
    )
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", ("dice", "jaccard", "tversky"))
def test_an_absent_class_predicted_absent_scores_zero(name: str) -> None:
    """Multiclass: class 2 is in neither prediction nor target; its loss is 0, not NaN."""
    t = torch.randint(0, 2, (2, 4, 4))
    x = F.one_hot(t, 3).permute(0, 3, 1, 2).double()  # perfect probabilities
    out, grad = _value_and_grad(
        getattr(zoo, name), x, t, from_logits=False, smooth=0.0, reduction="none"
    )
    torch.testing.assert_close(out, torch.zeros(2, 3, dtype=torch.float64))
    assert torch.isfinite(grad).all()


def test_empty_target_with_predictions_is_penalised() -> None:
    """An empty mask is not a free pass: predicting foreground there costs the full loss."""
    x = torch.full((1, 1, 4, 4), 0.5)
    t = torch.zeros(1, 4, 4)
    for name in ("dice", "jaccard", "tversky"):
        out = getattr(zoo, name)(x, t, mode="binary", from_logits=False, smooth=0.0)
        assert out.item() == pytest.approx(1.0)


def test_generalized_dice_with_no_class_present_is_zero() -> None:
    """Every class weight is undefined: the documented value is 0, with a finite gradient."""
    x = torch.randn(2, 3, 4, 4)
    out, grad = _value_and_grad(zoo.generalized_dice, x, torch.zeros(2, 3, 4, 4), mode="multilabel")
    assert out.item() == 0.0 and torch.isfinite(grad).all()


def test_lovasz_on_empty_masks() -> None:
    t = torch.zeros(2, 4, 4)
    out, grad = _value_and_grad(zoo.lovasz_hinge, torch.full((2, 1, 4, 4), -3.0), t)
    assert out.item() == 0.0 and torch.isfinite(grad).all()  # all negative, with margin
    labels = torch.zeros(2, 4, 4, dtype=torch.long)  # only class 0 present
    probs = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    out, grad = _value_and_grad(zoo.lovasz_softmax, probs, labels, from_logits=False)
    assert out.item() == 0.0 and torch.isfinite(grad).all()


# -- every pixel ignored ----------------------------------------------------------------------


def _all_ignored(mode: str) -> tuple[Tensor, Tensor]:
    channels = 1 if mode == "binary" else 3
    x = torch.randn(2, channels, 4, 4)
    if mode == "multiclass":
        return x, torch.full((2, 4, 4), 255)
    return x, torch.full((2, channels, 4, 4) if mode == "multilabel" else (2, 4, 4), 255.0)


@pytest.mark.parametrize("name", MODE_LOSSES)
@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_pixels_ignored_is_zero(name: str, mode: str, reduction: str) -> None:
    x, t = _all_ignored(mode)
    out, grad = _value_and_grad(
        getattr(zoo, name), x, t, mode=mode, ignore_index=255, reduction=reduction
    )
    assert out.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize(
    ("name", "mode"),
    [("lovasz_hinge", "binary"), ("lovasz_softmax", None), ("weighted_cross_entropy", None)],
)
def test_all_pixels_ignored_is_zero_for_the_others(name: str, mode: str | None) -> None:
    x, t = _all_ignored(mode or "multiclass")
    params = {"ignore_index": 255} | ({"mode": mode} if mode else {})
    out, grad = _value_and_grad(getattr(zoo, name), x, t, **params)
    assert out.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    # Where torch's own cross-entropy has nothing to average, it answers NaN.
    if name == "weighted_cross_entropy":
        assert F.cross_entropy(x, t, ignore_index=255).isnan()


# -- inputs of the wrong kind -----------------------------------------------------------------


@pytest.mark.parametrize("name", MULTICLASS_LOSSES)
def test_single_channel_multiclass_is_a_clear_error(name: str, registry: LossRegistry) -> None:
    x, t = torch.randn(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
    params = {} if name in ("lovasz_softmax", "weighted_cross_entropy") else {"mode": "multiclass"}
    with pytest.raises(InvalidInput, match="mode='binary'") as direct:
        getattr(zoo, name)(x, t, **params)
    assert direct.value.field == "input" and direct.value.status_code == 422
    with pytest.raises(InvalidInput) as served:
        evaluate(registry.get(name), {"input": x, "target": t}, params)
    assert served.value.field == "input"


@pytest.mark.parametrize(
    ("mode", "x_shape", "target", "error", "field", "message"),
    [
        ("multiclass", (2, 3, 4), torch.rand(2, 4), InvalidInput, "target", "integer"),
        (
            "multiclass",
            (2, 3, 4),
            torch.ones(2, 4, dtype=torch.bool),
            InvalidInput,
            "target",
            "bool",
        ),
        ("multiclass", (2, 3, 4), torch.full((2, 4), 3), InvalidInput, "target", "index 3"),
        ("multiclass", (2, 3, 4), torch.full((2, 4), -1), InvalidInput, "target", "index -1"),
        (
            "multiclass",
            (2, 3, 4),
            torch.zeros(2, 5, dtype=torch.long),
            ShapeMismatch,
            "target",
            "must be",
        ),
        ("binary", (2, 3, 4), torch.zeros(2, 4), InvalidInput, "input", "binary mode"),
        ("binary", (2, 1, 4), torch.full((2, 4), 255.0), InvalidInput, "target", "255"),
        ("binary", (2, 1, 4), torch.zeros(2, 2, 4), ShapeMismatch, "target", r"\[2, 1, 4\]"),
        ("multilabel", (2, 3, 4), torch.zeros(2, 4), ShapeMismatch, "target", "must match"),
        ("multilabel", (2, 3, 4), -torch.ones(2, 3, 4), InvalidInput, "target", "[0, 1]"),
    ],
)
def test_bad_targets_name_the_field(
    mode: str, x_shape: tuple[int, ...], target: Tensor, error: type, field: str, message: str
) -> None:
    for name in MODE_LOSSES:
        with pytest.raises(error, match=message) as caught:
            getattr(zoo, name)(torch.randn(x_shape), target, mode=mode)
        assert caught.value.field == field


def test_bad_weights_name_the_field(registry: LossRegistry) -> None:
    x, t = torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4))
    for name in ("dice", "focal", "dice_cross_entropy", "weighted_cross_entropy"):
        with pytest.raises(ShapeMismatch) as caught:
            getattr(zoo, name)(x, t, torch.ones(2))
        assert caught.value.field == "weight"
        with pytest.raises(ShapeMismatch) as caught:  # the spec catches it before the loss runs
            evaluate(registry.get(name), {"input": x, "target": t, "weight": torch.ones(2)})
        assert caught.value.field == "weight"
        with pytest.raises(InvalidInput, match="non-negative") as caught:
            getattr(zoo, name)(x, t, torch.tensor([1.0, -1.0, 1.0]))
        assert caught.value.field == "weight"


def test_lovasz_hinge_needs_hard_masks() -> None:
    with pytest.raises(InvalidInput, match="0 or 1") as caught:
        zoo.lovasz_hinge(torch.randn(2, 1, 4), torch.full((2, 4), 0.5))
    assert caught.value.field == "target"


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("dice", {"mode": "softmax"}, "mode"),
        ("dice", {"smooth": -1}, "smooth"),
        ("tversky", {"beta": -0.1}, "beta"),
        ("focal", {"alpha": 1.5}, "alpha"),
        ("focal", {"gamma": -2}, "gamma"),
        ("generalized_dice", {"weight_type": "cubic"}, "weight_type"),
        ("dice_cross_entropy", {"reduction": "none"}, "reduction"),
        ("lovasz_softmax", {"classes": "some"}, "classes"),
        ("weighted_cross_entropy", {"balance": "median"}, "balance"),
    ],
)
def test_bad_parameters_are_refused_by_the_schema(
    name: str, params: dict[str, Any], field: str, registry: LossRegistry
) -> None:
    x, t = torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4))
    with pytest.raises(InvalidParameter) as caught:
        evaluate(registry.get(name), {"input": x, "target": t}, params)
    assert caught.value.field == field and caught.value.status_code == 422


# -- equivalent spellings of a target ---------------------------------------------------------


@pytest.mark.parametrize("name", [*MODE_LOSSES, "lovasz_hinge"])
def test_binary_target_forms_agree(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 4, 4, generator=g)
    mask = torch.rand(2, 4, 4, generator=g) > 0.5
    fn = getattr(zoo, name)
    reference = fn(x, mask.float(), mode="binary")
    for t in (mask, mask.to(torch.uint8), mask.long(), mask.float().unsqueeze(1)):
        torch.testing.assert_close(fn(x, t, mode="binary"), reference)


def test_multiclass_target_with_a_channel_axis_agrees() -> None:
    x, t = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    for name in MULTICLASS_LOSSES:
        fn = getattr(zoo, name)
        torch.testing.assert_close(fn(x, t.unsqueeze(1)), fn(x, t))


# -- half precision ---------------------------------------------------------------------------

HALF_CASES = [
    ("dice", {"mode": "binary"}),
    ("jaccard", {"mode": "binary"}),
    ("tversky", {"mode": "binary"}),
    ("generalized_dice", {"mode": "binary"}),
    ("dice_cross_entropy", {"mode": "binary"}),
    ("focal", {"mode": "binary"}),
    ("lovasz_hinge", {}),
    ("dice", {"mode": "multiclass", "batch": True}),
    ("lovasz_softmax", {}),
    ("weighted_cross_entropy", {}),
    ("log_cosh", {}),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("name", "params"), HALF_CASES, ids=[c[0] for c in HALF_CASES])
def test_half_precision_512x512_is_accumulated_in_float32(
    name: str, params: dict[str, Any], dtype: torch.dtype
) -> None:
    """A 512x512 mask sums to 262144 > 65504, float16's largest value: no inf, no NaN."""
    g = torch.Generator().manual_seed(1)
    multiclass = params.get("mode") == "multiclass" or name in (
        "lovasz_softmax",
        "weighted_cross_entropy",
    )
    channels = 2 if multiclass else 1
    x = (torch.randn(1, channels, 512, 512, generator=g) + 2).to(dtype)
    if multiclass:
        t = torch.randint(0, 2, (1, 512, 512), generator=g)
    elif name == "log_cosh":
        t = torch.randn(1, 1, 512, 512, generator=g).to(dtype)
    else:
        t = (torch.rand(1, 512, 512, generator=g) > 0.1).to(dtype)
    fn = getattr(zoo, name)
    out, grad = _value_and_grad(fn, x, t, **params)
    assert out.dtype == torch.float32, "the loss of a half-precision input is float32"
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert grad.dtype == dtype
    # The same (already rounded) numbers in float64 give the same loss.
    exact = fn(x.double(), t.double() if t.is_floating_point() else t, **params)
    torch.testing.assert_close(out.double(), exact, rtol=1e-4, atol=1e-5)


def test_half_precision_perfect_prediction_does_not_overflow() -> None:
    """All-ones probabilities against an all-ones mask: dice 0 (float16 sums would give NaN)."""
    x = torch.ones(1, 1, 512, 512, dtype=torch.float16)
    assert x.sum(dtype=torch.float16).isinf()  # what a half-precision accumulator would see
    out = zoo.dice(
        x, torch.ones(1, 512, 512, dtype=torch.float16), mode="binary", from_logits=False
    )
    assert out.dtype == torch.float32 and out.item() == pytest.approx(0.0, abs=1e-6)


def test_half_precision_through_the_engine(registry: LossRegistry) -> None:
    x = torch.randn(2, 3, 8, 8).to(torch.float16)
    t = torch.randint(0, 3, (2, 8, 8), dtype=torch.int32)
    result = evaluate(registry.get("dice"), {"input": x, "target": t})
    assert result.loss.dtype == torch.float32
    assert result.grads["input"].dtype == torch.float16
    torch.testing.assert_close(result.loss, zoo.dice(x.float(), t.long()))
