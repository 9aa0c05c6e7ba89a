"""Checks on tensor values inside a loss that also hold when the engine vmaps the loss.

A loss that validates its data (class indices in range, masks in [0, 1]) asks whether a mask
holds any True, and raises a `lossreg.errors` class naming the field. ``torch.func.vmap``
refuses that question (``bool()`` of a batched tensor is data-dependent control flow), so a
loss asking it could never batch. `any_true` answers it for a plain tensor as ``bool(t.any())``
does, and under vmap asks it of the whole batch at once (one host sync per check per batch, as
one request alone costs): when no request fails the check, the vmapped batch carries on; when
some request does, it raises `BatchCheckFailed`, and `engine.batching` runs that batch one by
one, so the request at fault gets its own error, worded as if it came alone, and the others
their answers.

Under vmap a loss sees each request's tensors wrapped by ``torch.func`` (a batched tensor, and
a gradient-tracking one for differentiated inputs); the whole batch is the innermost plain
tensor, reached through ``torch._C._functorch`` (no public accessor exists).
"""

from __future__ import annotations

import torch
from torch._C import _functorch

__all__ = ["BatchCheckFailed", "all_within", "any_true"]


class BatchCheckFailed(Exception):
    """Some request of a vmapped batch failed a check on its values; which one, and the error
    it gets, is found by evaluating the batch one by one."""


def any_true(mask: torch.Tensor) -> bool:
    """``bool(mask.any())``; under vmap False when no request's mask holds a True, else
    `BatchCheckFailed` (the caller's own error, raised one by one, then names the field)."""
    whole, batched = mask, False
    while _functorch.is_functorch_wrapped_tensor(whole):  # vmap's and grad's wrappers
        batched = batched or bool(_functorch.is_batchedtensor(whole))
        whole = _functorch.get_unwrapped(whole)
    found = bool(whole.any())
    if found and batched:
        raise BatchCheckFailed("a request in this vmapped batch failed a check on its values")
    return found


def all_within(values: torch.Tensor, low: int, high: int) -> bool:
    """Whether every value lies in ``[low, high)``, in one min/max read (~2 us against ~8 us
    for building and reading a mask). Under vmap it reads the whole batch, so True answers for
    every request; on False, ask exactly with a mask and `any_true` (a value outside may be an
    allowed one, such as an ``ignore_index``). Empty tensors are within any range."""
    whole = values
    while _functorch.is_functorch_wrapped_tensor(whole):
        whole = _functorch.get_unwrapped(whole)
    if whole.numel() == 0:
        return True
    lowest, highest = torch.aminmax(whole)
    return bool(lowest.item() >= low and highest.item() < high)
