"""The names a loss has as a model, on both sides of the wire: its outputs are ``loss`` and
``grad_<input>``, the upstream gradient is the input ``grad_loss``, and the errors for a name a
loss does not have read the same whether the client or the server finds them."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from ..errors import InvalidInput

__all__ = [
    "GRAD_LOSS",
    "GRAD_PREFIX",
    "LOSS",
    "did_you_mean",
    "grad_output",
    "input_of",
    "output_names",
    "unknown_input",
    "unknown_output",
]

LOSS = "loss"
GRAD_PREFIX = "grad_"
GRAD_LOSS = "grad_loss"


def grad_output(input_name: str) -> str:
    """The output carrying ``input_name``'s gradient."""
    return GRAD_PREFIX + input_name


def input_of(output: str) -> str:
    """The input whose gradient ``output`` (``grad_<input>``) carries."""
    return output.removeprefix(GRAD_PREFIX)


def output_names(differentiable: Iterable[str]) -> list[str]:
    """A loss's outputs: ``loss``, then a gradient per differentiable input, in order."""
    return [LOSS, *(grad_output(n) for n in differentiable)]


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_input(
    loss: str, name: str, accepted: Sequence[str], takes_grad_loss: bool = False
) -> InvalidInput:
    """The error for an input ``loss`` does not take (``accepted``: its inputs, sorted)."""
    known = list(accepted) + ([GRAD_LOSS] if takes_grad_loss else [])
    return InvalidInput(
        f"{loss}: unknown input {name!r}; it takes {', '.join(known)}" + did_you_mean(name, known),
        field=name,
    )


def unknown_output(loss: str, name: str, outputs: Sequence[str]) -> InvalidInput:
    """The error for an output ``loss`` does not have."""
    return InvalidInput(
        f"{loss}: unknown output {name!r}; it has outputs " + ", ".join(outputs), field=name
    )
