"""Overlap losses: Dice, Jaccard (soft IoU) and Tversky, one score per (sample, class).

All three compare soft predictions ``p`` with a (one-hot) target ``t`` through the soft counts
``TP = sum(p t)``, ``FP = sum(p (1 - t))`` and ``FN = sum((1 - p) t)``, summed over pixels (and
over the batch with ``batch=True``). Their formulas follow MONAI's ``DiceLoss`` and
``TverskyLoss``, against which the tests check values and gradients.
"""

from __future__ import annotations

from typing import Annotated, Any

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
    ModeParam,
    Reduction,
    Smooth,
    class_weight,
    document,
    drop_background,
    flatten,
    one_hot_target,
    probabilities,
    ratio_or_one,
    reduce,
    spatial_sums,
)

_DECLARATION: dict[str, Any] = {
    "tags": ["segmentation"],
    "inputs": {"input": INPUT, "target": MODE_TARGET},
    "tensor_params": {"weight": CLASS_WEIGHT},
}
_SQUARED = Annotated[
    bool, Field(description="use sum(p^2) and sum(t^2) in the denominator (V-Net)")
]
_FP_WEIGHT = Annotated[float, Field(ge=0, description="weight of false positives")]
_FN_WEIGHT = Annotated[float, Field(ge=0, description="weight of false negatives")]

_SHAPES = """\
Modes and shapes:
    binary      input [B, 1, ...] (sigmoid)  target mask [B, ...] or [B, 1, ...]
    multiclass  input [B, C, ...] (softmax)  target class indices [B, ...], C >= 2
    multilabel  input [B, C, ...] (sigmoid)  target masks [B, C, ...]
With from_logits=false the input already holds probabilities. Pixels whose target equals
ignore_index count nowhere. weight [C] multiplies each class's loss before the reduction.
reduction='none' returns [B, C] (one value per sample and class; [1, C] with batch=true).
A class empty in both prediction and target scores 0 loss, even with smooth=0. The loss is
float32 for float16/bfloat16 inputs (sums are taken in float32), float64 for float64."""


def _soft_counts(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mode: str,
    from_logits: bool,
    ignore_index: int | None,
    include_background: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Masked probabilities and one-hot target ``[B, C', N]``, and the class weight ``[C']``."""
    flat = flatten(input, target, mode, ignore_index)  # type: ignore[arg-type]
    p = probabilities(flat, from_logits) * flat.valid
    t = one_hot_target(flat)
    p, t = drop_background(flat, include_background, p, t)
    return p, t, class_weight(weight, flat, include_background, p.dtype)


def _finish(per_class: Tensor, weight: Tensor | None, reduction: Reduction) -> Tensor:
    return reduce(per_class if weight is None else per_class * weight, reduction)


@loss(**_DECLARATION)
@document(shapes=_SHAPES)
def dice(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    mode: ModeParam = "multiclass",
    from_logits: FromLogits = True,
    smooth: Smooth = 1e-5,
    ignore_index: IgnoreIndex = None,
    include_background: IncludeBackground = True,
    batch: Batch = False,
    squared_pred: _SQUARED = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Soft Dice loss: 1 - Dice coefficient per class, for segmentation.

    loss[b, c] = 1 - (2 TP + smooth) / (sum(p) + sum(t) + smooth)
    with TP = sum(p t) over the pixels of sample b (of the batch with batch=true), class c;
    squared_pred=true uses sum(p^2) + sum(t^2) in the denominator (Milletari et al., V-Net).

    {shapes}

    Example (3 classes, 2 images of 64x64)::

        lossreg eval dice --input logits.npy --target labels.npy -p mode=multiclass
        # logits.npy: float32 [2, 3, 64, 64]; labels.npy: int64 [2, 64, 64]
    """
    p, t, w = _soft_counts(
        input, target, weight, mode, from_logits, ignore_index, include_background
    )
    tp = spatial_sums(p * t, batch)
    if squared_pred:
        total = spatial_sums(p * p, batch) + spatial_sums(t * t, batch)
    else:
        total = spatial_sums(p, batch) + spatial_sums(t, batch)
    return _finish(1 - ratio_or_one(2 * tp + smooth, total + smooth), w, reduction)


@loss(**_DECLARATION)
@document(shapes=_SHAPES)
def jaccard(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    mode: ModeParam = "multiclass",
    from_logits: FromLogits = True,
    smooth: Smooth = 1e-5,
    ignore_index: IgnoreIndex = None,
    include_background: IncludeBackground = True,
    batch: Batch = False,
    squared_pred: _SQUARED = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Soft Jaccard (IoU) loss: 1 - soft intersection over union per class.

    loss[b, c] = 1 - (TP + smooth) / (sum(p) + sum(t) - TP + smooth)
    with TP = sum(p t) per sample b (per batch with batch=true) and class c; squared_pred=true
    uses sum(p^2) + sum(t^2) - TP as the union. Equal to MONAI's DiceLoss(jaccard=True) with
    smooth_nr = smooth_dr = 2 * smooth.

    {shapes}

    Example (binary masks)::

        lossreg eval jaccard --input logits.npy --target mask.npy -p mode=binary
        # logits.npy: float32 [4, 1, 128, 128]; mask.npy: uint8 or float32 [4, 128, 128]
    """
    p, t, w = _soft_counts(
        input, target, weight, mode, from_logits, ignore_index, include_background
    )
    tp = spatial_sums(p * t, batch)
    if squared_pred:
        total = spatial_sums(p * p, batch) + spatial_sums(t * t, batch)
    else:
        total = spatial_sums(p, batch) + spatial_sums(t, batch)
    return _finish(1 - ratio_or_one(tp + smooth, total - tp + smooth), w, reduction)


@loss(**_DECLARATION)
@document(shapes=_SHAPES)
def tversky(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    mode: ModeParam = "multiclass",
    from_logits: FromLogits = True,
    alpha: _FP_WEIGHT = 0.5,
    beta: _FN_WEIGHT = 0.5,
    smooth: Smooth = 1e-5,
    ignore_index: IgnoreIndex = None,
    include_background: IncludeBackground = True,
    batch: Batch = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Tversky loss: Dice with separate weights for false positives and false negatives.

    loss[b, c] = 1 - (TP + smooth) / (TP + alpha FP + beta FN + smooth)
    with TP = sum(p t), FP = sum(p (1 - t)), FN = sum((1 - p) t) per sample b (per batch with
    batch=true) and class c (Salehi et al. 2017). alpha = beta = 0.5 is Dice; beta > alpha
    penalises missed foreground more, which favours recall on small structures.

    {shapes}

    Example (favour recall)::

        lossreg eval tversky --input logits.npy --target labels.npy -p alpha=0.3 -p beta=0.7
    """
    p, t, w = _soft_counts(
        input, target, weight, mode, from_logits, ignore_index, include_background
    )
    tp = spatial_sums(p * t, batch)
    fp = spatial_sums(p * (1 - t), batch)
    fn = spatial_sums((1 - p) * t, batch)
    score = ratio_or_one(tp + smooth, tp + alpha * fp + beta * fn + smooth)
    return _finish(1 - score, w, reduction)


__all__ = ["dice", "jaccard", "tversky"]
