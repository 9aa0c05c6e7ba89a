"""What every mode-aware zoo loss shares: modes, input checks, one-hot targets, masks, reductions.

Each loss sends its (input, target) pair through `flatten`. It checks the pair for the mode,
names the tensor at fault in the error (so the service answers 422 and never 500), moves the
input to the compute dtype and flattens the spatial dimensions to ``[B, C, N]``. The compute
dtype is float64 for a float64 input and float32 otherwise: a float16 input cannot even hold a
512x512 pixel count, so sums are always taken in float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

import torch
from pydantic import Field
from torch import Tensor

from lossreg.errors import InvalidInput, ShapeMismatch

from ...engine.checks import any_true
from ...registry import BOOL_DTYPES, FLOAT_DTYPES, INT_DTYPES, Reduction, TensorSpec

Mode = Literal["binary", "multiclass", "multilabel"]

# Parameter annotations: pydantic turns each into the loss's JSON schema, range and description.
ModeParam = Annotated[
    Mode,
    Field(
        description="binary: input [B,1,...] vs mask [B,...] or [B,1,...]; multiclass: input "
        "[B,C,...] vs class indices [B,...]; multilabel: input [B,C,...] vs masks [B,C,...]"
    ),
]
FromLogits = Annotated[
    bool,
    Field(
        description="apply sigmoid (binary, multilabel) or softmax (multiclass) to the input; "
        "false: the input already holds probabilities"
    ),
]
Smooth = Annotated[
    float, Field(ge=0, description="added to numerator and denominator of each ratio")
]
IgnoreIndex = Annotated[
    int | None,
    Field(description="target value whose pixels are left out of every statistic"),
]
IncludeBackground = Annotated[
    bool,
    Field(description="false drops channel 0 (multiclass, multilabel; binary has no background)"),
]
Batch = Annotated[
    bool,
    Field(description="true: one statistic over the whole batch; false: one per sample"),
]
NonNegative = Annotated[float, Field(ge=0)]

_F = TypeVar("_F", bound=Callable[..., Tensor])

# Tensor specs shared by the declarations.
INPUT = TensorSpec(
    "input",
    FLOAT_DTYPES,
    differentiable=True,
    shape="B C *",
    doc="logits or probabilities [B, C, ...] (C = 1 in binary mode)",
)
MODE_TARGET = TensorSpec(
    "target",
    FLOAT_DTYPES + INT_DTYPES + BOOL_DTYPES,
    differentiable=False,
    shape="B *",
    doc="multiclass: integer class indices [B, ...]; binary/multilabel: 0/1 mask (float, int "
    "or bool) shaped like the input, or [B, ...] in binary mode",
)
CLASS_INDEX_TARGET = TensorSpec(
    "target",
    INT_DTYPES,
    differentiable=False,
    shape="B *",
    cast="int64",
    doc="class indices [B, ...] in [0, C), or ignore_index",
)
CLASS_WEIGHT = {
    "doc": "per-class weight [C] (C counts the background even when it is excluded)",
    "shape": "C",
}


@dataclasses.dataclass(frozen=True)
class Flat:
    """An (input, target) pair checked for its mode and flattened to ``[B, C, N]``.

    Attributes:
        input: the input in the compute dtype, ``[B, C, N]``.
        target: multiclass: class indices ``[B, N]`` (int64, ignored pixels set to 0);
            binary/multilabel: the mask ``[B, C, N]`` in the compute dtype (ignored set to 0).
        valid: bool, True where a pixel counts: ``[B, 1, N]``, or ``[B, C, N]`` in multilabel.
        mode: the mode it was checked for.
        spatial: the input's spatial shape, to unflatten per-pixel results.
    """

    input: Tensor
    target: Tensor
    valid: Tensor
    mode: Mode
    spatial: tuple[int, ...]

    @property
    def channels(self) -> int:
        return int(self.input.shape[1])


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (float16, bfloat16, float32) computes in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _shape(shape: torch.Size | tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _channel_free(target: Tensor, input: Tensor, mode: str) -> Tensor:
    """Accept a target as ``[B, ...]`` or ``[B, 1, ...]`` against an input ``[B, C, ...]``."""
    bare = (input.shape[0], *input.shape[2:])
    single = (input.shape[0], 1, *input.shape[2:])
    if tuple(target.shape) not in (bare, single):
        raise ShapeMismatch(
            f"{mode} mode: target has shape {_shape(target.shape)}; with input "
            f"{_shape(input.shape)} it must be {_shape(bare)} or {_shape(single)}",
            field="target",
        )
    return target


def flatten(
    input: Tensor,
    target: Tensor,
    mode: Mode,
    ignore_index: int | None,
    *,
    hard: bool = False,
) -> Flat:
    """Check ``(input, target)`` for ``mode`` and flatten them; see `Flat`.

    Args:
        input: ``[B, C, ...]``.
        target: class indices (multiclass) or a mask in [0, 1] (binary, multilabel).
        mode: binary, multiclass or multilabel.
        ignore_index: target value marking pixels (elements, in multilabel) to leave out.
        hard: masks must hold exactly 0 or 1 (losses defined on sets, such as Lovasz).

    Raises:
        InvalidInput: naming ``input`` (wrong channel count for the mode) or ``target``
            (wrong dtype, class index out of range, mask value outside [0, 1]).
        ShapeMismatch: naming the tensor whose shape does not fit.
    """
    if input.dim() < 2:
        raise ShapeMismatch(
            f"input has shape {_shape(input.shape)}; expected [B, C, ...]", field="input"
        )
    batch, channels = int(input.shape[0]), int(input.shape[1])
    spatial = tuple(int(d) for d in input.shape[2:])
    x = input.to(compute_dtype(input)).reshape(batch, channels, -1)

    if mode == "multiclass":
        if channels < 2:
            raise InvalidInput(
                f"multiclass mode needs input [B, C, ...] with C >= 2 class channels; got "
                f"{_shape(input.shape)}. For a single foreground channel use mode='binary'.",
                field="input",
            )
        if target.is_floating_point() or target.dtype == torch.bool:
            raise InvalidInput(
                f"multiclass mode takes integer class indices as target, not "
                f"{str(target.dtype).removeprefix('torch.')}",
                field="target",
            )
        labels = _channel_free(target, input, mode).reshape(batch, -1).long()
        valid = (
            labels != ignore_index
            if ignore_index is not None
            else torch.ones_like(labels, dtype=torch.bool)
        )
        bad = valid & ((labels < 0) | (labels >= channels))
        if any_true(bad):
            value = int(labels[bad][0])
            also = f" and is not ignore_index ({ignore_index})" if ignore_index is not None else ""
            raise InvalidInput(
                f"target holds class index {value}, which is outside [0, {channels}){also}",
                field="target",
            )
        return Flat(x, labels.masked_fill(~valid, 0), valid.unsqueeze(1), mode, spatial)

    if mode == "binary":
        if channels != 1:
            raise InvalidInput(
                f"binary mode takes input [B, 1, ...] (one value per pixel); got "
                f"{_shape(input.shape)}. For C classes use mode='multiclass' or 'multilabel'.",
                field="input",
            )
        mask = _channel_free(target, input, mode).reshape(batch, 1, -1)
    elif mode == "multilabel":
        if tuple(target.shape) != tuple(input.shape):
            raise ShapeMismatch(
                f"multilabel mode: target has shape {_shape(target.shape)}; it must match the "
                f"input, {_shape(input.shape)}",
                field="target",
            )
        mask = target.reshape(batch, channels, -1)
    else:  # pragma: no cover - the parameter schema admits only the three modes
        raise InvalidInput(f"unknown mode {mode!r}", field="mode")

    mask = mask.to(x.dtype)
    if ignore_index is not None:
        valid = mask != ignore_index
    else:
        valid = torch.ones_like(mask, dtype=torch.bool)
    outside = (mask != 0) & (mask != 1) if hard else (mask < 0) | (mask > 1)
    bad = valid & outside
    if any_true(bad):
        found = float(mask[bad][0])
        allowed = "0 or 1" if hard else "values in [0, 1]"
        also = f" (or ignore_index, {ignore_index})" if ignore_index is not None else ""
        raise InvalidInput(
            f"{mode} mode: the target mask must hold {allowed}{also}; found {found:g}",
            field="target",
        )
    return Flat(x, mask.masked_fill(~valid, 0), valid, mode, spatial)


def probabilities(flat: Flat, from_logits: bool) -> Tensor:
    """``[B, C, N]`` probabilities: softmax over classes (multiclass) or sigmoid (otherwise)."""
    if not from_logits:
        return flat.input
    return flat.input.softmax(1) if flat.mode == "multiclass" else flat.input.sigmoid()


def one_hot_target(flat: Flat) -> Tensor:
    """The target as a ``[B, C, N]`` mask in the compute dtype, zero where ignored."""
    if flat.mode != "multiclass":
        return flat.target
    # ``F.one_hot`` reads the largest index back to the host, which vmap refuses: compare with
    # the class numbers instead (the same 0/1 values, already ``[B, C, N]``).
    classes = torch.arange(flat.channels, device=flat.target.device).view(1, -1, 1)
    one_hot = (flat.target.unsqueeze(1) == classes).to(flat.input.dtype)
    return one_hot * flat.valid


def drop_background(flat: Flat, include_background: bool, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Drop channel 0 of each ``[B, C, ...]`` tensor unless asked to keep it (or binary)."""
    if include_background or flat.mode == "binary":
        return tensors
    return tuple(t[:, 1:] for t in tensors)


