"""Class-weighted cross-entropy for segmentation, with the class weights taken from the labels.

Segmentation labels are dominated by background; plain cross-entropy then learns the
background. The usual fix, re-derived in every training script, is to weight each class by the
inverse of its pixel frequency. This preset computes those weights from the request's own
targets, so that a client sends logits and labels and nothing else.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from ...registry import loss
from ._common import (
    CLASS_INDEX_TARGET,
    CLASS_WEIGHT,
    INPUT,
    IgnoreIndex,
    Reduction,
    class_weight,
    flatten,
    pixel_nll,
    reduce,
    safe_divide,
)

Balance = Annotated[
    Literal["inverse", "inverse_sqrt", "none"],
    Field(
        description="class weights from the target's pixel counts n_c: proportional to 1/n_c, "
        "to 1/sqrt(n_c), or all 1"
    ),
]


def balance_weights(labels: Tensor, valid: Tensor, channels: int, balance: str) -> Tensor:
    """``[C]`` weights from the pixel count n_c of each class among the valid pixels.

    Scaled so that the weights of all valid pixels sum to their number (then 'sum' and 'none'
    keep the scale of plain cross-entropy); a class absent from the labels weighs 0.
    """
    # bincount of labels[valid], without the boolean index, whose data-dependent shape vmap
    # refuses: ignored pixels (labelled 0 by `flatten`) add 0 to class 0.
    zeros = torch.zeros(channels, dtype=torch.int64, device=labels.device)
    counts = zeros.scatter_add(0, labels.reshape(-1), valid.reshape(-1).long()).to(torch.float64)
    if balance == "none":
        return torch.ones(channels, dtype=torch.float64, device=labels.device)
    present = counts > 0
    safe = torch.where(present, counts, torch.ones_like(counts))
    raw = torch.where(present, 1 / (safe if balance == "inverse" else safe.sqrt()), 0.0)
    return raw * safe_divide(counts.sum(), (counts * raw).sum())


@loss(
    tags=["segmentation", "classification"],
    inputs={"input": INPUT, "target": CLASS_INDEX_TARGET},
    tensor_params={"weight": CLASS_WEIGHT},
)
def weighted_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    balance: Balance = "inverse",
    ignore_index: IgnoreIndex = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Class-weighted cross-entropy for segmentation; weights from the labels' class frequencies.

    With n_c the number of (non-ignored) pixels of class c in the whole request, N their total
    and w_c the class weight:
        loss_i = -w_(y_i) log softmax(x_i)_(y_i),  mean = sum_i loss_i / sum_i w_(y_i)
    balance='inverse':      w_c = N / (C_present n_c); the mean is then the average over the
                            present classes of each class's mean cross-entropy;
    balance='inverse_sqrt': w_c proportional to 1/sqrt(n_c), scaled so sum_i w_(y_i) = N;
    balance='none':         w_c = 1 (plain cross-entropy).
    An explicit weight [C] multiplies the computed weights (with balance='none' this is
    torch's cross_entropy(weight=...)). Weights depend on the labels only: no gradient.

    Shapes: input logits [B, C, H, W] (any number of spatial dimensions, C >= 2); target class
    indices [B, H, W] (int64, or any integer dtype). reduction='none' returns the weighted
    per-pixel loss [B, H, W], 0 where ignored; with every pixel ignored the mean is 0. The loss
    is float32 for float16/bfloat16 inputs, float64 for float64.

    Example::

        lossreg eval weighted_cross_entropy --input logits.npy --target labels.npy \\
            -p ignore_index=255
    """
    flat = flatten(input, target, "multiclass", ignore_index)
    valid = flat.valid.squeeze(1)
    w = balance_weights(flat.target, valid, flat.channels, balance).to(flat.input.dtype)
    given = class_weight(weight, flat, True, flat.input.dtype)
    if given is not None:
        w = w * given
    pixel_weight = w[flat.target] * valid
    out = pixel_weight * pixel_nll(flat, from_logits=True)
    if reduction == "mean":
        return safe_divide(out.sum(), pixel_weight.sum())
    return reduce(out.reshape(out.shape[0], *flat.spatial), reduction)


__all__ = ["balance_weights", "weighted_cross_entropy"]
