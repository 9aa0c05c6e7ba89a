"""Dice + cross-entropy: the overlap term for imbalance, the pixel term for stable gradients."""

from __future__ import annotations

from typing import Annotated, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ...registry import loss
from ._common import (
    CLASS_WEIGHT,
    INPUT,
    MODE_TARGET,
    Batch,
    FromLogits,
    IgnoreIndex,
    IncludeBackground,
    Mode,
    ModeParam,
    Smooth,
    class_weight,
    flatten,
    pixel_nll,
    safe_divide,
)
from .dice import dice

TermWeight = Annotated[float, Field(ge=0)]


def cross_entropy_term(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mode: Mode,
    from_logits: bool,
    ignore_index: int | None,
    reduction: Literal["mean", "sum"],
) -> Tensor:
    """Cross-entropy (multiclass) or binary cross-entropy (binary, multilabel), as torch has them.

    Multiclass weights each pixel by weight[y] and 'mean' divides by the sum of those weights
    (``F.cross_entropy``); binary/multilabel multiply each channel by weight[c] and 'mean'
    divides by the number of elements (``F.binary_cross_entropy_with_logits``). Ignored pixels
    count nowhere; with all of them ignored the mean is 0.
    """
    flat = flatten(input, target, mode, ignore_index)
    w = class_weight(weight, flat, True, flat.input.dtype)
    if flat.mode == "multiclass":
        valid = flat.valid.squeeze(1).to(flat.input.dtype)
        pixel_weight = valid if w is None else w[flat.target] * valid
        out = pixel_weight * pixel_nll(flat, from_logits)
        norm = pixel_weight.sum()
    else:
        x, t = flat.input, flat.target
        if from_logits:
            out = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        else:
            out = F.binary_cross_entropy(x, t, reduction="none")
        if w is not None:
            out = out * w.view(1, -1, 1)
        valid = flat.valid.expand_as(out).to(out.dtype)
        out = out * valid
        norm = valid.sum()
    return out.sum() if reduction == "sum" else safe_divide(out.sum(), norm)


@loss(
    tags=["segmentation"],
    inputs={"input": INPUT, "target": MODE_TARGET},
    tensor_params={"weight": CLASS_WEIGHT},
)
def dice_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    mode: ModeParam = "multiclass",
    from_logits: FromLogits = True,
    dice_weight: TermWeight = 1.0,
    ce_weight: TermWeight = 1.0,
    smooth: Smooth = 1e-5,
    ignore_index: IgnoreIndex = None,
    include_background: IncludeBackground = True,
    batch: Batch = False,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """Weighted sum of the Dice loss and cross-entropy, the nnU-Net default for segmentation.

    loss = dice_weight * dice(...) + ce_weight * CE(...)
    where dice is this zoo's `dice` with the same mode, smoothing, ignore_index,
    include_background, batch and weight, and CE is cross_entropy (multiclass, softmax) or
    binary_cross_entropy_with_logits (binary, multilabel) over all channels; from_logits=false
    takes probabilities in both terms. weight [C] weights the classes in both terms.

    Shapes (C >= 2 in multiclass):
        binary      input [B, 1, ...]  target mask [B, ...] or [B, 1, ...]
        multiclass  input [B, C, ...]  target class indices [B, ...]
        multilabel  input [B, C, ...]  target masks [B, C, ...]
    reduction is 'mean' (each term averaged) or 'sum' (each term summed). The loss is float32
    for float16/bfloat16 inputs, float64 for float64.

    Example::

        lossreg eval dice_cross_entropy --input logits.npy --target labels.npy \\
            -p dice_weight=1 -p ce_weight=0.5
    """
    overlap = dice(
        input,
        target,
        weight,
        mode=mode,
        from_logits=from_logits,
        smooth=smooth,
        ignore_index=ignore_index,
        include_background=include_background,
        batch=batch,
        reduction=reduction,
    )
    ce = cross_entropy_term(input, target, weight, mode, from_logits, ignore_index, reduction)
    return dice_weight * overlap + ce_weight * ce


__all__ = ["cross_entropy_term", "dice_cross_entropy"]
