"""What the client's calls return: typed results holding the caller's kind of arrays."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ComposeResult", "EvaluateResult"]


@dataclasses.dataclass(frozen=True)
class EvaluateResult:
    """The value of one loss and the gradients asked for.

    ``loss`` and ``grads`` are torch tensors when torch tensors were sent (on the device of the
    input they belong to; each gradient in its input's dtype), NumPy arrays otherwise.

    Args:
        name: the loss's registry name.
        loss: the value: 0-d for a reduced loss, shaped for ``reduction='none'``.
        grads: gradient by input name, for the inputs differentiated.
    """

    name: str
    loss: Any
    grads: dict[str, Any] = dataclasses.field(default_factory=dict)

    def item(self) -> float:
        """The loss as a Python float (a reduced loss only)."""
        return float(self.loss.item())


@dataclasses.dataclass(frozen=True)
class ComposeResult:
    """A weighted sum of losses: the total, each term, and the gradients of the total.

    Args:
        loss: the weighted total, 0-d, in the caller's kind of array.
        terms: each term's (unweighted) value, by label (None: not finite).
        weights: each term's weight, by label.
        grads: gradient of the total by input name.
    """

    loss: Any
    terms: dict[str, float | None]
    weights: dict[str, float]
    grads: dict[str, Any] = dataclasses.field(default_factory=dict)

    def item(self) -> float:
        """The total as a Python float."""
        return float(self.loss.item())
