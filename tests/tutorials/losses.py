"""The tutorials' losses, in the tutorials' own shapes (argument names, defaults, no annotations).

Kept as the tutorials write them, warts included: an unannotated ``weight=None``, the legacy
``size_average``, ``smooth=1`` as an int default, targets called ``targets``/``y``/``targ``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from lossreg_service import loss


def my_loss(output, target):
    loss = torch.mean((output - target) ** 2)
    return loss


class DiceLoss(nn.Module):
    def __init__(self, weight=None, size_average=True):
        super().__init__()

    def forward(self, inputs, targets, smooth=1):
        inputs = torch.sigmoid(inputs)
        inputs = inputs.view(-1)
        targets = targets.view(-1)
        intersection = (inputs * targets).sum()
        dice = (2.0 * intersection + smooth) / (inputs.sum() + targets.sum() + smooth)
        return 1 - dice


class WeightedCrossEntropy(nn.Module):
    def __init__(self, weight=None):
        super().__init__()
        self.weight = weight

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight)


class ClippedMSE(torch.autograd.Function):
    """MSE whose backward clips the error to [-1, 1]: not what autograd would give, so a test
    can tell the custom backward was used, for the input and for the target."""

    @staticmethod
    def forward(ctx, input, target):
        ctx.save_for_backward(input, target)
        return ((input - target) ** 2).mean()

    @staticmethod
    def backward(ctx, grad_output):
        input, target = ctx.saved_tensors
        grad_input = grad_output * 2 * (input - target).clamp(-1, 1) / input.numel()
        grad_target = -grad_input
        return grad_input, grad_target


class MSELoss(nn.Module):
    def forward(self, yhat, y):
        return torch.mean((yhat - y) ** 2)


@loss(loss_shape="N")
def per_sample_mse(input, target):
    """One loss per sample, no reduction parameter: a non-scalar loss."""
    return ((input - target) ** 2).mean(dim=1)


class FlatCrossEntropy:
    """fastai's shape without fastai: ``__call__(inp, targ)``, targets are integer labels."""

    def __init__(self, axis=-1):
        self.axis = axis

    def __call__(self, inp, targ):
        inp = inp.transpose(self.axis, -1).contiguous()
        return F.cross_entropy(inp.view(-1, inp.shape[-1]), targ.view(-1))


class _Base:
    def __init__(self, loss_cls, *args, **kwargs):
        self.func = loss_cls(*args, **kwargs)

    def __call__(self, inp, targ):
        return self.func(inp, targ)


class CustomLoss(_Base):
    """The tutorial's verbatim subclass: forwards ``*args`` but never names ``loss_cls``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
