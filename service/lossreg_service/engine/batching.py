"""Dynamic batching in the engine: several evaluations of one loss as one computation.

`evaluate_batch` takes the inputs of requests that agree on everything but their values (the
same loss, parameters and gradients asked for, the same shapes and dtypes; the server groups
them so) and returns each request's `Evaluation`, or the error it alone caused.

- ``vmap=True``: the inputs are stacked and ``torch.func.vmap`` runs the loss's value and
  vector-Jacobian product over the stack at once. On a GPU that is one set of kernel launches
  for the whole batch instead of one per request, and the results come back to the host in
  one copy per output (so a vmapped batch's results are CPU tensors). Gradients and values
  agree with unbatched evaluation, except that a reduction (a mean over a request's rows) may
  add in another order and differ in its last bits (a few ulp). A loss that vmap cannot run
  (data-dependent control flow, ``.item()``, an ``autograd.Function`` without a vmap rule)
  falls back to one by one, and its registry entry remembers it (``Loss.vmappable``), so later
  batches do not try again. A loss's own checks on values (class indices in range) run under
  vmap through `engine.checks`; a batch holding a request that fails one runs one by one, so
  that request alone gets its error. Each result says which way it was computed
  (`Evaluation.vmapped`).
- ``vmap=False``: the requests are evaluated one after the other in the same worker call,
  exactly as unbatched (bit for bit); batching then saves the per-request hand-offs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lossreg.errors import LossRegError, NonFiniteValue

from ..registry import Loss
from ._compute import (
    Evaluation,
    Term,
    check_finite_inputs,
    checked_terms,
    declared_casts,
    evaluate,
    nonfinite_outputs,
    tensor_info,
    to_compute,
)
from .cancel import ComputationCancelled, checkpoint
from .checks import BatchCheckFailed

__all__ = ["BatchItem", "evaluate_batch"]

log = logging.getLogger("lossreg.engine")

BatchItem = tuple[Mapping[str, torch.Tensor], torch.Tensor | None]
"""One request of a batch: its tensors by input name, and its upstream gradient (or None)."""


def evaluate_batch(
    loss: Loss,
    items: Sequence[BatchItem],
    params: Mapping[str, Any] | None = None,
    *,
    grad: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    compute_dtype: torch.dtype | None = None,
    nonfinite: str = "allow",
    vmap: bool = False,
) -> list[Evaluation | Exception]:
    """Evaluate ``loss`` on each item; item ``i``'s result (or error) is entry ``i``.

    Args:
        loss: the registered loss.
        items: each request's tensors (same names, shapes and dtypes across items) and upstream
            gradient.
        params: the scalar parameters all items share.
        grad: the inputs to differentiate (None: every differentiable input sent).
        device: where to compute.
        compute_dtype: float16/bfloat16 inputs are computed in this dtype.
        nonfinite: ``reject`` or ``allow`` NaN/Inf, per item as `evaluate` does.
        vmap: run the batch as one ``torch.func.vmap`` computation when the loss allows it.
    """
    params = dict(params or {})
    if not (vmap and len(items) > 1 and loss.vmappable is not False):
        return _one_by_one(loss, items, params, grad, device, compute_dtype, nonfinite)
    try:
        results = _vmapped(loss, items, params, grad, torch.device(device), compute_dtype,
                           nonfinite)  # fmt: skip
    except BatchCheckFailed:  # a request's values are wrong: one by one tells whose, and how
        return _one_by_one(loss, items, params, grad, device, compute_dtype, nonfinite)
    except Exception as exc:  # noqa: BLE001 - one by one decides whose fault it was
        results = _one_by_one(loss, items, params, grad, device, compute_dtype, nonfinite)
        if not any(isinstance(r, Exception) for r in results):
            loss.vmappable = False
            log.info("%s cannot be vmapped (%s: %s); batches run one by one",
                     loss.name, type(exc).__name__, exc)  # fmt: skip
        return results
    loss.vmappable = True
    return results


def _one_by_one(
    loss: Loss,
    items: Sequence[BatchItem],
    params: Mapping[str, Any],
    grad: Sequence[str] | None,
    device: torch.device | str,
    compute_dtype: torch.dtype | None,
    nonfinite: str,
) -> list[Evaluation | Exception]:
    results: list[Evaluation | Exception] = []
    for inputs, grad_loss in items:
        checkpoint()  # a timed-out batch stops between its items (engine.cancel)
        try:
            results.append(
                evaluate(
                    loss,
                    inputs,
                    params,
                    grad=grad,
                    grad_loss=grad_loss,
                    device=device,
                    compute_dtype=compute_dtype,
                    nonfinite=nonfinite,
                )  # fmt: skip
            )
        except ComputationCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - this request's error, returned to it alone
            results.append(exc)
    return results


def _vmapped(
    loss: Loss,
    items: Sequence[BatchItem],
    params: Mapping[str, Any],
    grad: Sequence[str] | None,
    device: torch.device,
    compute_dtype: torch.dtype | None,
    nonfinite: str,
) -> list[Evaluation | Exception]:
    """The whole batch through one vmap of value-and-VJP; per-item checks stay per item."""
    first, first_upstream = items[0]
    info = tensor_info(first)
    # the same shapes and parameters for every item
    (checked,), names = checked_terms([Term(loss, params)], info, grad)
    results: list[Evaluation | Exception | None] = [None] * len(items)
    live: list[int] = []
    for i, (inputs, upstream) in enumerate(items):
        checkpoint()
        if nonfinite == "reject":
            try:
                check_finite_inputs(
                    {**inputs, **({"grad_loss": upstream} if upstream is not None else {})}
                )
            except LossRegError as exc:
                results[i] = exc
                continue
        live.append(i)
    if not live:
        return [r for r in results if r is not None]
    stacked = _stack(loss, [items[i][0] for i in live], device, compute_dtype)
    others = [n for n in stacked if n not in names]
    upstreams = [items[i][1] for i in live]
    has_upstream = first_upstream is not None

    def one(
        diff: tuple[torch.Tensor, ...], rest: tuple[torch.Tensor, ...], *up: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        fixed = dict(zip(others, rest))

        def value(*x: torch.Tensor) -> torch.Tensor:
            return loss({**fixed, **dict(zip(names, x))}, checked)

        if not names:
            return value(), ()
        out, vjp = torch.func.vjp(value, *diff)[:2]  # a third item only with has_aux
        if not up and out.dim() != 0:  # one by one refuses it with the reason, per request
            raise ValueError("a non-scalar loss needs grad_loss")
        cotangent = up[0].to(out.dtype) if up else torch.ones_like(out)
        return out, vjp(cotangent)

    args: list[Any] = [tuple(stacked[n] for n in names), tuple(stacked[n] for n in others)]
    if has_upstream:
        args.append(torch.stack([u for u in upstreams if u is not None]).to(device))
    with torch.enable_grad():
        outs, grads = torch.func.vmap(one)(*args)
    if device.type != "cpu":  # one copy per output for the whole batch, not one per request
        outs, grads = outs.detach().cpu(), tuple(g.detach().cpu() for g in grads)
    for k, i in enumerate(live):
        inputs = items[i][0]
        item_grads = {n: grads[j][k].to(inputs[n].dtype) for j, n in enumerate(names)}
        flagged = nonfinite_outputs(outs[k], item_grads)
        if flagged and nonfinite == "reject":
            results[i] = NonFiniteValue(
                f"the loss produced non-finite values (NaN or Inf) in {', '.join(flagged)}; "
                "send nonfinite='allow' to receive them flagged",
                field=flagged[0],
            )
            continue
        results[i] = Evaluation(
            loss=outs[k].detach(), grads=item_grads, nonfinite=flagged, vmapped=True
        )
    done = [r for r in results if r is not None]
    assert len(done) == len(items)
    return done


def _stack(
    loss: Loss,
    inputs: Sequence[Mapping[str, torch.Tensor]],
    device: torch.device,
    compute_dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    """Each input stacked over the batch, on the device, with declared casts applied."""
    casts = declared_casts([loss])
    return {
        name: to_compute(
            torch.stack([item[name] for item in inputs]), device, casts.get(name), compute_dtype
        )  # fmt: skip
        for name in inputs[0]
    }
