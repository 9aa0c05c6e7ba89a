"""Checks the client runs against a loss's cached spec before sending anything.

They are the server engine's own checks, in its order and with its messages (names, dtypes,
declared shape relations, unknown parameters, which gradients), run on shapes and dtype names
only, so a mistake fails at once, with the class and message the server would have answered
with, without a round trip. Anything costlier (parameter ranges, values) is left to the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidInput, InvalidParameter, ShapeMismatch
from .protocol import LossSpecResponse, TensorSpecResponse

__all__ = ["check_grad", "check_request", "check_shapes", "check_term"]


def check_request(
    spec: LossSpecResponse,
    tensors: Mapping[str, tuple[tuple[int, ...], str]],
    params: Mapping[str, Any],
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
    takes_grad_loss = "grad_loss" not in names
    for name in tensors:
        if name not in names:
            raise InvalidInput(
                f"{spec.name}: unknown input {name!r}; it takes "
                + ", ".join(names + (["grad_loss"] if takes_grad_loss else [])),
                field=name,
            )
    outputs = ["loss"] + [f"grad_{t.name}" for t in everything if t.differentiable]
    for name in dict.fromkeys(grad or ()):
        if f"grad_{name}" not in outputs:
            raise InvalidInput(
                f"{spec.name}: unknown output {'grad_' + name!r}; it has outputs "
                + ", ".join(outputs),
                field=f"grad_{name}",
            )
    check_term(spec, tensors, params)
    check_grad([spec], tensors, grad)


def check_term(
    spec: LossSpecResponse,
    tensors: Mapping[str, tuple[tuple[int, ...], str]],
    params: Mapping[str, Any],
) -> None:
    """One loss's checks: its inputs are all there, of accepted dtypes and related shapes."""
    all_specs = list(spec.inputs) + list(spec.tensor_params)
    for ts in spec.inputs:
        if ts.name not in tensors:
            raise InvalidInput(
                f"{spec.name}: missing input {ts.name!r}; it takes "
                + ", ".join(t.name for t in spec.inputs),
                field=ts.name,
            )
    for ts in all_specs:
        if ts.name not in tensors:
            continue
        dtype = tensors[ts.name][1]
        if dtype not in ts.dtypes:
            raise InvalidInput(
                f"{spec.name}: input {ts.name!r} has dtype {dtype}; "
                f"accepted: {', '.join(ts.dtypes)}",
                field=ts.name,
            )
    check_shapes(spec.name, all_specs, {name: shape for name, (shape, _) in tensors.items()})
    schema = spec.params_schema
    if schema.get("additionalProperties", True) is False:
        known = schema.get("properties", {})
        for name in params:
            if name not in known:
                raise InvalidParameter(f"{spec.name}: unknown parameter {name!r}", field=name)


def check_grad(
    specs: Sequence[LossSpecResponse],
    tensors: Mapping[str, tuple[tuple[int, ...], str]],
    grad: Sequence[str] | None,
) -> None:
    """Every tensor sent is some loss's input; every gradient asked for can be computed."""
    differentiable: dict[str, bool] = {}
    for spec in specs:
        for ts in list(spec.inputs) + list(spec.tensor_params):
            differentiable[ts.name] = differentiable.get(ts.name, False) or ts.differentiable
    unused = sorted(set(tensors) - set(differentiable))
    if unused:
        raise InvalidInput(
            f"unknown input {unused[0]!r}; the loss takes " + ", ".join(sorted(differentiable)),
            field=unused[0],
        )
    for name in dict.fromkeys(grad or ()):
        if name not in differentiable:
            raise InvalidInput(
                f"cannot differentiate with respect to {name!r}: the loss has no such input",
                field=name,
            )
        if not differentiable[name]:
            raise InvalidInput(f"input {name!r} is not differentiable", field=name)
        if name not in tensors:
            raise InvalidInput(f"gradient asked for {name!r}, which was not sent", field=name)
        dtype = tensors[name][1]
        if not (dtype.startswith("float") or dtype == "bfloat16"):
            raise InvalidInput(
                f"input {name!r} has dtype {dtype}; only floating-point inputs have gradients",
                field=name,
            )


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_shapes(
    loss_name: str,
    specs: Sequence[TensorSpecResponse],
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """Raise `ShapeMismatch` naming the first tensor that breaks the declared shape relations.

    A spec's ``shape`` such as ``"N C *S"`` binds each symbol to a size across all tensors; an
    integer is exact; ``*`` (or ``*name``) stands for any number of dimensions.
    """
    bound: dict[str, tuple[int, ...]] = {}  # symbol -> its size(s)
    binder: dict[str, str] = {}  # symbol -> the tensor that first bound it
    for ts in specs:
        if ts.shape is None or ts.name not in shapes:
            continue
        shape = tuple(shapes[ts.name])
        tokens = ts.shape.split()
        pairs = _pair_dims(loss_name, ts, tokens, shape)
        for token, size in pairs:
            sizes = size if isinstance(size, tuple) else (size,)
            symbol = token.lstrip("*")
            if token.lstrip("-").isdigit():
                if sizes != (int(token),):
                    raise ShapeMismatch(
                        f"{loss_name}: {ts.name!r} has shape {_fmt(shape)}; a dimension must be "
                        f"{token} ({ts.shape})",
                        field=ts.name,
                    )
                continue
            if not symbol:  # a bare '*': anything goes
                continue
            if symbol not in bound:
                bound[symbol], binder[symbol] = sizes, ts.name
            elif bound[symbol] != sizes:
                other = binder[symbol]
                raise ShapeMismatch(
                    f"{loss_name}: {ts.name!r} has shape {_fmt(shape)}, which does not match "
                    f"{other!r} ({_fmt(shapes[other])}): dimension {token} is "
                    f"{_fmt(sizes)} in {ts.name!r} but {_fmt(bound[symbol])} in {other!r}",
                    field=ts.name,
                )


def _pair_dims(
    loss_name: str, ts: TensorSpecResponse, tokens: list[str], shape: tuple[int, ...]
) -> list[tuple[str, int | tuple[int, ...]]]:
    """Match a spec's symbols to a shape's dimensions (a ``*`` symbol takes a run of them)."""
    stars = [i for i, tok in enumerate(tokens) if tok.startswith("*")]
    if not stars:
        if len(shape) != len(tokens):
            raise ShapeMismatch(
                f"{loss_name}: {ts.name!r} has shape {_fmt(shape)}, expected "
                f"{len(tokens)} dimensions ({ts.shape})",
                field=ts.name,
            )
        return list(zip(tokens, shape))
    i = stars[0]
    before, after = tokens[:i], tokens[i + 1 :]
    if len(shape) < len(before) + len(after):
        raise ShapeMismatch(
            f"{loss_name}: {ts.name!r} has shape {_fmt(shape)}, expected at least "
            f"{len(before) + len(after)} dimensions ({ts.shape})",
            field=ts.name,
        )
    pairs: list[tuple[str, int | tuple[int, ...]]] = list(zip(before, shape[: len(before)]))
    pairs.append((tokens[i], shape[len(before) : len(shape) - len(after)]))
    pairs += list(zip(after, shape[len(shape) - len(after) :]))
    return pairs
