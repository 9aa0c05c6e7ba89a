"""Focal loss: cross-entropy that down-weights the pixels a model already gets right."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ...registry import loss
from ._common import (
    CLASS_WEIGHT,
    INPUT,
    MODE_TARGET,
    Flat,
    FromLogits,
    IgnoreIndex,
    IncludeBackground,
    ModeParam,
    Reduction,
    class_weight,
    drop_background,
    flatten,
    log_clamped,
    reduce,
    safe_divide,
)

Gamma = Annotated[float, Field(ge=0, description="focusing exponent; 0 gives cross-entropy")]
Alpha = Annotated[
    Annotated[float, Field(ge=0, le=1)] | None,
    Field(
        description="balance: alpha for positives and 1 - alpha for negatives (sigmoid modes); "
        "1 - alpha for class 0 and alpha for the others (multiclass); null: no balance"
    ),
]


def _sigmoid_focal(flat: Flat, from_logits: bool, gamma: float, alpha: float | None) -> Tensor:
    """Per-element focal loss ``[B, C, N]``: BCE(p, t) (1 - p_t)^gamma alpha_t.

    ``1 - p_t = t (1 - p) + (1 - t) p`` also for soft targets; from logits it is computed in
    log space (``logaddexp`` of log-sigmoids), which stays exact where sigmoid saturates.
    """
    x, t = flat.input, flat.target
    if from_logits:
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        log_miss = torch.logaddexp(t.log() + F.logsigmoid(-x), torch.log1p(-t) + F.logsigmoid(x))
    else:
        bce = F.binary_cross_entropy(x, t, reduction="none")
        log_miss = log_clamped(t * (1 - x) + (1 - t) * x)
    out = bce if gamma == 0 else bce * torch.exp(gamma * log_miss)
    if alpha is not None:
        out = out * (alpha * t + (1 - alpha) * (1 - t))
    return out


def _softmax_focal(flat: Flat, from_logits: bool, gamma: float, alpha: float | None) -> Tensor:
    """Per-pixel focal loss ``[B, N]`` at the target class y: -(1 - p_y)^gamma log p_y alpha_y."""
    labels = flat.target.unsqueeze(1)
    if from_logits:
        log_p = flat.input.log_softmax(1).gather(1, labels).squeeze(1)
        log_miss = log_clamped(-torch.expm1(log_p))  # log(1 - p_y), exact for p_y near 1
    else:
        p = flat.input.gather(1, labels).squeeze(1)
        log_p, log_miss = log_clamped(p), log_clamped(1 - p)
    out = -log_p if gamma == 0 else -torch.exp(gamma * log_miss) * log_p
    if alpha is not None:
        out = out * torch.where(flat.target == 0, 1 - alpha, alpha)
    return out


@loss(
    tags=["segmentation", "classification"],
    inputs={"input": INPUT, "target": MODE_TARGET},
    tensor_params={"weight": CLASS_WEIGHT},
)
def focal(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    mode: ModeParam = "multiclass",
    from_logits: FromLogits = True,
    gamma: Gamma = 2.0,
    alpha: Alpha = None,
    ignore_index: IgnoreIndex = None,
    include_background: IncludeBackground = True,
    reduction: Reduction = "mean",
) -> Tensor:
    """Focal loss (Lin et al. 2017): (1 - p_t)^gamma-weighted cross-entropy, for imbalance.

    binary / multilabel (sigmoid), per element:
        loss = alpha_t (1 - p_t)^gamma BCE(p, t),  1 - p_t = t (1 - p) + (1 - t) p,
        alpha_t = alpha t + (1 - alpha)(1 - t)
    multiclass (softmax), per pixel with target class y:
        loss = -alpha_y (1 - p_y)^gamma log p_y,  alpha_y = 1 - alpha if y = 0 else alpha
    weight [C] multiplies the loss of each class (of the target class y in multiclass).
    gamma = 0 without alpha is binary_cross_entropy_with_logits / cross_entropy.

    Shapes (C >= 2 in multiclass):
        binary      input [B, 1, ...]  target mask [B, ...] or [B, 1, ...]
        multiclass  input [B, C, ...]  target class indices [B, ...]
        multilabel  input [B, C, ...]  target masks [B, C, ...]
    include_background=false drops channel 0 (multilabel) or leaves the pixels of class 0 out
    (multiclass: the softmax still runs over all C classes, where MONAI's FocalLoss drops the
    background logit first). reduction='none' returns the per-element loss [B, C, ...] (binary,
    multilabel) or the per-pixel loss [B, ...] (multiclass); ignored pixels are 0. 'mean'
    averages over the pixels (elements) not ignored, class-0 pixels included. The loss is
    float32 for float16/bfloat16 inputs, float64 for float64.

    Example::

        lossreg eval focal --input logits.npy --target mask.npy -p mode=binary -p alpha=0.25
    """
    flat = flatten(input, target, mode, ignore_index)
    w = class_weight(weight, flat, True, flat.input.dtype)
    if flat.mode == "multiclass":
        out = _softmax_focal(flat, from_logits, gamma, alpha)
        if w is not None:
            out = out * w[flat.target]
        if not include_background:
            out = out * (flat.target != 0)
        valid = flat.valid.squeeze(1)
        out = out * valid
        shape = (out.shape[0], *flat.spatial)
    else:
        out = _sigmoid_focal(flat, from_logits, gamma, alpha)
        if w is not None:
            out = out * w.view(1, -1, 1)
        out, valid = drop_background(flat, include_background, out * flat.valid, flat.valid)
        shape = (out.shape[0], out.shape[1], *flat.spatial)
    if reduction == "mean":
        return safe_divide(out.sum(), valid.expand_as(out).sum().to(out.dtype))
    return reduce(out.reshape(shape), reduction)


__all__ = ["focal"]
