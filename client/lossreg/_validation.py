"""Checks the client runs against a loss's cached spec before sending anything.

They are the server engine's own checks, in its order and with its messages (names, dtypes,
declared shape relations, unknown parameters, which gradients), run on shapes and dtype names
only, so a mistake fails at once, with the class and message the server would have answered
with, without a round trip. Anything costlier (parameter ranges, values) is left to the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .protocol import (
    GRAD_LOSS,
    RESERVED_PARAMETERS,
    LossSpecResponse,
    grad_output,
    output_names,
    unknown_input,
    unknown_output,
)
from .protocol.checks import (
    TensorInfo,
    check_grad,
    check_shapes,
    check_tensors,
    unknown_parameter,
)

__all__ = ["check_grad", "check_request", "check_shapes", "check_term"]


def check_request(
    spec: LossSpecResponse,
    tensors: Mapping[str, TensorInfo],
    params: Mapping[str, object],
    grad: Sequence[str] | None,
) -> None:
    """Raise what the server's inference route would for a one-loss request, or nothing.

    The route first refuses inputs and outputs the loss does not have, then the engine checks
    the tensors, the parameters and the gradients asked for.

    Args:
        spec: the loss's spec, as the catalog serves it.
        tensors: ``name -> (shape, torch dtype name)`` of every tensor to send, in order.
        params: the scalar parameters.
        grad: the inputs to differentiate (None: the server's default).
    """
    everything = list(spec.inputs) + list(spec.tensor_params)
    names = sorted(t.name for t in everything)
    takes_grad_loss = GRAD_LOSS not in names
    for name in tensors:
        if name not in names:
            raise unknown_input(spec.name, name, names, takes_grad_loss)
    outputs = output_names(t.name for t in everything if t.differentiable)
    for name in dict.fromkeys(grad or ()):
        if grad_output(name) not in outputs:
            raise unknown_output(spec.name, grad_output(name), outputs)
    check_term(spec, tensors, params)
    check_grad([spec], tensors, grad)


def check_term(
    spec: LossSpecResponse,
    tensors: Mapping[str, TensorInfo],
    params: Mapping[str, object],
) -> None:
    """One loss's checks: its inputs are all there, of accepted dtypes and related shapes."""
    check_tensors(spec, tensors)
    schema = spec.params_schema
    if schema.get("additionalProperties", True) is False:
        known = schema.get("properties", {})
        for name in params:
            if name not in known and name not in RESERVED_PARAMETERS:
                raise unknown_parameter(spec, name)
