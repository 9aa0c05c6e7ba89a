"""Every way the loss literature writes a loss becomes one spec and one uniform call."""

from __future__ import annotations

import inspect
from typing import Annotated, Literal

import pydantic
import pytest
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from lossreg.errors import InvalidInput, InvalidParameter, LossRejectedInput
from lossreg_service.engine import evaluate
from lossreg_service.registry import INT_DTYPES, LossDefinition, TensorSpec, build_loss, loss


def plain(input: Tensor, target: Tensor, weight: Tensor | None = None, *,
          reduction: Literal["none", "mean", "sum"] = "mean",
          scale: Annotated[float, Field(gt=0, le=10)] = 1.0) -> Tensor:  # fmt: skip
    """Scaled squared error.

    Longer text.
    """
    out = scale * (input - target) ** 2
    if weight is not None:
        out = out * weight
    return {"none": out, "mean": out.mean(), "sum": out.sum()}[reduction]


class ModuleLoss(nn.Module):
    """Cross-entropy as a module with a constructor parameter."""

    def __init__(self, weight: Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weight, self.label_smoothing = weight, label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, weight=self.weight,
                               label_smoothing=self.label_smoothing)  # fmt: skip


class StraightThroughRound(torch.autograd.Function):
    """Squared error of round(input): the gradient passes straight through the rounding."""

    @staticmethod
    def forward(ctx, input: Tensor, target: Tensor, scale: float = 1.0) -> Tensor:
        ctx.save_for_backward(input, target)
        ctx.scale = scale
        return scale * ((torch.round(input) - target) ** 2).mean()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        input, target = ctx.saved_tensors
        grad = ctx.scale * 2 * (torch.round(input) - target) / input.numel()
        return grad_output * grad, None, None


class FlattenedLoss:
    """fastai-style wrapper: move the class axis last and flatten before an inner loss."""

    def __init__(self, axis: int = 1, floatify: bool = False) -> None:
        self.axis, self.floatify = axis, floatify

    def __call__(self, input: Tensor, target: Tensor) -> Tensor:
        input = input.movedim(self.axis, -1).contiguous()
        return F.cross_entropy(input.view(-1, input.shape[-1]), target.view(-1))


def test_plain_function_spec_and_schema():
    built = build_loss(plain, "plain")
    spec = built.spec
    assert spec.style == "function"
    assert [t.name for t in spec.inputs] == ["input", "target"]
    assert [t.name for t in spec.tensor_params] == ["weight"]
    # a target's gradient is computed when asked for, never by default
    assert spec.inputs[0].grad_by_default and not spec.inputs[1].grad_by_default
    props = spec.params_schema["properties"]
    assert props["reduction"]["enum"] == ["none", "mean", "sum"]
    assert props["scale"]["exclusiveMinimum"] == 0 and props["scale"]["maximum"] == 10
    assert spec.params_schema["additionalProperties"] is False
    assert spec.summary == "Scaled squared error." and "Longer text." in spec.doc


def test_plain_function_evaluates_with_params_and_tensor_params():
    built = build_loss(plain, "plain")
    x, t, w = torch.randn(4), torch.randn(4), torch.rand(4)
    result = evaluate(built, {"input": x, "target": t, "weight": w}, {"scale": 3.0})
    xr = x.clone().requires_grad_()
    expected = (3.0 * (xr - t) ** 2 * w).mean()
    expected.backward()
    torch.testing.assert_close(result.loss, expected.detach())
    torch.testing.assert_close(result.grads["input"], xr.grad)
    with pytest.raises(InvalidParameter) as excinfo:
        evaluate(built, {"input": x, "target": t}, {"scale": 11})
    assert excinfo.value.field == "scale"


def test_module_class_takes_params_in_constructor():
    built = build_loss(ModuleLoss, "module_ce")
    assert built.spec.style == "module"
    assert [t.name for t in built.spec.tensor_params] == ["weight"]
    assert list(built.spec.params_schema["properties"]) == ["label_smoothing"]
    x, t, w = torch.randn(5, 3), torch.randint(0, 3, (5,)), torch.rand(3)
    result = evaluate(built, {"input": x, "target": t, "weight": w}, {"label_smoothing": 0.2})
    xr = x.clone().requires_grad_()
    expected = F.cross_entropy(xr, t, weight=w, label_smoothing=0.2)
    expected.backward()
    torch.testing.assert_close(result.loss, expected.detach())
    torch.testing.assert_close(result.grads["input"], xr.grad)


