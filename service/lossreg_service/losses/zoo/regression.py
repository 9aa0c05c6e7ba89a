"""Log-cosh: a smooth regression loss, quadratic near zero and linear for large errors."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from ...registry import FLOAT_DTYPES, TensorSpec, loss
from ._common import Reduction, compute_dtype, reduce


@loss(
    tags=["regression"],
    inputs={
        "input": TensorSpec("input", FLOAT_DTYPES, differentiable=True, shape="*S"),
        "target": TensorSpec("target", FLOAT_DTYPES, differentiable=False, shape="*S"),
    },
    tensor_params={"weight": {"doc": "per-element weight, broadcast to the input"}},
)
def log_cosh(
    input: Tensor, target: Tensor, weight: Tensor | None = None, *, reduction: Reduction = "mean"
) -> Tensor:
    """Log-cosh loss log(cosh(input - target)): like MSE/2 near 0, like |error| - log 2 far out.

    loss = log(cosh(d)), d = input - target, computed as d + softplus(-2 d) - log 2, which does
    not overflow where cosh(d) would (|d| > ~89 in float32); its gradient is tanh(d), bounded
    by 1, so outliers cannot blow up a step. weight multiplies each element before the
    reduction ('mean' divides by the number of elements).

    Shapes: input and target of the same shape, any. reduction='none' returns that shape. The
    loss is float32 for float16/bfloat16 inputs, float64 for float64.

    Example::

        lossreg eval log_cosh --input pred.npy --target true.npy -p reduction=sum
    """
    dtype = compute_dtype(input)
    d = input.to(dtype) - target.to(dtype)
    out = d + F.softplus(-2 * d) - math.log(2.0)
    if weight is not None:
        out = out * weight.to(dtype)
    return reduce(out, reduction)


__all__ = ["log_cosh"]
