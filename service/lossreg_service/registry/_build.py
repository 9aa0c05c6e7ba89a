"""Turn whatever an entry point names into a `Loss`: one spec and one uniform call.

The loss literature writes a loss in four ways, and each becomes ``loss(tensors, params)``:

- a plain function ``f(input, target, weight=None, *, reduction="mean")``;
- an ``nn.Module`` (or any) class: the constructor takes the parameters, ``forward`` (or
  ``__call__``) the tensors; fastai-style wrappers that flatten an axis are such classes;
- a ``torch.autograd.Function`` subclass: ``apply`` takes tensors and parameters positionally,
  and its own ``backward`` is the gradient used;
- a callable instance (an ``nn.Module`` or a wrapper already configured).

Arguments without a default are the tensor inputs, in call order; arguments whose annotation
mentions ``Tensor`` (or, unannotated with a ``None`` default, are named like one: ``weight``,
``pos_weight``, ``class_weights``) are tensor parameters; everything else is a scalar parameter,
validated by a pydantic model built from the signature (so its JSON schema comes for free). The
deprecated ``size_average``/``reduce`` are not exposed, an unannotated ``int`` default accepts any
number (``smooth=1`` takes ``1e-5``), and a class is constructed with only the arguments a caller
set, so its own defaults (and those of the bases it forwards ``**kwargs`` to) stay its own.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

import pydantic
import torch

from .spec import META_ATTR, LossDefinition, LossSpec, TensorSpec, default_tensor_spec

_SKIP_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)

JsonScalar = bool | int | float | str | None
"""What an unannotated parameter with a ``None`` default accepts: never lists or objects."""

LEGACY_ARGS = frozenset({"size_average", "reduce"})
"""torch's deprecated reduction arguments: never exposed (``reduction`` replaces them)."""

_TENSOR_LIKE_NAMES = frozenset({"weight", "weights", "pos_weight", "class_weight", "class_weights"})


@dataclasses.dataclass(frozen=True)
class _Arg:
    name: str
    kind: inspect._ParameterKind
    default: Any
    annotation: Any

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    @property
    def unannotated(self) -> bool:
        return self.annotation is inspect.Parameter.empty

    @property
    def is_tensor(self) -> bool:
        if self.unannotated:  # ``weight=None``: a class-weight tensor, not a JSON scalar
            return self.default is None and self.name in _TENSOR_LIKE_NAMES
        return _mentions_tensor(self.annotation)


def _mentions_tensor(annotation: Any) -> bool:
    if annotation is torch.Tensor:
        return True
    if isinstance(annotation, str):
        return "Tensor" in annotation
    return any(_mentions_tensor(a) for a in typing.get_args(annotation))


def _args(fn: Callable[..., Any], *, drop_first: bool = False) -> list[_Arg]:
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    params = [p for p in sig.parameters.values() if p.kind not in _SKIP_KINDS]
    if drop_first:
        params = params[1:]
    return [_Arg(p.name, p.kind, p.default, hints.get(p.name, p.annotation)) for p in params]