def test_autograd_function_uses_its_own_backward():
    built = build_loss(StraightThroughRound, "ste")
    assert built.spec.style == "autograd_function"
    assert list(built.spec.params_schema["properties"]) == ["scale"]
    x, t = torch.randn(6) * 3, torch.randn(6)
    result = evaluate(built, {"input": x, "target": t}, {"scale": 2.0})
    torch.testing.assert_close(result.loss, 2.0 * ((torch.round(x) - t) ** 2).mean())
    # autograd through round() would give zeros; the custom backward gives the straight-through one
    torch.testing.assert_close(result.grads["input"], 2.0 * 2 * (torch.round(x) - t) / 6)
    assert result.grads["input"].abs().sum() > 0


def test_fastai_style_flattening_wrapper():
    built = build_loss(FlattenedLoss, "ce_flat")
    assert built.spec.style == "class"
    assert set(built.spec.params_schema["properties"]) == {"axis", "floatify"}
    x, t = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    result = evaluate(built, {"input": x, "target": t}, {"axis": 1})
    xr = x.clone().requires_grad_()
    expected = F.cross_entropy(xr, t)  # flattening the class axis is what cross_entropy does
    expected.backward()
    torch.testing.assert_close(result.loss, expected.detach())
    torch.testing.assert_close(result.grads["input"], xr.grad)


def test_callable_instance_and_module_instance():
    built = build_loss(nn.SmoothL1Loss(beta=0.5), "smooth")
    assert built.spec.style == "module_instance"
    x, t = torch.randn(4), torch.randn(4)
    torch.testing.assert_close(evaluate(built, {"input": x, "target": t}).loss,
                               F.smooth_l1_loss(x, t, beta=0.5))  # fmt: skip
    built = build_loss(FlattenedLoss(axis=1), "ce_flat_instance")
    assert built.spec.style == "callable"


def test_spec_object_and_decorator_metadata():
    definition = LossDefinition(
        FlattenedLoss,
        summary="Flattened CE.",
        tags=["segmentation"],
        inputs={"target": {"dtypes": INT_DTYPES, "doc": "class indices"}},
        params={"axis": Annotated[int, Field(ge=0)]},
    )
    spec = build_loss(definition, "flat").spec
    assert spec.summary == "Flattened CE." and spec.tags == ("segmentation",)
    assert spec.tensor("target").dtypes == INT_DTYPES
    assert spec.params_schema["properties"]["axis"]["minimum"] == 0

    same_n = {"input": TensorSpec("input", shape="N"), "target": TensorSpec("target", shape="N")}

    @loss(inputs=same_n, exclude=["size_average"])
    def decorated(input, target, size_average=None, margin: float = 1.0):
        return (input - target + margin).clamp(min=0).sum()

    spec = build_loss(decorated, "decorated").spec
    assert list(spec.params_schema["properties"]) == ["margin"]
    assert spec.tensor("input").shape == "N"


def test_metadata_for_unknown_arguments_is_rejected():
    with pytest.raises(TypeError, match="unknown arguments"):
        build_loss(LossDefinition(plain, params={"nope": float}), "bad")


def test_unannotated_defaults_are_typed_from_their_values():
    def f(input, target, margin=0.5, swap=False, mode="a"):
        return input.sum()

    model = build_loss(f, "f").params_model
    assert model.model_json_schema()["properties"]["margin"]["type"] == "number"
    with pytest.raises(pydantic.ValidationError):
        model.model_validate({"swap": "not a bool"})


def test_unannotated_none_defaults_take_json_scalars_only():
    def f(input, target, scale=None):
        return (input * scale).sum()

    built = build_loss(f, "untyped")
    x = torch.ones(2)
    with pytest.raises(InvalidParameter) as excinfo:
        evaluate(built, {"input": x, "target": x}, {"scale": {"__class__": 1}})
    assert excinfo.value.field == "scale"
    # a scalar of the wrong kind reaches the loss, which refuses it: a 422, not a 500
    with pytest.raises(LossRejectedInput, match="untyped"):
        evaluate(built, {"input": x, "target": x}, {"scale": "abc"})
    assert evaluate(built, {"input": x, "target": x}, {"scale": 3}).loss.item() == 6.0


