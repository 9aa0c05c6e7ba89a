"""Every built-in torch loss through the engine: value and gradients against plain torch, and
float64 gradcheck of the engine's gradients against finite differences of its values."""

from __future__ import annotations

import pytest
import torch

from lossreg_service.engine import evaluate
from lossreg_service.registry import Loss, LossRegistry
from tests.support.loss_cases import (
    CASES,
    NOT_SERVED,
    grad_names,
    make_case,
    reference,
    torch_nn_loss_functions,
)

REGISTRY = LossRegistry.from_entry_points(autoload=False)
BUILTINS = [
    s.name for s in REGISTRY.list() if s.entry_point.startswith("lossreg_service.losses.torch_nn:")
]


def test_every_torch_nn_loss_is_a_builtin_with_a_case():
    assert set(BUILTINS) == torch_nn_loss_functions() - set(NOT_SERVED)
    assert set(BUILTINS) == set(CASES)


@pytest.mark.parametrize("name", BUILTINS)
def test_value_and_gradients_match_torch(name):
    loss = REGISTRY.get(name)
    tensors, params = make_case(name)
    assert set(evaluate(loss, tensors, params).grads) == set(
        grad_names(loss.spec, tensors, default=True)
    )
    # every gradient that may be asked for, a float target's included, is torch's
    differentiable = grad_names(loss.spec, tensors, default=False)
    result = evaluate(loss, tensors, params, grad=differentiable)
    expected, expected_grads = reference(name, tensors, params, differentiable)
    torch.testing.assert_close(result.loss, expected)
    assert set(result.grads) == set(differentiable)
    for key, grad in expected_grads.items():
        assert result.grads[key].dtype == tensors[key].dtype
        torch.testing.assert_close(result.grads[key], grad, equal_nan=True)  # poisson full at 0


@pytest.mark.parametrize("name", BUILTINS)
def test_reduction_none_takes_an_upstream_gradient(name):
    loss = REGISTRY.get(name)
    tensors, params = make_case(name)
    params = {**params, "reduction": "none"}
    differentiable = grad_names(loss.spec, tensors, default=True)
    plain = evaluate(loss, tensors, params, grad=[])
    upstream = torch.rand(plain.loss.shape, generator=torch.Generator().manual_seed(1))
    result = evaluate(loss, tensors, params, grad_loss=upstream)
    expected, _ = reference(name, tensors, params, [])
    torch.testing.assert_close(result.loss, expected)
    # The vector-Jacobian product equals the gradient of sum(upstream * loss).
    leaves = {k: v.clone().requires_grad_(k in differentiable) for k, v in tensors.items()}
    weighted = (getattr(torch.nn.functional, name)(**leaves, **params) * upstream).sum()
    grads = torch.autograd.grad(weighted, [leaves[k] for k in differentiable])
    for key, grad in zip(differentiable, grads, strict=True):
        torch.testing.assert_close(result.grads[key], grad, equal_nan=True)  # poisson full at 0


class _ThroughEngine(torch.autograd.Function):
    """Forward = the engine's value; backward = the engine's vector-Jacobian product."""

    @staticmethod
    def forward(ctx, loss: Loss, names, fixed, params, *diff):
        ctx.loss, ctx.names, ctx.fixed, ctx.params = loss, names, fixed, params
        ctx.save_for_backward(*diff)
        return evaluate(loss, {**fixed, **dict(zip(names, diff))}, params, grad=[]).loss

    @staticmethod
    def backward(ctx, grad_output):
        diff = ctx.saved_tensors
        result = evaluate(
            ctx.loss, {**ctx.fixed, **dict(zip(ctx.names, diff))}, ctx.params,
            grad=list(ctx.names), grad_loss=grad_output,
        )  # fmt: skip
        return (None, None, None, None, *(result.grads[n] for n in ctx.names))


@pytest.mark.parametrize("reduction", ["default", "none"])
@pytest.mark.parametrize("name", BUILTINS)
def test_gradcheck_float64_through_the_engine(name, reduction):
    loss = REGISTRY.get(name)
    tensors, params = make_case(name, torch.float64)
    if reduction == "none":
        params = {**params, "reduction": "none"}
    names = grad_names(loss.spec, tensors, default=True)
    fixed = {k: v for k, v in tensors.items() if k not in names}
    diff = [tensors[n].clone().requires_grad_() for n in names]

    # CTC's gradient is only defined for normalised log-probabilities (torch's own gradcheck of
    # ctc_loss goes through log_softmax too): perturb logits, normalise, then call the engine.
    normalise = (lambda x: x.log_softmax(2)) if name == "ctc_loss" else (lambda x: x)

    def f(*xs):
        return _ThroughEngine.apply(loss, names, fixed, params, *map(normalise, xs))

    assert torch.autograd.gradcheck(f, diff, eps=1e-6, atol=1e-5)