class Loss:
    """A registered loss: its spec, its parameter validator and a uniform call."""

    def __init__(
        self,
        spec: LossSpec,
        params_model: type[pydantic.BaseModel],
        call: Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], torch.Tensor],
        unannotated: frozenset[str] = frozenset(),
    ) -> None:
        self.spec = spec
        self.params_model = params_model
        self._call = call
        self.unannotated = unannotated  # scalar parameters typed from their default alone
        # Whether torch.func.vmap runs this loss: None until a batch has tried (engine.batching).
        self.vmappable: bool | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(
        self, tensors: Mapping[str, torch.Tensor], params: Mapping[str, Any]
    ) -> torch.Tensor:
        """Compute the loss; ``params`` must already be validated (see `validate_params`)."""
        return self._call(tensors, params)

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate what the caller set (the loss keeps its own defaults for the rest);
        raises pydantic.ValidationError."""
        return self.params_model.model_validate(dict(params)).model_dump(exclude_unset=True)

    def __repr__(self) -> str:
        return f"Loss({self.spec.qualified_name!r}, style={self.spec.style!r})"


def _unwrap(obj: Any) -> tuple[Any, LossDefinition]:
    if isinstance(obj, LossDefinition):
        return obj.target, obj
    meta = getattr(obj, META_ATTR, None)
    if isinstance(meta, LossDefinition) and meta.target is obj:
        return obj, meta
    return obj, LossDefinition(target=obj)


def _style(obj: Any) -> str:
    if inspect.isclass(obj):
        if issubclass(obj, torch.autograd.Function):
            return "autograd_function"
        if issubclass(obj, torch.nn.Module):
            return "module"
        return "class"
    if isinstance(obj, torch.nn.Module):
        return "module_instance"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethod(obj):
        return "function"
    if callable(obj):
        return "callable"
    raise TypeError(f"a loss must be a function, a class or a callable, not {type(obj).__name__}")


def _tensor_spec(base: TensorSpec, override: TensorSpec | Mapping[str, Any] | None) -> TensorSpec:
    if override is None:
        return base
    if isinstance(override, TensorSpec):
        return dataclasses.replace(override, name=base.name, optional=base.optional)
    fields = dict(override)
    for key in ("dtypes",):
        if key in fields:
            fields[key] = tuple(fields[key])
    return dataclasses.replace(base, **fields)


def _params_model(
    name: str, args: list[_Arg], overrides: Mapping[str, Any]
) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    for arg in args:
        annotation = overrides.get(arg.name, arg.annotation)
        if annotation is inspect.Parameter.empty:
            if arg.default is None or arg.default is inspect.Parameter.empty:
                annotation = JsonScalar
            elif type(arg.default) is int:
                annotation = int | float  # ``smooth=1`` is a number, not an integer-only knob
            else:
                annotation = type(arg.default)
        if arg.required:
            fields[arg.name] = (annotation, ...)
        else:
            fields[arg.name] = (annotation, arg.default)
    model_name = "".join(part.title() for part in name.replace("-", "_").split("_")) + "Params"
    return pydantic.create_model(
        model_name,
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


def _own_doc(target: Any) -> str:
    """The target's own docstring: never one inherited from a base class (``nn.Module``'s)."""
    owner = target if inspect.isclass(target) or inspect.isroutine(target) else type(target)
    doc = owner.__dict__.get("__doc__") if inspect.isclass(owner) else owner.__doc__
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _doc(target: Any, definition: LossDefinition) -> tuple[str, str]:
    doc = definition.doc or _own_doc(target)
    summary = definition.summary or (doc.strip().splitlines()[0] if doc.strip() else "")
    return summary.strip(), doc.strip()


def build_loss(
    obj: Any,
    name: str,
    *,
    distribution: str | None = None,
    version: str | None = None,
    entry_point: str = "",
) -> Loss:
    """Describe ``obj`` and wrap it into a uniform call. Raises TypeError if it cannot be."""
    target, definition = _unwrap(obj)
    style = _style(target)

    # Where the tensors come in, and where the parameters are set.
    if style == "autograd_function":
        call_args = _args(target.forward, drop_first=True)  # drop ctx
        ctor_args: list[_Arg] = []
    elif style in ("module", "class"):
        forward = getattr(target, "forward", None) or target.__call__
        call_args = _args(forward, drop_first=True)  # drop self
        ctor_args = _args(target.__init__, drop_first=True)
    elif style == "module_instance":
        call_args, ctor_args = _args(target.forward), []
    else:
        call_args, ctor_args = _args(target), []

    excluded = set(definition.exclude) | LEGACY_ARGS
    call_args = [a for a in call_args if a.name not in excluded]
    ctor_args = [a for a in ctor_args if a.name not in excluded]

    input_args = [a for a in call_args if a.required]
    tensor_param_args = [a for a in call_args + ctor_args if not a.required and a.is_tensor]
    scalar_args = [a for a in call_args + ctor_args if not a.required and not a.is_tensor]
    required_ctor = [a for a in ctor_args if a.required]
    if required_ctor:
        raise TypeError(
            f"loss {name!r}: constructor arguments without defaults are not supported: "
            + ", ".join(a.name for a in required_ctor)
        )
    unknown = set(definition.inputs) - {a.name for a in input_args}
    unknown |= set(definition.tensor_params) - {a.name for a in tensor_param_args}
    unknown |= set(definition.params) - {a.name for a in scalar_args}
    if unknown:
        raise TypeError(f"loss {name!r}: metadata names unknown arguments: {sorted(unknown)}")

    inputs = tuple(
        _tensor_spec(default_tensor_spec(a.name), definition.inputs.get(a.name)) for a in input_args
    )
    tensor_params = tuple(
        _tensor_spec(
            default_tensor_spec(a.name, optional=True), definition.tensor_params.get(a.name)
        )
        for a in tensor_param_args
    )
    params_model = _params_model(name, scalar_args, definition.params)
    if style in ("module", "class"):
        _try_construct(target, name)
    summary, doc = _doc(target, definition)
    spec = LossSpec(
        name=name,
        summary=summary,
        doc=doc,
        inputs=inputs,
        tensor_params=tensor_params,
        params_schema=params_model.model_json_schema(),
        tags=tuple(definition.tags),
        style=style,
        entry_point=entry_point,
        distribution=distribution,
        version=version,
        loss_shape=definition.loss_shape,
    )
    call = _make_call(target, style, call_args, ctor_args)
    unannotated = frozenset(
        a.name for a in scalar_args if a.unannotated and a.name not in definition.params
    )
    return Loss(spec, params_model, call, unannotated)


def _try_construct(target: type, name: str) -> None:
    """Construct the class with its defaults once, so one that cannot be is reported at load
    time (unavailable, with the error) instead of failing every request."""
    try:
        target()
    except Exception as exc:
        raise TypeError(
            f"loss {name!r}: {target.__name__}() with its default arguments failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _make_call(
    target: Any, style: str, call_args: list[_Arg], ctor_args: list[_Arg]
) -> Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], torch.Tensor]:
    """A closure mapping (tensors, params) onto the target's own calling convention."""
    call_names = [a.name for a in call_args]
    positional = [a.name for a in call_args if a.kind is inspect.Parameter.POSITIONAL_ONLY]
    ctor_names = [a.name for a in ctor_args]
    defaults = {a.name: a.default for a in call_args}

    def split(values: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        args = [values[n] for n in positional if n in values]
        kwargs = {n: values[n] for n in call_names if n in values and n not in positional}
        return args, kwargs

    if style == "autograd_function":

        def call_function(
            tensors: Mapping[str, torch.Tensor], params: Mapping[str, Any]
        ) -> torch.Tensor:
            merged = {**tensors, **params}
            return target.apply(*(merged.get(n, defaults[n]) for n in call_names))

        return call_function

    if style in ("module", "class"):

        def call_class(
            tensors: Mapping[str, torch.Tensor], params: Mapping[str, Any]
        ) -> torch.Tensor:
            merged = {**tensors, **params}
            instance = target(**{n: merged[n] for n in ctor_names if n in merged})
            args, kwargs = split(merged)
            return instance(*args, **kwargs)

        return call_class

    def call_plain(tensors: Mapping[str, torch.Tensor], params: Mapping[str, Any]) -> torch.Tensor:
        args, kwargs = split({**tensors, **params})
        return target(*args, **kwargs)

    return call_plain
