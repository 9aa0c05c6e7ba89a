"""Generalised Dice: one Dice over all classes, each weighted by the inverse of its volume."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from ...registry import loss
from ._common import (
    INPUT,
    MODE_TARGET,
    Batch,
    FromLogits,
    IgnoreIndex,
    IncludeBackground,
    ModeParam,
    Reduction,
    Smooth,
    drop_background,
    flatten,
    one_hot_target,
    probabilities,
    ratio_or_one,
    reduce,
    spatial_sums,
)

WeightType = Annotated[
    Literal["square", "simple", "uniform"],
    Field(description="class weight from the target volume V: 1/V^2, 1/V or 1"),
]


def _volume_weights(volume: Tensor, weight_type: str) -> Tensor:
    """``[B', C]`` class weights; a class absent from the target takes its row's largest weight.

    1/V is infinite for an absent class; MONAI (and NiftyNet before it) give such a class the
    largest finite weight of its row, and a row with no class present weighs nothing.
    """
    present = volume > 0
    if weight_type == "uniform":
        return torch.ones_like(volume)
    safe = torch.where(present, volume, torch.ones_like(volume))
    w = 1 / (safe * safe) if weight_type == "square" else 1 / safe
    w = torch.where(present, w, torch.zeros_like(w))
    return torch.where(present, w, w.amax(dim=1, keepdim=True))


@loss(tags=["segmentation"], inputs={"input": INPUT, "target": MODE_TARGET})
def generalized_dice(
    input: Tensor,
    target: Tensor,
    *,
    mode: ModeParam = "multiclass",
    from_logits: FromLogits = True,
    weight_type: WeightType = "square",
    smooth: Smooth = 1e-5,
    ignore_index: IgnoreIndex = None,
    include_background: IncludeBackground = True,
    batch: Batch = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Generalised Dice loss (Sudre et al. 2017): class-volume-weighted Dice for imbalance.

    loss[b] = 1 - (2 sum_c w_c TP_c + smooth) / (sum_c w_c (sum(p_c) + sum(t_c)) + smooth)
    with TP_c = sum(p_c t_c) and the target volume V_c = sum(t_c) over the pixels of sample b
    (of the whole batch with batch=true), and w_c = 1/V_c^2 (weight_type='square'), 1/V_c
    ('simple') or 1 ('uniform'). A class absent from the target gets the largest weight of the
    present ones; with no class present at all the loss is 0. Weights are computed in float32
    (or float64), so 1/V^2 of a 512x512 volume does not underflow.

    Modes and shapes:
        binary      input [B, 1, ...] (sigmoid)  target mask [B, ...] or [B, 1, ...]
        multiclass  input [B, C, ...] (softmax)  target class indices [B, ...], C >= 2
        multilabel  input [B, C, ...] (sigmoid)  target masks [B, C, ...]
    reduction='none' returns [B] (one value per sample; [1] with batch=true). The loss is
    float32 for float16/bfloat16 inputs, float64 for float64. Matches MONAI's
    GeneralizedDiceLoss with smooth_nr = smooth_dr = smooth.

    Example::

        lossreg eval generalized_dice --input logits.npy --target labels.npy \\
            -p weight_type=simple -p include_background=false
    """
    flat = flatten(input, target, mode, ignore_index)
    p = probabilities(flat, from_logits) * flat.valid
    t = one_hot_target(flat)
    p, t = drop_background(flat, include_background, p, t)
    tp = spatial_sums(p * t, batch)
    volume = spatial_sums(t, batch)
    w = _volume_weights(volume, weight_type)
    numerator = 2 * (w * tp).sum(1) + smooth
    denominator = (w * (spatial_sums(p, batch) + volume)).sum(1) + smooth
    return reduce(1 - ratio_or_one(numerator, denominator), reduction)


__all__ = ["generalized_dice"]
