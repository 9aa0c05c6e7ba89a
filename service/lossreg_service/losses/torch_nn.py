"""Every ``torch.nn`` loss, under its ``torch.nn.functional`` name.

Thin wrappers, so that each signature says exactly what the service exposes: the functional
argument names for tensors (``input``, ``target``, ``log_probs``...), the module constructor's
parameters (without the deprecated ``size_average``/``reduce``), and ranges and enums as
annotations, from which the JSON schema is derived. They are registered through the
``lossreg.losses`` entry-point group in lossreg's own ``pyproject.toml``, like any plugin.

Torch parity: every input form torch's own loss takes is accepted with torch's value and
gradient: unbatched inputs (``cross_entropy`` on ``[C]`` logits and a ``[]`` class index),
integer targets where torch promotes them (``margin_ranking_loss``, ``hinge_embedding_loss``,
``mse_loss``...), and a float target's gradient where torch has one (asked for, not by default).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from lossreg.errors import InvalidInput, ShapeMismatch

from ..engine.checks import all_within, any_true
from ..registry import FLOAT_DTYPES, INT_DTYPES, Reduction, TensorSpec, loss

NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]

_CLASS_INDEX = TensorSpec(
    "target", INT_DTYPES, differentiable=False, cast="int64", doc="class indices in [0, C)"
)
_SAME = "*S"  # same shape as the other tensor(s) marked so


def _pred(shape: str | None = _SAME, doc: str = "predictions") -> TensorSpec:
    return TensorSpec("input", FLOAT_DTYPES, differentiable=True, shape=shape, doc=doc)


_PROMOTED = FLOAT_DTYPES + INT_DTYPES  # integer targets torch promotes to the input's dtype


def _target(
    shape: str | None = _SAME,
    doc: str = "targets",
    dtypes: tuple[str, ...] = FLOAT_DTYPES,
    differentiable: bool = True,
) -> TensorSpec:
    """A target: its gradient (where torch has one) is computed only when asked for."""
    return TensorSpec(
        "target",
        dtypes,
        differentiable=differentiable,
        shape=shape,
        doc=doc,
        grad_by_default=False,
    )


def _check_class_weight(input: Tensor, weight: Tensor | None) -> None:
    """A class weight has one entry per class (dimension C of the input)."""
    classes = input.shape[1] if input.dim() > 1 else input.shape[0]
    if weight is not None and list(weight.shape) != [classes]:
        raise ShapeMismatch(
            f"'weight' has shape {list(weight.shape)}; class weights must have shape "
            f"[{classes}] (dimension C of the input, {list(input.shape)})",
            field="weight",
        )


def _check_class_shapes(input: Tensor, target: Tensor) -> None:
    """Class indices are shaped like the input without its class axis: ``[N, d1, ...]`` for
    ``[N, C, d1, ...]``, ``[]`` for unbatched ``[C]`` logits (as torch takes them)."""
    if input.dim() == 0:
        raise ShapeMismatch(
            "'input' has shape []; it must be [C] or [N, C, d1, ...] (C classes)", field="input"
        )
    expected = list(input.shape[:1] + input.shape[2:]) if input.dim() > 1 else []
    if list(target.shape) != expected:
        raise ShapeMismatch(
            f"'target' has shape {list(target.shape)}, but class indices for an input of shape "
            f"{list(input.shape)} must have shape {expected} (the input without its class axis)",
            field="target",
        )


def _check_classes(input: Tensor, target: Tensor, ignore_index: int | None = None) -> None:
    """Class indices must lie in [0, C) (or be ``ignore_index``).

    torch reports an out-of-range index without naming the input on CPU, and on CUDA as a
    device-side assert that poisons the whole CUDA context: check first, name the field.
    """
    if target.numel() == 0:
        return
    classes = input.shape[1] if input.dim() > 1 else input.shape[0]
    if all_within(target, 0, classes):  # the common case, in one read
        return
    valid = (target >= 0) & (target < classes)
    if ignore_index is not None:
        valid |= target == ignore_index
    if any_true(~valid):
        bad = int(target[~valid].flatten()[0])
        allowed = f"[0, {classes})" + (f" or {ignore_index}" if ignore_index is not None else "")
        raise InvalidInput(
            f"target holds class index {bad}; the input has {classes} classes, so indices must "
            f"be in {allowed}",
            field="target",
        )


_ELEMENTWISE = {"input": _pred(), "target": _target(dtypes=_PROMOTED)}
_WEIGHT = {"weight": {"doc": "per-element rescaling weight, broadcast to the input"}}
_CLASS_WEIGHT = {"weight": {"doc": "per-class rescaling weight of shape [C]", "shape": "C"}}


@loss(
    summary="Mean absolute error |input - target|.",
    tags=["regression"],
    inputs=_ELEMENTWISE,
    tensor_params=_WEIGHT,
)
def l1_loss(
    input: Tensor, target: Tensor, weight: Tensor | None = None, *, reduction: Reduction = "mean"
) -> Tensor:
    # torch's functional.pyi lacks `weight` (functional.py has had it since 2.6)
    return F.l1_loss(input, target, reduction=reduction, weight=weight)  # type: ignore[call-arg]


@loss(
    summary="Mean squared error (input - target)^2.",
    tags=["regression"],
    inputs=_ELEMENTWISE,
    tensor_params=_WEIGHT,
)
def mse_loss(
    input: Tensor, target: Tensor, weight: Tensor | None = None, *, reduction: Reduction = "mean"
) -> Tensor:
    # torch's functional.pyi lacks `weight` (functional.py has had it since 2.6)
    return F.mse_loss(input, target, reduction=reduction, weight=weight)  # type: ignore[call-arg]


@loss(
    summary="Cross-entropy between logits and class indices or class probabilities.",
    tags=["classification", "segmentation"],
    inputs={
        "input": _pred(None, "unnormalised logits, [C], [N, C] or [N, C, d1, ...]"),
        "target": _target(
            None,
            "class indices [], [N] or [N, d1, ...] (integer) or probabilities shaped like input "
            "(float)",
            FLOAT_DTYPES + INT_DTYPES,
        ),
    },
    tensor_params=_CLASS_WEIGHT,
)
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: Annotated[float, Field(ge=0, le=1)] = 0.0,
) -> Tensor:
    _check_class_weight(input, weight)
    if not target.is_floating_point():
        target = target.long()
        _check_class_shapes(input, target)
        _check_classes(input, target, ignore_index)
    return F.cross_entropy(
        input,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


@loss(
    summary="Negative log-likelihood of log-probabilities at class indices.",
    tags=["classification", "segmentation"],
    inputs={
        "input": _pred(None, "log-probabilities, [C], [N, C] or [N, C, d1, ...]"),
        "target": _CLASS_INDEX,
    },
    tensor_params=_CLASS_WEIGHT,
)
def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    _check_class_weight(input, weight)
    _check_class_shapes(input, target)
    _check_classes(input, target, ignore_index)
    return F.nll_loss(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction)


@loss(
    summary="Binary cross-entropy between probabilities and targets in [0, 1].",
    tags=["classification", "segmentation"],
    inputs={"input": _pred(doc="probabilities in [0, 1]"), "target": _target()},
    tensor_params=_WEIGHT,
)
def binary_cross_entropy(
    input: Tensor, target: Tensor, weight: Tensor | None = None, *, reduction: Reduction = "mean"
) -> Tensor:
    return F.binary_cross_entropy(input, target, weight=weight, reduction=reduction)


@loss(
    summary="Binary cross-entropy on logits (sigmoid fused, numerically stable).",
    tags=["classification", "segmentation"],
    inputs={"input": _pred(doc="logits"), "target": _target()},
    tensor_params={**_WEIGHT, "pos_weight": {"doc": "weight of positive examples, per class"}},
)
def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    return F.binary_cross_entropy_with_logits(
        input, target, weight=weight, pos_weight=pos_weight, reduction=reduction
    )


@loss(
    summary="Kullback-Leibler divergence; input is log-probabilities.",
    tags=["distribution"],
    inputs={
        "input": _pred(doc="log-probabilities"),
        "target": _target(doc="probabilities (log-probabilities if log_target)"),
    },
)
def kl_div(
    input: Tensor,
    target: Tensor,
    *,
    reduction: Literal["none", "mean", "sum", "batchmean"] = "mean",
    log_target: bool = False,
) -> Tensor:
    return F.kl_div(input, target, reduction=reduction, log_target=log_target)


@loss(
    summary="Huber loss: squared below delta, absolute above.",
    tags=["regression"],
    # torch's huber_loss takes an integer target forward but its backward refuses one
    inputs={"input": _pred(), "target": _target()},
    tensor_params=_WEIGHT,
)
def huber_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    reduction: Reduction = "mean",
    delta: Positive = 1.0,
) -> Tensor:
    # torch's functional.pyi lacks `weight` (functional.py has had it since 2.6)
    return F.huber_loss(  # type: ignore[call-arg]
        input, target, reduction=reduction, delta=delta, weight=weight
    )


@loss(
    summary="Smooth L1 loss: squared below beta, absolute above.",
    tags=["regression"],
    inputs=_ELEMENTWISE,
)
def smooth_l1_loss(
    input: Tensor, target: Tensor, *, reduction: Reduction = "mean", beta: NonNegative = 1.0
) -> Tensor:
    return F.smooth_l1_loss(input, target, reduction=reduction, beta=beta)


@loss(
    summary="Two-class logistic loss log(1 + exp(-target * input)), target in {-1, 1}.",
    tags=["classification"],
    inputs={"input": _pred(), "target": _target(dtypes=_PROMOTED, differentiable=False)},
)
def soft_margin_loss(input: Tensor, target: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    return F.soft_margin_loss(input, target, reduction=reduction)


@loss(
    summary="Multi-label one-versus-all logistic loss.",
    tags=["classification"],
    inputs={
        "input": _pred(doc="logits [N, C] or [C]"),
        "target": _target(doc="0/1 labels [N, C] or [C]", dtypes=_PROMOTED),
    },
    tensor_params=_CLASS_WEIGHT,
)
def multilabel_soft_margin_loss(
    input: Tensor, target: Tensor, weight: Tensor | None = None, *, reduction: Reduction = "mean"
) -> Tensor:
    return F.multilabel_soft_margin_loss(input, target, weight=weight, reduction=reduction)


@loss(
    summary="Multi-label hinge loss; target holds class indices, padded with -1.",
    tags=["classification"],
    inputs={
        "input": _pred(doc="scores [N, C]"),
        "target": TensorSpec(
            "target",
            INT_DTYPES,
            differentiable=False,
            shape=_SAME,
            cast="int64",
            doc="class indices [N, C], -1 ends the list",
        ),
    },
)
def multilabel_margin_loss(
    input: Tensor, target: Tensor, *, reduction: Reduction = "mean"
) -> Tensor:
    return F.multilabel_margin_loss(input, target, reduction=reduction)


@loss(
    summary="Multi-class hinge loss between scores and a class index.",
    tags=["classification"],
    inputs={
        "input": _pred("*B C", "scores [N, C] or [C]"),
        "target": TensorSpec(
            "target",
            INT_DTYPES,
            differentiable=False,
            shape="*B",
            cast="int64",
            doc="class indices [N] (or [] for unbatched [C] scores)",
        ),
    },
    tensor_params=_CLASS_WEIGHT,
)
def multi_margin_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    p: Literal[1, 2] = 1,
    margin: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    if input.dim() > 2:
        raise ShapeMismatch(
            f"'input' has shape {list(input.shape)}; it must be [N, C] or [C]", field="input"
        )
    _check_class_shapes(input, target)
    _check_classes(input, target)
    return F.multi_margin_loss(
        input, target, p=p, margin=margin, weight=weight, reduction=reduction
    )


@loss(
    summary="Hinge embedding loss for distances x with labels in {-1, 1}.",
    tags=["metric-learning"],
    inputs=_ELEMENTWISE,
)
def hinge_embedding_loss(
    input: Tensor, target: Tensor, *, margin: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    return F.hinge_embedding_loss(input, target, margin=margin, reduction=reduction)


_EMBEDDING_PAIR = {
    "input1": TensorSpec("input1", FLOAT_DTYPES, shape="*B D", doc="embeddings [N, D]"),
    "input2": TensorSpec("input2", FLOAT_DTYPES, shape="*B D", doc="embeddings [N, D]"),
    "target": _target("*B", "1 (similar) or -1 (dissimilar), [N] (or [])", _PROMOTED),
}


@loss(
    summary="Cosine embedding loss: pull similar pairs together, push others apart.",
    tags=["metric-learning"],
    inputs=_EMBEDDING_PAIR,
)
def cosine_embedding_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    *,
    margin: Annotated[float, Field(ge=-1, le=1)] = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    return F.cosine_embedding_loss(input1, input2, target, margin=margin, reduction=reduction)


@loss(
    summary="Margin ranking loss max(0, -target * (input1 - input2) + margin).",
    tags=["ranking", "metric-learning"],
    inputs={
        "input1": TensorSpec("input1", shape=_SAME),
        "input2": TensorSpec("input2", shape=_SAME),
        "target": _target(doc="1 if input1 should rank higher, -1 otherwise", dtypes=_PROMOTED),
    },
)
def margin_ranking_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    *,
    margin: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    return F.margin_ranking_loss(input1, input2, target, margin=margin, reduction=reduction)


@loss(
    summary="Triplet margin loss on (anchor, positive, negative) embeddings.",
    tags=["metric-learning"],
    inputs={
        n: TensorSpec(n, FLOAT_DTYPES, shape="*B D", doc="embeddings [N, D]")
        for n in ("anchor", "positive", "negative")
    },
)
def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    margin: float = 1.0,
    p: Positive = 2.0,
    eps: NonNegative = 1e-6,
    swap: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    return F.triplet_margin_loss(
        anchor, positive, negative, margin=margin, p=p, eps=eps, swap=swap, reduction=reduction
    )


@loss(
    summary="Poisson negative log-likelihood; input is the (log-)rate.",
    tags=["regression"],
    inputs={
        "input": _pred(doc="log-rate if log_input, else rate"),
        "target": _target(dtypes=_PROMOTED),
    },
)
def poisson_nll_loss(
    input: Tensor,
    target: Tensor,
    *,
    log_input: bool = True,
    full: bool = False,
    eps: Positive = 1e-8,
    reduction: Reduction = "mean",
) -> Tensor:
    return F.poisson_nll_loss(
        input, target, log_input=log_input, full=full, eps=eps, reduction=reduction
    )


@loss(
    summary="Gaussian negative log-likelihood with a predicted variance.",
    tags=["regression"],
    inputs={
        "input": _pred(None, "predicted means"),
        "target": _target(None, dtypes=_PROMOTED),
        "var": TensorSpec(
            "var",
            FLOAT_DTYPES,
            differentiable=True,
            doc="predicted variances (positive), broadcastable to input",
        ),
    },
)
def gaussian_nll_loss(
    input: Tensor,
    target: Tensor,
    var: Tensor,
    *,
    full: bool = False,
    eps: Positive = 1e-6,
    reduction: Reduction = "mean",
) -> Tensor:
    return F.gaussian_nll_loss(input, target, var, full=full, eps=eps, reduction=reduction)


@loss(
    summary="Connectionist Temporal Classification loss for unsegmented sequences.",
    tags=["sequence"],
    inputs={
        "log_probs": TensorSpec("log_probs", FLOAT_DTYPES, doc="log-probabilities [T, N, C]"),
        "targets": TensorSpec(
            "targets",
            INT_DTYPES,
            differentiable=False,
            doc="target indices [N, S] or concatenated [sum(target_lengths)]",
        ),
        "input_lengths": TensorSpec(
            "input_lengths",
            INT_DTYPES,
            differentiable=False,
            cast="int64",
            doc="lengths of the inputs [N]",
        ),
        "target_lengths": TensorSpec(
            "target_lengths",
            INT_DTYPES,
            differentiable=False,
            cast="int64",
            doc="lengths of the targets [N]",
        ),
    },
)
def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    *,
    blank: Annotated[int, Field(ge=0)] = 0,
    reduction: Reduction = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    return F.ctc_loss(
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        blank=blank,
        reduction=reduction,
        zero_infinity=zero_infinity,
    )


__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cosine_embedding_loss",
    "cross_entropy",
    "ctc_loss",
    "gaussian_nll_loss",
    "hinge_embedding_loss",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "margin_ranking_loss",
    "mse_loss",
    "multi_margin_loss",
    "multilabel_margin_loss",
    "multilabel_soft_margin_loss",
    "nll_loss",
    "poisson_nll_loss",
    "smooth_l1_loss",
    "soft_margin_loss",
    "triplet_margin_loss",
]
