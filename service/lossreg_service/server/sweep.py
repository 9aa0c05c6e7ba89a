"""A loss's value and gradient along one axis: what ``POST /v1/losses/{name}/sweep`` computes.

The request's inputs are checked exactly as ``/evaluate`` checks them (by evaluating the first
point with the same engine call), then every point runs as one batch through
`evaluate_batch` with ``vmap=True``: one ``torch.func.vmap`` of value-and-gradient over the
stacked points, or one by one in the same worker call for a loss vmap cannot run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lossreg.errors import InvalidInput, InvalidParameter, LossRegError, NonFiniteValue
from lossreg.protocol import TypedArray
from lossreg.protocol.sweep import MAX_SWEEP_ELEMENTS, SweepRequest

from ..engine import Evaluation, dtype_name, evaluate
from ..engine.batching import evaluate_batch
from ..registry import Loss
from .dataplane import to_torch

__all__ = ["run_sweep"]


def _axis_tensor(
    loss: Loss, req: SweepRequest, tensors: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, tuple[int, ...], bool]:
    """The swept input, the element's index, and whether the input is differentiable."""
    name = req.sweep.input
    specs = {t.name: t for t in loss.spec.inputs + loss.spec.tensor_params}
    if name not in specs or name not in tensors:
        sent = ", ".join(sorted(tensors)) or "none"
        raise InvalidInput(
            f"sweep.input {name!r} is not one of the tensors sent ({sent})", field="sweep.input"
        )
    tensor = tensors[name]
    if not tensor.is_floating_point():
        raise InvalidInput(
            f"sweep.input {name!r} is {dtype_name(tensor.dtype)}; only a floating-point input "
            "can be swept",
            field="sweep.input",
        )
    index = tuple(req.sweep.index)
    if len(index) != tensor.dim() or any(not 0 <= i < n for i, n in zip(index, tensor.shape)):
        raise InvalidInput(
            f"sweep.index {list(index)} is not an element of {name!r}, whose shape is "
            f"{list(tensor.shape)} (one index per dimension, each 0 <= i < size)",
            field="sweep.index",
        )
    return tensor, index, specs[name].differentiable


def _grid(req: SweepRequest, dtype: torch.dtype) -> list[float]:
    """The swept values, each finite in the input's dtype."""
    grid = req.sweep.grid()
    field = "sweep.values" if req.sweep.values is not None else "sweep.start"
    as_dtype = torch.tensor(grid, dtype=torch.float64).to(dtype)  # too big: Inf, refused
    if not bool(torch.isfinite(as_dtype).all()):
        raise InvalidInput(
            f"{field}: the swept values must be finite in {dtype_name(dtype)}", field=field
        )
    return [float(v) for v in as_dtype.tolist()]  # the values evaluated, rounded to dtype


def _json_numbers(values: torch.Tensor) -> np.ndarray:
    """Numbers written as ``/evaluate`` writes them: shortest in their own dtype (orjson), NaN
    and Inf as null; bfloat16 widened to float32, which holds it exactly."""
    if values.dtype == torch.bfloat16:
        values = values.float()
    return values.numpy()


def _at_point(exc: LossRegError, k: int, x: float) -> LossRegError:
    """The same error, saying at which point of the sweep it happened."""
    return type(exc)(f"at sweep point {k} (x={x:g}): {exc.message}", field=exc.field)


def _not_scalar(loss: Loss, what: str) -> InvalidParameter:
    return InvalidParameter(
        f"{loss.spec.name} returns {what} per point; a sweep needs a scalar loss "
        "(reduction 'mean' or 'sum')",
        field="reduction",
    )


def run_sweep(
    loss: Loss,
    req: SweepRequest,
    inputs: Mapping[str, TypedArray],
    *,
    device: torch.device,
    compute_dtype: torch.dtype | None,
    nonfinite: str,
) -> dict[str, Any]:
    """Evaluate the sweep on ``device`` (a worker thread); the response body as a dict.

    Raises:
        LossRegError: what ``/evaluate`` would raise for these inputs, or, naming the point, a
        loss that rejects or turns non-finite at one of the swept values (``nonfinite='reject'``).
    """
    base = {name: to_torch(a, dt) for name, (a, dt) in inputs.items()}
    tensor, index, differentiable = _axis_tensor(loss, req, base)
    grid = _grid(req, tensor.dtype)
    per_point = sum(t.numel() for t in base.values())
    if len(grid) * per_point > MAX_SWEEP_ELEMENTS:
        raise InvalidParameter(
            f"sweep.points: {len(grid)} points x {per_point} input elements is more than "
            f"{MAX_SWEEP_ELEMENTS}; send fewer points or smaller inputs",
            field="sweep.points",
        )
    grad = [req.sweep.input] if differentiable else []
    items = []
    for x in grid:
        moved = tensor.clone()
        moved[index] = x
        items.append(({**base, req.sweep.input: moved}, None))
    try:  # the first point alone: the validation and errors of /evaluate, word for word
        first = evaluate(loss, items[0][0], req.params, grad=grad, device=device,
                         compute_dtype=compute_dtype, nonfinite=nonfinite)  # fmt: skip
    except NonFiniteValue as exc:
        if exc.field in (None, "loss") or str(exc.field).startswith("grad_"):
            raise _at_point(exc, 0, grid[0]) from None
        raise
    except InvalidInput as exc:
        if exc.field == "grad_loss":  # non-scalar: a sweep has no upstream gradient to send
            raise _not_scalar(loss, "a non-scalar loss") from None
        raise
    if first.loss.dim() != 0:
        raise _not_scalar(loss, f"shape {list(first.loss.shape)}")
    results: list[Evaluation | Exception] = [first]
    if len(items) > 1:
        results += evaluate_batch(loss, items[1:], req.params, grad=grad, device=device,
                                  compute_dtype=compute_dtype, nonfinite=nonfinite,
                                  vmap=True)  # fmt: skip
    losses: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    for k, result in enumerate(results):
        if isinstance(result, LossRegError):
            raise _at_point(result, k, grid[k]) from None
        if isinstance(result, Exception):
            raise result
        losses.append(result.loss.detach().cpu())
        if differentiable:
            grads.append(result.grads[req.sweep.input][index].detach().cpu())
    value = _json_numbers(torch.stack(losses))
    grad_out = _json_numbers(torch.stack(grads)) if differentiable else None
    flagged = ["loss"] if not np.isfinite(value).all() else []
    if grad_out is not None and not np.isfinite(grad_out).all():
        flagged.append("grad")
    return {
        "name": loss.spec.name,
        "input": req.sweep.input,
        "index": list(index),
        "dtype": dtype_name(losses[0].dtype),
        "x": _json_numbers(torch.tensor(grid, dtype=tensor.dtype)),
        "loss": value,
        "grad": grad_out,
        "nonfinite": flagged,
    }