# -- the tutorials' signatures, read as Python reads them ----------------------------------------


class _FlatBase:
    def __init__(self, loss_cls=nn.BCEWithLogitsLoss, *args, axis=-1, is_2d=True, **kwargs):
        self.func, self.axis, self.is_2d = loss_cls(*args, **kwargs), axis, is_2d

    def __call__(self, inp: Tensor, targ: Tensor) -> Tensor:
        return self.func(inp.view(-1), targ.view(-1).float())


class BCEFlat(_FlatBase):
    """fastai's shape: a subclass that sets ``is_2d`` itself while its signature (as fastai's
    ``delegates`` writes it) still shows the base's ``is_2d``."""

    def __init__(self, *args, axis=-1, **kwargs):
        super().__init__(nn.BCEWithLogitsLoss, *args, axis=axis, is_2d=False, **kwargs)


BCEFlat.__init__.__signature__ = inspect.signature(  # type: ignore[attr-defined]
    lambda self, axis=-1, is_2d=True, reduction="mean": None
)


def test_only_the_parameters_a_caller_set_reach_the_constructor() -> None:
    built = build_loss(BCEFlat, "bce_flat")
    x, t = torch.randn(6), torch.randint(0, 2, (6,))
    result = evaluate(built, {"inp": x, "targ": t}, {"reduction": "sum"})
    expected = F.binary_cross_entropy_with_logits(x, t.float(), reduction="sum")
    torch.testing.assert_close(result.loss, expected)
    # the default is_2d is never passed, so BCEFlat's own is_2d=False does not collide
    torch.testing.assert_close(evaluate(built, {"inp": x, "targ": t}).loss, expected / 6)


def test_unannotated_defaults_become_what_python_would_accept() -> None:
    def tutorial(inputs, targets, weight=None, size_average=None, reduce=None, smooth=1):
        return ((inputs - targets) ** 2 * (1 if weight is None else weight)).mean() + smooth

    built = build_loss(tutorial, "tutorial")
    assert [t.name for t in built.spec.tensor_params] == ["weight"]
    assert list(built.spec.params_schema["properties"]) == ["smooth"]
    x, t, w = torch.randn(4), torch.randn(4), torch.rand(4)
    result = evaluate(built, {"inputs": x, "targets": t, "weight": w}, {"smooth": 1e-5})
    torch.testing.assert_close(result.loss, ((x - t) ** 2 * w).mean() + 1e-5)


def test_an_unannotated_none_default_that_gets_a_list_names_the_annotation_to_add() -> None:
    def tutorial(input, target, classes=None):
        return ((input - target) ** 2).mean()

    with pytest.raises(InvalidParameter, match=r"classes: list\[float\] \| None = None") as info:
        evaluate(build_loss(tutorial, "t"), {"input": torch.ones(2), "target": torch.ones(2)},
                 {"classes": [1.0, 2.0]})  # fmt: skip
    assert info.value.field == "classes"


def test_a_plugin_declares_which_inputs_are_differentiable() -> None:
    @loss(inputs={"target": {"grad_by_default": True}, "mask": {"differentiable": False}})
    def masked(input: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return (((input - target) * mask) ** 2).mean()

    built = build_loss(masked, "masked")
    x, t, m = torch.randn(4), torch.randn(4), torch.rand(4)
    assert set(evaluate(built, {"input": x, "target": t, "mask": m}).grads) == {"input", "target"}
    with pytest.raises(InvalidInput, match="'mask' is not differentiable"):
        evaluate(built, {"input": x, "target": t, "mask": m}, grad=["mask"])


def test_a_class_docstring_is_never_inherited_from_its_base() -> None:
    class NoDoc(nn.Module):
        def forward(self, input: Tensor, target: Tensor) -> Tensor:
            return (input - target).abs().mean()

    spec = build_loss(NoDoc, "nodoc").spec
    assert spec.summary == "" and spec.doc == ""
