"""Loss specs seen through each API: KServe model metadata (v2) and full specs (v1)."""

from __future__ import annotations

from lossreg.errors import InvalidTensor, LossNotFound
from lossreg.protocol import (
    LossSpecResponse,
    MetadataTensor,
    ModelMetadataResponse,
    datatype_from_torch_name,
)

from ..registry import LossSpec, TensorSpec
from .inference import GRAD_LOSS, GRAD_PREFIX, LOSS

__all__ = ["PLATFORM", "check_version", "model_metadata", "spec_response", "versions"]

PLATFORM = "pytorch_loss"
_PREFERRED = ("float32", "int64", "bool")


def versions(spec: LossSpec) -> list[str]:
    """A loss's one version: its distribution's version (``"1"`` when unknown)."""
    return [spec.version or "1"]


def check_version(spec: LossSpec, version: str | None) -> None:
    """Raise `LossNotFound` for a version the loss does not have (None: any)."""
    if version is not None and version not in versions(spec):
        raise LossNotFound(
            f"loss {spec.name!r} has no version {version!r}; it has {', '.join(versions(spec))}",
            field="version",
            suggestions=versions(spec),
        )


def _kserve(dtypes: tuple[str, ...]) -> list[str]:
    """The KServe names of the dtypes that have one (a plugin may declare others)."""
    out = []
    for name in dtypes:
        try:
            out.append(datatype_from_torch_name(name))
        except InvalidTensor:
            continue
    return out


def _datatype(ts: TensorSpec) -> str:
    """The one datatype metadata can show: the usual choice among those accepted."""
    chosen = next((d for d in _PREFERRED if d in ts.dtypes), None)
    if chosen is not None:
        return datatype_from_torch_name(chosen)
    return next(iter(_kserve(ts.dtypes)), "FP32")


def _shape(ts: TensorSpec) -> list[int]:
    """Declared dimension symbols -> sizes, ``-1`` for any size (and for any rank: ``[-1]``)."""
    if ts.shape is None:
        return [-1]
    return [int(tok) if tok.lstrip("-").isdigit() else -1 for tok in ts.shape.split()]


def _tensor(ts: TensorSpec, name: str | None = None) -> MetadataTensor:
    return MetadataTensor(
        name=name or ts.name,
        datatype=_datatype(ts),
        shape=_shape(ts),
        parameters={
            "datatypes": ",".join(_kserve(ts.dtypes)),
            "optional": ts.optional,
            "differentiable": ts.differentiable,
            "shape": ts.shape or "*",
        },
    )


def _loss_output(spec: LossSpec) -> MetadataTensor:
    """The ``loss`` output: its declared shape, else what the ``reduction`` parameter says."""
    if spec.loss_shape is not None:
        symbols = spec.loss_shape.split()
        shape = [int(t) if t.lstrip("-").isdigit() else -1 for t in symbols]
        text = f"[{', '.join(symbols)}]"
    elif "reduction" in spec.params_schema.get("properties", {}):
        shape, text = [-1], "[] unless reduction='none'"
    else:
        shape, text = [-1], "as the loss returns it (undeclared: see the loss's loss_shape)"
    return MetadataTensor(name=LOSS, datatype="FP32", shape=shape, parameters={"shape": text})


def model_metadata(spec: LossSpec) -> ModelMetadataResponse:
    """A loss as a KServe model: its tensors in, ``loss`` and ``grad_<input>`` out."""
    tensors = spec.inputs + spec.tensor_params
    inputs = [_tensor(ts) for ts in tensors]
    if spec.tensor(GRAD_LOSS) is None:
        inputs.append(
            MetadataTensor(
                name=GRAD_LOSS,
                datatype="FP32",
                shape=[-1],
                parameters={"optional": True, "differentiable": False, "shape": "like loss"},
            )
        )
    outputs = [_loss_output(spec)]
    outputs += [_tensor(ts, GRAD_PREFIX + ts.name) for ts in tensors if ts.differentiable]
    return ModelMetadataResponse(
        name=spec.name,
        versions=versions(spec),
        platform=PLATFORM,
        inputs=inputs,
        outputs=outputs,
    )


def spec_response(spec: LossSpec) -> LossSpecResponse:
    """The full v1 description."""
    return LossSpecResponse.model_validate(spec.to_dict())
