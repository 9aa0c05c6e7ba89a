"""Valid example inputs for every built-in ``torch.nn`` loss, and its plain-torch reference.

Engine, server and client tests parametrize over the registry and take their inputs from here,
so a new built-in is covered by adding one line to `CASES`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Case = tuple[dict[str, torch.Tensor], dict[str, Any]]

NOT_SERVED = {
    # torch.nn losses the registry leaves out, and why (the README says so too)
    "triplet_margin_with_distance_loss": "its distance_function is Python code, which no client "
    "may send",
    "linear_cross_entropy": "torch's fused projection + cross entropy (LinearCrossEntropyLoss), "
    "newer than lossreg's built-ins",
}


def torch_nn_loss_functions() -> set[str]:
    """The ``torch.nn.functional`` name of every public ``torch.nn`` loss class of the installed
    torch: the function its ``forward`` calls (``CrossEntropyLoss`` -> ``cross_entropy``)."""
    names: set[str] = set()
    for attr in dir(nn):
        cls = getattr(nn, attr)
        if attr.startswith("_") or not (
            inspect.isclass(cls) and issubclass(cls, nn.modules.loss._Loss)
        ):
            continue
        calls = re.findall(r"\bF\.(\w+)\(", inspect.getsource(cls.forward))
        assert len(set(calls)) == 1, f"torch.nn.{attr}.forward calls {calls}"
        names.add(calls[0])
    return names


def _sign(*shape: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=g).double() * 2 - 1


def _pair(g: torch.Generator, *shape: int) -> dict[str, torch.Tensor]:
    return {"input": torch.randn(*shape, generator=g), "target": torch.randn(*shape, generator=g)}


def _cases() -> dict[str, Callable[[torch.Generator], Case]]:
    def logits_and_classes(g: torch.Generator) -> Case:
        return {"input": torch.randn(4, 5, generator=g),
                "target": torch.randint(0, 5, (4,), generator=g),
                "weight": torch.rand(5, generator=g) + 0.5}, {"label_smoothing": 0.1}  # fmt: skip

    def nll(g: torch.Generator) -> Case:
        return {"input": torch.randn(4, 5, generator=g).log_softmax(1),
                "target": torch.randint(0, 5, (4,), generator=g)}, {}  # fmt: skip

    def bce(g: torch.Generator) -> Case:
        return {"input": torch.rand(3, 4, generator=g) * 0.8 + 0.1,
                "target": torch.rand(3, 4, generator=g)}, {}  # fmt: skip

    def bce_logits(g: torch.Generator) -> Case:
        return {"input": torch.randn(3, 4, generator=g), "target": torch.rand(3, 4, generator=g),
                "pos_weight": torch.rand(4, generator=g) + 0.5}, {}  # fmt: skip

    def kl(g: torch.Generator) -> Case:
        return {"input": torch.randn(3, 4, generator=g).log_softmax(1),
                "target": torch.randn(3, 4, generator=g).softmax(1)}, {
            "reduction": "batchmean"}  # fmt: skip

    def signs(g: torch.Generator) -> Case:
        return {"input": torch.randn(3, 4, generator=g), "target": _sign(3, 4, g=g)}, {}

    def multilabel_soft(g: torch.Generator) -> Case:
        return {"input": torch.randn(3, 4, generator=g),
                "target": torch.randint(0, 2, (3, 4), generator=g).double()}, {}  # fmt: skip

    def multilabel_margin(g: torch.Generator) -> Case:
        target = torch.tensor([[3, 0, -1, 1], [1, 2, 3, -1], [0, -1, 2, 2]])
        return {"input": torch.randn(3, 4, generator=g), "target": target}, {}

    def multi_margin(g: torch.Generator) -> Case:
        return {"input": torch.randn(3, 4, generator=g),
                "target": torch.randint(0, 4, (3,), generator=g)}, {
            "p": 2, "margin": 0.7}  # fmt: skip

    def hinge(g: torch.Generator) -> Case:
        return {"input": torch.rand(3, 4, generator=g) * 2, "target": _sign(3, 4, g=g)}, {
            "margin": 1.3
        }

    def cosine(g: torch.Generator) -> Case:
        return {"input1": torch.randn(3, 4, generator=g), "input2": torch.randn(3, 4, generator=g),
                "target": _sign(3, g=g)}, {"margin": 0.2}  # fmt: skip

    def ranking(g: torch.Generator) -> Case:
        return {"input1": torch.randn(5, generator=g), "input2": torch.randn(5, generator=g),
                "target": _sign(5, g=g)}, {"margin": 0.1}  # fmt: skip

    def triplet(g: torch.Generator) -> Case:
        return {n: torch.randn(3, 4, generator=g) for n in ("anchor", "positive", "negative")}, {
            "margin": 0.5
        }

    def poisson(g: torch.Generator) -> Case:
        return {"input": torch.randn(3, 4, generator=g),
                "target": torch.poisson(torch.rand(3, 4, generator=g) * 3, generator=g)}, {
            "full": True}  # fmt: skip

    def gaussian(g: torch.Generator) -> Case:
        return {**_pair(g, 3, 4), "var": torch.rand(3, 4, generator=g) + 0.5}, {}

    def ctc(g: torch.Generator) -> Case:
        return {"log_probs": torch.randn(6, 2, 4, generator=g).log_softmax(2),
                "targets": torch.randint(1, 4, (2, 3), generator=g),
                "input_lengths": torch.tensor([6, 5]),
                "target_lengths": torch.tensor([3, 2])}, {}  # fmt: skip

    def regression(g: torch.Generator) -> Case:
        return {**_pair(g, 3, 4), "weight": torch.rand(3, 4, generator=g)}, {}

    return {
        "l1_loss": regression,
        "mse_loss": regression,
        "huber_loss": lambda g: (_pair(g, 3, 4), {"delta": 0.7}),
        "smooth_l1_loss": lambda g: (_pair(g, 3, 4), {"beta": 0.5}),
        "cross_entropy": logits_and_classes,
        "nll_loss": nll,
        "binary_cross_entropy": bce,
        "binary_cross_entropy_with_logits": bce_logits,
        "kl_div": kl,
        "soft_margin_loss": signs,
        "multilabel_soft_margin_loss": multilabel_soft,
        "multilabel_margin_loss": multilabel_margin,
        "multi_margin_loss": multi_margin,
        "hinge_embedding_loss": hinge,
        "cosine_embedding_loss": cosine,
        "margin_ranking_loss": ranking,
        "triplet_margin_loss": triplet,
        "poisson_nll_loss": poisson,
        "gaussian_nll_loss": gaussian,
        "ctc_loss": ctc,
    }


CASES = _cases()


def make_case(name: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> Case:
    """Inputs (floating ones in ``dtype``) and parameters for the built-in loss ``name``."""
    g = torch.Generator().manual_seed(seed)
    tensors, params = CASES[name](g)
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    return tensors, params


def reference(
    name: str, tensors: dict[str, torch.Tensor], params: dict[str, Any], grad: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Value and gradients straight from ``torch.nn.functional`` and autograd: the ground truth."""
    leaves = {k: (v.detach().clone().requires_grad_(k in grad)) for k, v in tensors.items()}
    value = getattr(F, name)(**leaves, **params)
    wanted = [leaves[k] for k in grad]
    grads = torch.autograd.grad(value, wanted, allow_unused=True) if wanted else ()
    # An input the loss does not differentiate through (hinge's target) has no gradient in
    # torch; the engine sends zeros for it.
    grads = tuple(torch.zeros_like(w) if g is None else g for w, g in zip(wanted, grads))
    return value.detach(), dict(zip(grad, grads, strict=True))


