"""Check the shape relations a loss declares (``TensorSpec.shape``) before computing.

A spec such as ``input: "N C *S"``, ``target: "N *S"`` says: same batch size, and the same
trailing dimensions. Checking this up front gives an error naming the tensor and the dimension,
instead of torch's message from deep inside the loss (or, worse, a silent broadcast).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from lossreg.errors import ShapeMismatch

from ..registry import TensorSpec


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_shapes(
    loss_name: str, specs: Sequence[TensorSpec], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Raise `ShapeMismatch` naming the first tensor that breaks the declared relations."""
    bound: dict[str, tuple[int, ...]] = {}  # symbol -> its size(s)
    binder: dict[str, str] = {}  # symbol -> the tensor that first bound it
    for ts in specs:
        if ts.shape is None or ts.name not in tensors:
            continue
        shape = tuple(tensors[ts.name].shape)
        tokens = ts.shape.split()
        stars = [i for i, tok in enumerate(tokens) if tok.startswith("*")]
        if stars:
            i = stars[0]
            before, after = tokens[:i], tokens[i + 1 :]
            if len(shape) < len(before) + len(after):
                raise ShapeMismatch(
                    f"{loss_name}: {ts.name!r} has shape {_fmt(shape)}, expected at least "
                    f"{len(before) + len(after)} dimensions ({ts.shape})",
                    field=ts.name,
                )
            pairs = list(zip(before, shape[: len(before)]))
            pairs += [(tokens[i], shape[len(before) : len(shape) - len(after)])]
            pairs += list(zip(after, shape[len(shape) - len(after) :]))
        else:
            if len(shape) != len(tokens):
                raise ShapeMismatch(
                    f"{loss_name}: {ts.name!r} has shape {_fmt(shape)}, expected "
                    f"{len(tokens)} dimensions ({ts.shape})",
                    field=ts.name,
                )
            pairs = list(zip(tokens, shape))
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
                    f"{other!r} ({_fmt(tensors[other].shape)}): dimension {token} is "
                    f"{_fmt(sizes)} in {ts.name!r} but {_fmt(bound[symbol])} in {other!r}",
                    field=ts.name,
                )
