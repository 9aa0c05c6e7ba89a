"""Lovasz losses (Berman et al. 2018): the convex Lovasz extension of the Jaccard loss.

Both sort each row of per-pixel errors in decreasing order and take their dot product with the
gradient of the Jaccard loss along that order (`_lovasz_weights`). Rows are (sample, class)
pairs, or (batch, class) with ``batch=True``; everything is vectorised over rows, and ignored
pixels are sorted last with a zero error, where they cannot change the prefix sums.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from ...registry import loss
from ._common import (
    CLASS_INDEX_TARGET,
    INPUT,
    MODE_TARGET,
    Batch,
    Flat,
    FromLogits,
    IgnoreIndex,
    IncludeBackground,
    Reduction,
    drop_background,
    flatten,
    one_hot_target,
    probabilities,
    reduce,
    safe_divide,
)

HingeMode = Annotated[
    Literal["binary", "multilabel"],
    Field(description="binary: logits [B,1,...] vs mask; multilabel: [B,C,...] vs masks"),
]
Classes = Annotated[
    Literal["present", "all"],
    Field(description="average over the classes present in the target row, or over all"),
]


def _lovasz_weights(sorted_target: Tensor) -> Tensor:
    """Gradient of the Jaccard loss along the sorted order, row-wise (``[R, N]`` -> ``[R, N]``).

    With g the targets sorted by decreasing error, J_k = 1 - (|g| - cumsum(g)_k) /
    (|g| + cumsum(1 - g)_k) is the Jaccard loss of predicting the first k pixels wrong; the
    weights are its increments. The union is never 0 (a first pixel with g = 0 adds 1, one
    with g = 1 makes |g| >= 1), so no division by zero.
    """
    total = sorted_target.sum(-1, keepdim=True)
    intersection = total - sorted_target.cumsum(-1)
    union = total + (1 - sorted_target).cumsum(-1)
    jaccard = 1 - intersection / union
    return jaccard.diff(dim=-1, prepend=torch.zeros_like(jaccard[..., :1]))


def _rows(x: Tensor, batch: bool) -> Tensor:
    """``[B, C, N]`` -> ``[B, C, N]`` rows per sample, or ``[1, C, B*N]`` over the batch."""
    if not batch:
        return x
    return x.transpose(0, 1).reshape(1, x.shape[1], -1)


def _extension(errors: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Lovasz extension per row: sorted errors (ignored pixels last, as 0) . Jaccard weights."""
    key = errors.masked_fill(~valid, float("-inf"))
    _, order = key.sort(dim=-1, descending=True, stable=True)
    sorted_errors = errors.gather(-1, order) * valid.gather(-1, order)
    return (sorted_errors * _lovasz_weights(target.gather(-1, order))).sum(-1)


@loss(tags=["segmentation"], inputs={"input": INPUT, "target": MODE_TARGET})
def lovasz_hinge(
    input: Tensor,
    target: Tensor,
    *,
    mode: HingeMode = "binary",
    ignore_index: IgnoreIndex = None,
    include_background: IncludeBackground = True,
    batch: Batch = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Lovasz hinge loss: a convex surrogate of the binary Jaccard (IoU) loss, on logits.

    Per row (sample and channel; the whole batch per channel with batch=true), with signs
    s = 2 t - 1 and hinge errors e = max(0, 1 - x s) sorted in decreasing order:
        loss = sum_k e_(k) (J_k - J_(k-1)),  J_k = Jaccard loss of the k largest errors
    With logits of +-1 it equals 2 (1 - IoU) of the predicted mask; it is 0 when every pixel
    is on its side with margin 1. Targets must be 0/1 masks; ties in the errors leave the value
    unchanged but make the gradient one of several valid subgradients.

    Shapes:
        binary      input logits [B, 1, ...]  target mask [B, ...] or [B, 1, ...]
        multilabel  input logits [B, C, ...]  target masks [B, C, ...]
    reduction='none' returns [B, C] ([1, C] with batch=true). A row whose pixels are all
    ignored scores 0. The loss is float32 for float16/bfloat16 inputs, float64 for float64.

    Example::

        lossreg eval lovasz_hinge --input logits.npy --target mask.npy -p batch=true
    """
    flat = flatten(input, target, mode, ignore_index, hard=True)
    t = flat.target
    valid = flat.valid.expand_as(t)
    hinge = (1 - flat.input * (2 * t - 1)).relu()
    hinge, t, valid = drop_background(flat, include_background, hinge, t, valid)
    return reduce(_extension(_rows(hinge, batch), _rows(t, batch), _rows(valid, batch)), reduction)


def _softmax_rows(
    flat: Flat, from_logits: bool, include_background: bool, batch: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class absolute errors, one-hot targets and validity, as rows."""
    p = probabilities(flat, from_logits)
    fg = one_hot_target(flat)
    valid = flat.valid.expand_as(fg)
    errors = (fg - p).abs()
    errors, fg, valid = drop_background(flat, include_background, errors, fg, valid)
    return _rows(errors, batch), _rows(fg, batch), _rows(valid, batch)


@loss(tags=["segmentation"], inputs={"input": INPUT, "target": CLASS_INDEX_TARGET})
def lovasz_softmax(
    input: Tensor,
    target: Tensor,
    *,
    from_logits: FromLogits = True,
    classes: Classes = "present",
    ignore_index: IgnoreIndex = None,
    include_background: IncludeBackground = True,
    batch: Batch = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Lovasz-softmax loss: a convex surrogate of the mean multiclass Jaccard (IoU) loss.

    Per sample (the whole batch with batch=true) and class c, with errors e = |1[y = c] - p_c|
    sorted in decreasing order:
        loss_c = sum_k e_(k) (J_k - J_(k-1)),  J_k = Jaccard loss of class c's k largest errors
    then the mean over the classes present in the target (classes='present'; a sample without
    any scores 0) or over all classes (classes='all'). At one-hot predictions it equals
    1 - IoU_c exactly. p = softmax(input) with from_logits=true, else the input itself.

    Shapes: input [B, C, ...] with C >= 2; target class indices [B, ...].
    reduction='none' returns [B] ([1] with batch=true). The loss is float32 for
    float16/bfloat16 inputs, float64 for float64.

    Example::

        lossreg eval lovasz_softmax --input logits.npy --target labels.npy -p ignore_index=255
    """
    flat = flatten(input, target, "multiclass", ignore_index)
    errors, fg, valid = _softmax_rows(flat, from_logits, include_background, batch)
    per_class = _extension(errors, fg, valid)
    if classes == "present":
        counted = (fg.sum(-1) > 0).to(per_class.dtype)
    else:
        counted = torch.ones_like(per_class)
    return reduce(safe_divide((per_class * counted).sum(1), counted.sum(1)), reduction)


__all__ = ["lovasz_hinge", "lovasz_softmax"]
