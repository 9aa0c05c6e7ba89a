"""Loss specs seen through each API: KServe model metadata, Triton's model configuration,
repository index and statistics (v2, REST and gRPC alike) and full specs (v1)."""

from __future__ import annotations

from lossreg.errors import InvalidTensor, LossNotFound, ModelControlDisabled
from lossreg.protocol import (
    GRAD_LOSS,
    GRAD_PREFIX,
    LOSS,
    LossSpecResponse,
    MetadataTensor,
    ModelConfigResponse,
    ModelConfigTensor,
    ModelDynamicBatching,
    ModelMetadataResponse,
    ModelStatisticsResponse,
    RepositoryIndexEntry,
    datatype_from_torch_name,
)

from ..registry import LossRegistry, LossSpec, TensorSpec
from ..settings import Settings
from .statistics import StatisticsStore

__all__ = [
    "BACKEND",
    "PLATFORM",
    "check_version",
    "extensions",
    "model_config",
    "model_metadata",
    "model_statistics",
    "refuse_model_control",
    "repository_index",
    "spec_response",
    "versions",
]

BACKEND = "lossreg"

PLATFORM = "pytorch_loss"
_PREFERRED = ("float32", "int64", "bool")

_EXTENSIONS = (
    "binary_tensor_data",
    "parameters",
    "statistics",
    "model_configuration",
    "model_repository",
)


def extensions(settings: Settings) -> list[str]:
    """The protocol extensions the server metadata advertises (REST and gRPC alike)."""
    return [*_EXTENSIONS, *(["system_shared_memory"] if settings.allow_client_shm else [])]


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


def _config_tensor(tensor: MetadataTensor, optional: bool | None) -> ModelConfigTensor:
    datatype = "STRING" if tensor.datatype == "BYTES" else tensor.datatype
    return ModelConfigTensor(
        name=tensor.name, data_type=f"TYPE_{datatype}", dims=tensor.shape, optional=optional
    )


def model_config(spec: LossSpec, settings: Settings) -> ModelConfigResponse:
    """A minimal Triton model configuration: the metadata's tensors, no batch dimension of
    Triton's own (``max_batch_size`` 0: a loss takes whole tensors), and dynamic batching as
    configured."""
    metadata = model_metadata(spec)
    batching = (
        ModelDynamicBatching(max_queue_delay_microseconds=settings.batch_max_delay_us)
        if settings.batch_max_size > 1
        else None
    )
    return ModelConfigResponse(
        name=spec.name,
        backend=BACKEND,
        max_batch_size=0,
        input=[
            _config_tensor(t, bool((t.parameters or {}).get("optional", False)))
            for t in metadata.inputs
        ],
        output=[_config_tensor(t, None) for t in metadata.outputs],
        dynamic_batching=batching,
    )


def repository_index(registry: LossRegistry, *, ready: bool = False) -> list[RepositoryIndexEntry]:
    """Every registered loss: ``READY``, or ``UNAVAILABLE`` with its plugin's error as reason
    (``ready``: the ready ones only)."""
    out = []
    for spec in registry.list():
        if ready and not spec.available:
            continue
        out.append(
            RepositoryIndexEntry(
                name=spec.name,
                version=versions(spec)[0],
                state="READY" if spec.available else "UNAVAILABLE",
                reason="" if spec.available else (spec.error or "the plugin failed to load"),
            )
        )
    return out


def model_statistics(
    registry: LossRegistry,
    statistics: StatisticsStore,
    name: str | None = None,
    version: str | None = None,
) -> ModelStatisticsResponse:
    """Statistics of one loss (``name``, optionally one ``version``) or of every ready loss.

    Raises:
        LossNotFound / AmbiguousLoss / LossUnavailable: ``name`` cannot be served.
    """
    if name:
        spec = registry.get(name).spec
        check_version(spec, version or None)
        specs = [spec]
    else:
        specs = registry.list(include_unavailable=False)
    stats = statistics.snapshot((s.name, versions(s)[0]) for s in specs)
    return ModelStatisticsResponse.model_validate({"model_stats": stats})


def refuse_model_control(action: str, name: str) -> ModelControlDisabled:
    """The error every model load/unload gets: the registry is fixed at start-up."""
    return ModelControlDisabled(
        f"cannot {action} {name!r}: lossreg's registry is fixed at start-up so every replica "
        "serves the same losses; choose them with LOSSREG_ALLOW / LOSSREG_DENY (and "
        "LOSSREG_PLUGINS) and restart",
        field="name",
    )