def grad_names(spec: Any, tensors: dict[str, torch.Tensor], *, default: bool) -> list[str]:
    """The inputs whose gradient is computed by default (``default``), or every float input
    whose gradient may be asked for (targets included)."""
    return [
        t.name
        for t in spec.inputs
        if t.differentiable
        and t.name in tensors
        and tensors[t.name].is_floating_point()
        and (t.grad_by_default or not default)
    ]


def _forms() -> dict[str, tuple[str, Callable[[torch.Generator], Case]]]:
    """Input forms torch's losses accept besides the batched float one of `CASES`: unbatched
    inputs and integer targets torch promotes. id -> (loss, inputs)."""

    def r(*shape: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=g)

    def sign(*shape: int, g: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=g) * 2 - 1  # int64

    def ints(g: torch.Generator, *shape: int, high: int = 4) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=g)

    return {
        "ce unbatched index": ("cross_entropy", lambda g: (
            {"input": r(5, g=g), "target": torch.tensor(3)}, {})),
        "ce unbatched probabilities": ("cross_entropy", lambda g: (
            {"input": r(5, g=g), "target": r(5, g=g).softmax(0)}, {})),
        "ce unbatched weighted": ("cross_entropy", lambda g: (
            {"input": r(5, g=g), "target": torch.tensor(1), "weight": torch.rand(5, generator=g)},
            {})),
        "ce spatial": ("cross_entropy", lambda g: (
            {"input": r(2, 3, 4, 4, g=g), "target": ints(g, 2, 4, 4, high=3)}, {})),
        "nll unbatched": ("nll_loss", lambda g: (
            {"input": r(5, g=g).log_softmax(0), "target": torch.tensor(2)}, {})),
        "multi_margin unbatched": ("multi_margin_loss", lambda g: (
            {"input": r(4, g=g), "target": torch.tensor(1)}, {})),
        "multilabel_margin unbatched": ("multilabel_margin_loss", lambda g: (
            {"input": r(4, g=g), "target": torch.tensor([3, 0, -1, 1])}, {})),
        "multilabel_soft_margin unbatched": ("multilabel_soft_margin_loss", lambda g: (
            {"input": r(4, g=g), "target": ints(g, 4, high=2).float()}, {})),
        "multilabel_soft_margin int target": ("multilabel_soft_margin_loss", lambda g: (
            {"input": r(3, 4, g=g), "target": ints(g, 3, 4, high=2)}, {})),
        "cosine unbatched": ("cosine_embedding_loss", lambda g: (
            {"input1": r(4, g=g), "input2": r(4, g=g), "target": torch.tensor(-1.0)}, {})),
        "cosine int target": ("cosine_embedding_loss", lambda g: (
            {"input1": r(3, 4, g=g), "input2": r(3, 4, g=g), "target": sign(3, g=g)},
            {"margin": 0.2})),
        "triplet unbatched": ("triplet_margin_loss", lambda g: (
            {n: r(4, g=g) for n in ("anchor", "positive", "negative")}, {"margin": 3.0})),
        "margin_ranking int target": ("margin_ranking_loss", lambda g: (
            {"input1": r(5, g=g), "input2": r(5, g=g), "target": sign(5, g=g)}, {"margin": 0.1})),
        "hinge int target": ("hinge_embedding_loss", lambda g: (
            {"input": torch.rand(3, 4, generator=g) * 2, "target": sign(3, 4, g=g)}, {})),
        "soft_margin int target": ("soft_margin_loss", lambda g: (
            {"input": r(3, 4, g=g), "target": sign(3, 4, g=g)}, {})),
        "mse int target": ("mse_loss", lambda g: (
            {"input": r(3, 4, g=g), "target": ints(g, 3, 4)}, {})),
        "l1 int target": ("l1_loss", lambda g: (
            {"input": r(3, 4, g=g), "target": ints(g, 3, 4)}, {})),
        "smooth_l1 int target": ("smooth_l1_loss", lambda g: (
            {"input": r(3, 4, g=g), "target": ints(g, 3, 4)}, {})),
        "poisson int counts": ("poisson_nll_loss", lambda g: (
            {"input": r(3, 4, g=g), "target": ints(g, 3, 4)}, {})),
        "gaussian int target": ("gaussian_nll_loss", lambda g: (
            {"input": r(3, 4, g=g), "target": ints(g, 3, 4),
             "var": torch.rand(3, 4, generator=g) + 0.5}, {})),
        "gaussian one variance per sample": ("gaussian_nll_loss", lambda g: (
            {"input": r(3, 4, g=g), "target": r(3, 4, g=g),
             "var": torch.rand(3, 1, generator=g) + 0.5}, {})),
        "mse scalars": ("mse_loss", lambda g: (
            {"input": r(g=g), "target": r(g=g)}, {})),
        "bce with logits unbatched": ("binary_cross_entropy_with_logits", lambda g: (
            {"input": r(4, g=g), "target": torch.rand(4, generator=g)}, {})),
        "ctc unbatched": ("ctc_loss", lambda g: (
            {"log_probs": r(6, 4, g=g).log_softmax(1), "targets": torch.tensor([1, 2, 1]),
             "input_lengths": torch.tensor(6), "target_lengths": torch.tensor(3)}, {})),
    }  # fmt: skip


