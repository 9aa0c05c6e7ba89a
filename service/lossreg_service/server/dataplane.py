"""Between the wire and the engine: decoded numpy arrays <-> torch tensors, and back.

The only server module besides the executor that touches torch. The conversions themselves are
`lossreg.protocol.torch_bridge`'s, the client's too: arrays that are views of the request body
(a ``bytearray``) become tensors without a copy; read-only arrays are copied first. BF16
travels as ``uint16`` words and is viewed as ``torch.bfloat16``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lossreg.errors import ComputeError, InvalidTensor
from lossreg.protocol import TypedArray
from lossreg.protocol.torch_bridge import array_to_tensor, tensor_to_array

from ..engine import Evaluation, Term, dtype_name, evaluate_terms
from ..engine.batching import evaluate_batch
from ..engine.threads import threads_for
from ..registry import Loss
from .readiness import device_failure

__all__ = ["Computation", "compute", "compute_batch", "tensor_bytes", "to_numpy", "to_torch"]


def to_torch(array: np.ndarray, datatype: str) -> torch.Tensor:
    """A tensor sharing ``array``'s memory when it is writable (BF16 words viewed as bfloat16)."""
    tensor: torch.Tensor = array_to_tensor(array, datatype)
    return tensor


def to_numpy(tensor: torch.Tensor) -> TypedArray:
    """A CPU array and its KServe datatype (bfloat16 as ``uint16`` words)."""
    try:
        return tensor_to_array(tensor)
    except InvalidTensor:  # the loss's fault, not the request's
        raise ComputeError(
            f"the loss returned a {dtype_name(tensor.dtype)} tensor, which the protocol cannot "
            "carry"
        ) from None


@dataclasses.dataclass(frozen=True)
class Computation:
    """One evaluation to run on a worker: terms, decoded inputs, which gradients."""

    terms: Sequence[Term]
    inputs: Mapping[str, TypedArray]  # name -> (array, KServe datatype)
    grad: Sequence[str] | None = None
    grad_loss: TypedArray | None = None
    compute_dtype: torch.dtype | None = None
    nonfinite: str = "allow"  # "reject": NaN/Inf inputs or results are a 422


@dataclasses.dataclass(frozen=True)
class Result:
    """The evaluation, back as arrays: ``loss``, ``grads`` and per-term values."""

    loss: TypedArray
    grads: dict[str, TypedArray]
    terms: dict[str, float]
    nonfinite: tuple[str, ...] = ()  # outputs holding NaN/Inf ("loss", "grad_<input>")
    compute_ns: int = 0  # evaluating it (for a batch: the whole batch), for the statistics
    batch_size: int = 1  # the requests computed together with it, itself included


def compute(computation: Computation, device: torch.device) -> Result:
    """Run on a worker thread: to torch, evaluate on ``device``, back to numpy."""
    start = time.perf_counter_ns()
    tensors = {name: to_torch(a, dt) for name, (a, dt) in computation.inputs.items()}
    grad_loss = to_torch(*computation.grad_loss) if computation.grad_loss is not None else None
    with threads_for(_nbytes([computation])):
        evaluation: Evaluation = evaluate_terms(
            computation.terms,
            tensors,
            grad=computation.grad,
            grad_loss=grad_loss,
            device=device,
            compute_dtype=computation.compute_dtype,
            nonfinite=computation.nonfinite,
        )
    return Result(
        loss=to_numpy(evaluation.loss),
        grads={name: to_numpy(g) for name, g in evaluation.grads.items()},
        terms={key: float(v) for key, v in evaluation.terms.items()},
        nonfinite=evaluation.nonfinite,
        compute_ns=time.perf_counter_ns() - start,
    )


def compute_batch(
    loss: Loss,
    computations: Sequence[Computation],
    device: torch.device,
    *,
    vmap: bool = False,
) -> list[Result | Exception]:
    """Run a batch on a worker: computations that differ only in their tensors' values (same
    loss, parameters, gradients, shapes and dtypes) through `evaluate_batch`; each gets its
    own result or error."""
    first = computations[0]
    start = time.perf_counter_ns()
    items = [
        (
            {name: to_torch(a, dt) for name, (a, dt) in c.inputs.items()},
            to_torch(*c.grad_loss) if c.grad_loss is not None else None,
        )
        for c in computations
    ]
    with threads_for(_nbytes(computations)):
        evaluations = evaluate_batch(
            loss,
            items,
            first.terms[0].params,
            grad=first.grad,
            device=device,
            compute_dtype=first.compute_dtype,
            nonfinite=first.nonfinite,
            vmap=vmap,
        )
    results: list[Result | Exception] = []
    elapsed = time.perf_counter_ns() - start
    for evaluation in evaluations:
        if isinstance(evaluation, Exception):
            if device_failure(evaluation) is not None:
                raise evaluation  # the device's fault, not the item's: the whole batch fails
            results.append(evaluation)
            continue
        try:
            results.append(
                Result(
                    loss=to_numpy(evaluation.loss),
                    grads={name: to_numpy(g) for name, g in evaluation.grads.items()},
                    terms={},
                    nonfinite=evaluation.nonfinite,
                    compute_ns=elapsed,
                    batch_size=len(computations),
                )
            )
        except ComputeError as exc:
            results.append(exc)
    return results


def tensor_bytes(inputs: Mapping[str, TypedArray], grad_loss: TypedArray | None) -> int:
    """A request's tensor bytes: what decides its intra-op threads (`threads_for`), whether it
    computes inline and whether it may join a batch."""
    total = sum(a.nbytes for a, _ in inputs.values())
    return total + grad_loss[0].nbytes if grad_loss is not None else total


def _nbytes(computations: Sequence[Computation]) -> int:
    return sum(tensor_bytes(c.inputs, c.grad_loss) for c in computations)


def single(loss: Loss, params: Mapping[str, Any]) -> list[Term]:
    """The one-term list for a plain evaluation."""
    return [Term(loss, dict(params))]