def class_weight(
    weight: Tensor | None, flat: Flat, include_background: bool, dtype: torch.dtype
) -> Tensor | None:
    """Check a per-class weight ``[C]`` against the input; drop the background entry if asked."""
    if weight is None:
        return None
    if weight.numel() != flat.channels:
        raise ShapeMismatch(
            f"weight has shape {_shape(weight.shape)}; it needs one entry per input channel "
            f"({flat.channels})",
            field="weight",
        )
    w = weight.reshape(-1).to(device=flat.input.device, dtype=dtype)
    if any_true((w < 0) | ~torch.isfinite(w)):
        raise InvalidInput("weight must hold finite, non-negative values", field="weight")
    if not include_background and flat.mode != "binary":
        w = w[1:]
    return w


def spatial_sums(x: Tensor, batch: bool) -> Tensor:
    """Sum ``[B, C, N]`` over pixels: ``[B, C]``, or ``[1, C]`` over the whole batch."""
    out = x.sum(-1)
    return out.sum(0, keepdim=True) if batch else out


def ratio_or_one(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, defined as 1 where the denominator is 0 (both sets empty).

    The `where` keeps the gradient finite: the masked branch never divides by zero.
    """
    positive = denominator > 0
    safe = torch.where(positive, denominator, torch.ones_like(denominator))
    return torch.where(positive, numerator / safe, torch.ones_like(numerator))


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, defined as 0 where the denominator is 0 (nothing counted)."""
    positive = denominator > 0
    safe = torch.where(positive, denominator, torch.ones_like(denominator))
    return torch.where(positive, numerator / safe, torch.zeros_like(numerator))


def log_clamped(x: Tensor) -> Tensor:
    """log(x), with x clamped to the dtype's smallest normal: finite value and gradient at 0."""
    return x.clamp_min(torch.finfo(x.dtype).tiny).log()


def pixel_nll(flat: Flat, from_logits: bool) -> Tensor:
    """Per-pixel negative log-likelihood of the target class, ``[B, N]`` (multiclass)."""
    labels = flat.target.unsqueeze(1)
    if from_logits:
        return -flat.input.log_softmax(1).gather(1, labels).squeeze(1)
    return -log_clamped(flat.input.gather(1, labels).squeeze(1))


def reduce(loss: Tensor, reduction: Reduction) -> Tensor:
    """Apply ``reduction``; the mean of no elements is 0, not NaN."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / max(loss.numel(), 1)


def document(**sections: str) -> Callable[[_F], _F]:
    """Fill ``{name}`` placeholders in a loss's docstring with text several losses share.

    The docstring is the loss's catalog doc (what ``lossreg show`` prints), so shared
    paragraphs such as the table of modes are written once.
    """

    def fill(fn: _F) -> _F:
        doc = fn.__doc__ or ""
        for name, text in sections.items():
            doc = doc.replace("{" + name + "}", text.strip().replace("\n", "\n    "))
        fn.__doc__ = doc
        return fn

    return fill
