"""Four losses, one per style the loss literature writes them in.

Nothing here registers anything: the entry points in pyproject.toml do. The `@loss` decorator is
optional metadata (summary, tags, dtypes); without it lossreg reads the signature and docstring.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from lossreg_service.registry import INT_DTYPES, TensorSpec, loss


@loss(tags=["regression"])
def charbonnier(
    input: Tensor, target: Tensor, *, eps: Annotated[float, Field(gt=0)] = 1e-3
) -> Tensor:
    """Charbonnier loss: mean of sqrt((input - target)^2 + eps^2), a smooth L1."""
    return torch.sqrt((input - target) ** 2 + eps**2).mean()


class WeightedMSELoss(nn.Module):
    """Mean squared error scaled by a constant, with an optional per-element weight."""

    def __init__(
        self,
        weight: Tensor | None = None,
        scale: float = 1.0,
        reduction: Literal["none", "mean", "sum"] = "mean",
    ) -> None:
        super().__init__()
        self.weight, self.scale, self.reduction = weight, scale, reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        out = self.scale * (input - target) ** 2
        if self.weight is not None:
            out = out * self.weight
        return out if self.reduction == "none" else getattr(out, self.reduction)()


class StraightThroughRoundMSE(torch.autograd.Function):
    """MSE of round(input) with a straight-through gradient (the rounding is skipped in backward).

    Autograd alone would give zero gradients (round is flat almost everywhere); the custom
    backward is what makes quantisation-aware training work.
    """

    @staticmethod
    def forward(ctx, input: Tensor, target: Tensor) -> Tensor:
        ctx.save_for_backward(input, target)
        return ((torch.round(input) - target) ** 2).mean()

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        input, target = ctx.saved_tensors
        return grad_output * 2 * (torch.round(input) - target) / input.numel(), None


@loss(
    summary="fastai-style CrossEntropyLossFlat: class axis moved last, everything flattened.",
    tags=["classification", "segmentation"],
    inputs={"target": TensorSpec("target", INT_DTYPES, differentiable=False, cast="int64")},
)
class CrossEntropyLossFlat:
    """Flatten ``input`` to [-1, C] (C on ``axis``) and ``target`` to [-1], then cross-entropy."""

    def __init__(self, axis: int = 1, label_smoothing: float = 0.0) -> None:
        self.axis, self.label_smoothing = axis, label_smoothing

    def __call__(self, input: Tensor, target: Tensor) -> Tensor:
        input = input.movedim(self.axis, -1).contiguous()
        return F.cross_entropy(
            input.view(-1, input.shape[-1]),
            target.view(-1),
            label_smoothing=self.label_smoothing,
        )
