"""What a loss is, as the registry describes it: tensors in, parameters, origin.

`LossSpec` is the plain, serialisable description (what `lossreg show` prints and the catalog
serves). `LossDefinition` is what a plugin author may attach to a loss to say more than its
signature can: a summary, tags, which inputs take class indices, shape relations, ranges.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

FLOAT_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES: tuple[str, ...] = ("int8", "int16", "int32", "int64", "uint8")
BOOL_DTYPES: tuple[str, ...] = ("bool",)

Reduction = Literal["none", "mean", "sum"]
"""The `reduction` parameter of torch losses; annotating with it puts the enum in the schema."""

TAGS: tuple[str, ...] = (
    "classification",
    "segmentation",
    "regression",
    "metric-learning",
    "sequence",
    "distribution",
    "ranking",
)

TARGET_NAMES = frozenset(
    {
        "target", "targets", "targ", "targs", "tgt", "label", "labels", "y", "yb", "y_true",
        "ground_truth", "gt", "truth", "mask", "masks",
    }
)  # fmt: skip
"""Input names taken for targets: any dtype accepted (class indices, masks), gradient only when
asked for. fastai calls its target ``targ``, Keras ``y_true``. A plugin overrides the guess with
``@loss(inputs={"targ": {"differentiable": False}})`` (or a dtype list, a shape...)."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named tensor a loss takes.

    Args:
        name: the argument name (the wire name of the input).
        dtypes: the torch dtype names accepted.
        differentiable: whether a gradient with respect to it can be asked for.
        grad_by_default: whether that gradient is computed when a request names none (targets:
            only when asked for, e.g. by a `RemoteLoss` whose target requires grad).
        optional: whether it may be left out (tensor parameters such as ``weight``).
        shape: space-separated dimension symbols, e.g. ``"N C *"``; a name binds the same size
            across all of a loss's tensors, an integer is exact, ``*`` or ``*name`` stands for
            any number of dimensions (a named one must match elsewhere). None: unchecked.
        cast: dtype the engine converts the tensor to before calling the loss (e.g. ``int64``
            for class indices sent as int32 by a KServe client).
        doc: one line for the catalog.
    """

    name: str
    dtypes: tuple[str, ...] = FLOAT_DTYPES
    differentiable: bool = True
    optional: bool = False
    shape: str | None = None
    cast: str | None = None
    doc: str = ""
    grad_by_default: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["dtypes"] = list(self.dtypes)
        return out


def default_tensor_spec(name: str, *, optional: bool = False) -> TensorSpec:
    """What an unannotated tensor argument is taken to be, from its name alone."""
    if optional:
        return TensorSpec(name, FLOAT_DTYPES, differentiable=False, optional=True)
    if name in TARGET_NAMES:
        # A float target may require grad (distillation, consistency losses): autograd or the
        # loss's own backward gives its gradient when asked for, like local torch.
        return TensorSpec(name, FLOAT_DTYPES + INT_DTYPES + BOOL_DTYPES, grad_by_default=False)
    if name.endswith("lengths"):
        return TensorSpec(name, INT_DTYPES, differentiable=False)
    return TensorSpec(name, FLOAT_DTYPES, differentiable=True)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """The full, serialisable description of a registered loss."""

    name: str
    summary: str
    doc: str
    inputs: tuple[TensorSpec, ...]
    tensor_params: tuple[TensorSpec, ...]
    params_schema: dict[str, Any]
    tags: tuple[str, ...] = ()
    style: str = "function"
    entry_point: str = ""
    distribution: str | None = None
    version: str | None = None
    available: bool = True
    error: str | None = None
    loss_shape: str | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.distribution}:{self.name}" if self.distribution else self.name

    @property
    def differentiable(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs if t.differentiable)

    def tensor(self, name: str) -> TensorSpec | None:
        for t in self.inputs + self.tensor_params:
            if t.name == name:
                return t
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "qualified_name": self.qualified_name,
            "summary": self.summary,
            "doc": self.doc,
            "inputs": [t.to_dict() for t in self.inputs],
            "tensor_params": [t.to_dict() for t in self.tensor_params],
            "params_schema": self.params_schema,
            "tags": list(self.tags),
            "style": self.style,
            "entry_point": self.entry_point,
            "distribution": self.distribution,
            "version": self.version,
            "available": self.available,
            "error": self.error,
            "loss_shape": self.loss_shape,
        }


@dataclasses.dataclass(frozen=True)
class LossDefinition:
    """Metadata a plugin author adds to a loss; every field is optional.

    An entry point may name a `LossDefinition` directly (handy for a class you do not own), or
    name a function/class decorated with `loss`, which attaches one.

    Args:
        target: the loss itself (function, nn.Module class, autograd.Function, callable).
        summary: one line; defaults to the first line of the docstring.
        doc: the longer text; defaults to the docstring.
        tags: task tags (see `TAGS`).
        inputs: per-input overrides, by name (a `TensorSpec` or a dict of its fields).
        tensor_params: per-tensor-parameter overrides, by name.
        params: per-scalar-parameter overrides: a type annotation (``Annotated[float,
            Field(ge=0)]``) replacing the signature's.
        exclude: signature arguments not to expose (deprecated knobs such as ``size_average``).
        loss_shape: the shape the loss returns, in the inputs' dimension symbols (``"N"`` for
            one value per sample; ``""`` for a scalar); shown in the v2 model metadata.
    """

    target: Any
    summary: str | None = None
    doc: str | None = None
    tags: Sequence[str] = ()
    inputs: Mapping[str, TensorSpec | Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    tensor_params: Mapping[str, TensorSpec | Mapping[str, Any]] = dataclasses.field(
        default_factory=dict
    )
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    exclude: Sequence[str] = ()
    loss_shape: str | None = None


_T = TypeVar("_T")
META_ATTR = "__lossreg__"


def loss(
    *,
    summary: str | None = None,
    doc: str | None = None,
    tags: Sequence[str] = (),
    inputs: Mapping[str, TensorSpec | Mapping[str, Any]] | None = None,
    tensor_params: Mapping[str, TensorSpec | Mapping[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    exclude: Sequence[str] = (),
    loss_shape: str | None = None,
) -> Callable[[_T], _T]:
    """Decorator attaching a `LossDefinition` to a loss; it registers nothing by itself.

    Example::

        @loss(tags=["segmentation"], inputs={"target": {"dtypes": INT_DTYPES}})
        def my_dice(input, target, smooth: float = 1.0): ...
    """

    def attach(obj: _T) -> _T:
        definition = LossDefinition(
            target=obj,
            summary=summary,
            doc=doc,
            tags=tuple(tags),
            inputs=dict(inputs or {}),
            tensor_params=dict(tensor_params or {}),
            params=dict(params or {}),
            exclude=tuple(exclude),
            loss_shape=loss_shape,
        )
        setattr(obj, META_ATTR, definition)
        return obj

    return attach
