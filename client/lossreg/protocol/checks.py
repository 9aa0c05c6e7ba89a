"""The checks a request gets against a loss's spec, shared by the engine and the client.

They run on shapes and dtype names only (no torch), so the server's engine and the client's
check-before-sending are the same code: a client-side mistake fails with exactly the class,
message and field the server would answer with. Specs are duck-typed: the engine passes its
`LossSpec`, the client the catalog's `LossSpecResponse`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..errors import InvalidInput, InvalidParameter, ShapeMismatch
from .names import did_you_mean, unknown_input

__all__ = [
    "TensorInfo",
    "check_grad",
    "check_shapes",
    "check_tensors",
    "unknown_parameter",
]

TensorInfo = tuple[tuple[int, ...], str]
"""What the checks need of a tensor: its shape and its torch dtype name (``"float32"``)."""


class TensorSpecLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def dtypes(self) -> Sequence[str]: ...
    @property
    def differentiable(self) -> bool: ...
    @property
    def shape(self) -> str | None: ...


class LossSpecLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def inputs(self) -> Sequence[TensorSpecLike]: ...
    @property
    def tensor_params(self) -> Sequence[TensorSpecLike]: ...


def _all(spec: LossSpecLike) -> list[TensorSpecLike]:
    return [*spec.inputs, *spec.tensor_params]


def unknown_parameter(spec: Any, name: str) -> InvalidParameter:
    """The error for a scalar parameter a loss does not have: a close match, the valid names,
    and, for a tensor parameter sent among the scalars, where it belongs."""
    tensors = [t.name for t in _all(spec)]
    if name in tensors:
        return InvalidParameter(
            f"{spec.name}: {name!r} is a tensor input, not a scalar parameter: send it with the "
            "inputs (a keyword tensor of Client.evaluate or RemoteLoss, an input of the "
            "request)",
            field=name,
        )
    known = sorted(spec.params_schema.get("properties", {}))
    takes = f"it takes {', '.join(known)}" if known else "it takes no scalar parameters"
    return InvalidParameter(
        f"{spec.name}: unknown parameter {name!r}; {takes}{did_you_mean(name, known)}",
        field=name,
    )


def check_tensors(spec: LossSpecLike, tensors: Mapping[str, TensorInfo]) -> None:
    """Every required input is there, each tensor has an accepted dtype and declared shapes agree.

    Raises:
        InvalidInput: a missing input or a refused dtype (naming it).
        ShapeMismatch: a tensor breaking the spec's shape relations.
    """
    for ts in spec.inputs:
        if ts.name not in tensors:
            raise InvalidInput(
                f"{spec.name}: missing input {ts.name!r}; it takes "
                + ", ".join(t.name for t in spec.inputs),
                field=ts.name,
            )
    for ts in _all(spec):
        if ts.name in tensors and tensors[ts.name][1] not in ts.dtypes:
            dtype = tensors[ts.name][1]
            hint = ""
            if _is_float(dtype) and not any(_is_float(d) for d in ts.dtypes):
                hint = (
                    f"; {ts.name!r} holds class indices: send an integer tensor (int64, e.g. "
                    "target.long()), not floats"
                )
            raise InvalidInput(
                f"{spec.name}: input {ts.name!r} has dtype {dtype}; "
                f"accepted: {', '.join(ts.dtypes)}{hint}",
                field=ts.name,
            )
    check_shapes(spec.name, _all(spec), {n: shape for n, (shape, _) in tensors.items()})


def check_grad(
    specs: Sequence[LossSpecLike],
    tensors: Mapping[str, TensorInfo],
    grad: Sequence[str] | None,
) -> list[str]:
    """The inputs to differentiate: ``grad`` checked, or (None) those sent that are differentiated
    by default (``grad_by_default``: predictions, not targets).

    Raises:
        InvalidInput: a tensor no loss takes, or a gradient that cannot be computed.
    """
    differentiable: dict[str, bool] = {}
    by_default: dict[str, bool] = {}
    for spec in specs:
        for ts in _all(spec):
            differentiable[ts.name] = differentiable.get(ts.name, False) or ts.differentiable
            default = ts.differentiable and getattr(ts, "grad_by_default", True)
            by_default[ts.name] = by_default.get(ts.name, False) or default
    unused = sorted(set(tensors) - set(differentiable))
    if unused:
        owner = specs[0].name if len(specs) == 1 else "the losses"
        raise unknown_input(owner, unused[0], sorted(differentiable))
    if grad is None:
        return [n for n, d in by_default.items() if d and n in tensors]
    names = list(dict.fromkeys(grad))
    for name in names:
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
        if not _is_float(dtype):
            raise InvalidInput(
                f"input {name!r} has dtype {dtype}; only floating-point inputs have gradients",
                field=name,
            )
    return names


def _is_float(dtype: str) -> bool:
    return dtype.startswith("float") or dtype == "bfloat16"


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_shapes(
    loss_name: str,
    specs: Sequence[TensorSpecLike],
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """Raise `ShapeMismatch` naming the first tensor that breaks the declared shape relations.

    A spec's ``shape`` such as ``"N C *S"`` binds each symbol to a size across all tensors; an
    integer is exact; ``*`` (or ``*name``) stands for any number of dimensions. Checking this up
    front names the tensor and the dimension, where torch would fail deep inside the loss or,
    worse, silently broadcast.
    """
    bound: dict[str, tuple[int, ...]] = {}  # symbol -> its size(s)
    binder: dict[str, str] = {}  # symbol -> the tensor that first bound it
    for ts in specs:
        if ts.shape is None or ts.name not in shapes:
            continue
        shape = tuple(shapes[ts.name])
        for token, size in _pair_dims(loss_name, ts, ts.shape.split(), shape):
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
    loss_name: str, ts: TensorSpecLike, tokens: list[str], shape: tuple[int, ...]
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