FORMS = _forms()


def make_form(form: str, seed: int = 0) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """The loss name, inputs and parameters of one extra input form."""
    name, build = FORMS[form]
    tensors, params = build(torch.Generator().manual_seed(seed))
    return name, tensors, params


def zoo_case(name: str, seed: int = 0) -> Case:
    """Valid inputs (float32 input, int32 class indices) and non-default parameters for the zoo
    loss ``name``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 4, generator=g)
    labels = torch.randint(0, 3, (2, 4, 4), generator=g, dtype=torch.int32)
    masks = (torch.rand(2, 3, 4, 4, generator=g) > 0.5).float()
    weight = torch.tensor([0.5, 1.0, 2.0])
    if name == "log_cosh":
        return {"input": x, "target": torch.randn(2, 3, 4, 4, generator=g)}, {"reduction": "sum"}
    if name == "lovasz_hinge":
        return {"input": x, "target": masks}, {"mode": "multilabel", "batch": True}
    if name in ("lovasz_softmax", "weighted_cross_entropy"):
        return {"input": x, "target": labels}, {"ignore_index": 2}
    if name == "generalized_dice":
        return {"input": x, "target": masks}, {"mode": "multilabel", "weight_type": "simple"}
    params: dict[str, Any] = {"include_background": False}
    if name == "focal":
        params.update(gamma=1.5, alpha=0.25)
    if name == "tversky":
        params.update(alpha=0.3, beta=0.7)
    return {"input": x, "target": labels, "weight": weight}, params


def zoo_reference(
    name: str, tensors: dict[str, torch.Tensor], params: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and input gradient of a direct call of the zoo function: the ground truth."""
    from lossreg_service.losses import zoo

    leaf = tensors["input"].detach().clone().requires_grad_(True)
    target = tensors["target"]
    target = target if target.is_floating_point() else target.long()
    extra = {k: v for k, v in tensors.items() if k not in ("input", "target")}
    value = getattr(zoo, name)(leaf, target, **extra, **params)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad
