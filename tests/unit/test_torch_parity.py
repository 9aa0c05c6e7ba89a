"""Every extra input form torch's losses accept (unbatched, promoted integer targets) gets
torch's value and gradient through the engine: the gradient of every float input, a target's
included where torch has one."""

from __future__ import annotations

import pytest
import torch

from lossreg_service.engine import evaluate
from lossreg_service.registry import LossRegistry
from tests.support.loss_cases import FORMS, grad_names, make_form, reference

REGISTRY = LossRegistry.from_entry_points(autoload=False)


@pytest.mark.parametrize("form", list(FORMS))
def test_form_matches_torch(form: str) -> None:
    name, tensors, params = make_form(form)
    loss = REGISTRY.get(name)
    grad = grad_names(loss.spec, tensors, default=False)
    result = evaluate(loss, tensors, params, grad=grad)
    value, grads = reference(name, tensors, params, grad)
    torch.testing.assert_close(result.loss, value)
    assert set(result.grads) == set(grad) and grad, "at least the prediction's gradient"
    for key, expected in grads.items():
        torch.testing.assert_close(result.grads[key], expected)


def test_every_builtin_has_an_unbatched_or_promoted_form_where_torch_has_one() -> None:
    covered = {name for name, _ in FORMS.values()}
    # kl_div and binary_cross_entropy refuse integer targets in torch (huber_loss's backward
    # does); their unbatched form is the elementwise one of CASES (any shape).
    assert covered >= {
        "cross_entropy", "nll_loss", "multi_margin_loss", "multilabel_margin_loss",
        "multilabel_soft_margin_loss", "cosine_embedding_loss", "triplet_margin_loss",
        "margin_ranking_loss", "hinge_embedding_loss", "soft_margin_loss", "mse_loss",
        "l1_loss", "smooth_l1_loss", "poisson_nll_loss", "gaussian_nll_loss",
        "ctc_loss", "binary_cross_entropy_with_logits",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "tensors", "field", "text"),
    [
        ("cross_entropy", {"input": torch.randn(5), "target": torch.tensor([1, 2])}, "target",
         "must have shape []"),
        ("cross_entropy", {"input": torch.randn(4, 5), "target": torch.randint(0, 5, (4, 1))},
         "target", "must have shape [4]"),
        ("cross_entropy", {"input": torch.randn(4, 5), "target": torch.tensor([0, 1, 2, 3]),
                           "weight": torch.ones(4)}, "weight", "must have shape [5]"),
        ("nll_loss", {"input": torch.randn(4, 5), "target": torch.rand(4)}, "target",
         "send an integer tensor (int64"),
    ],
)  # fmt: skip
def test_class_index_mistakes_name_the_field(name, tensors, field, text) -> None:
    from lossreg.errors import InvalidInput

    with pytest.raises(InvalidInput) as info:
        evaluate(REGISTRY.get(name), tensors)
    assert info.value.field == field and text in str(info.value), str(info.value)
