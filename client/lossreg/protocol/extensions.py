"""The wire schema of Triton's protocol extensions lossreg serves: statistics, model
configuration and the model repository (pydantic, like `schemas`).

Field names and nesting are Triton's (``GET /v2/models/stats``, ``GET /v2/models/{m}/config``,
``POST /v2/repository/index``), so ``tritonclient``'s ``get_inference_statistics``,
``get_model_config`` and ``get_model_repository_index`` read them unchanged; the gRPC messages
of the same names carry the same fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "InferBatchStatistics",
    "InferStatistics",
    "ModelConfigResponse",
    "ModelConfigTensor",
    "ModelDynamicBatching",
    "ModelStatistics",
    "ModelStatisticsResponse",
    "RepositoryIndexEntry",
    "RepositoryIndexRequest",
    "StatisticDuration",
]


class StatisticDuration(BaseModel):
    """How many times a stage ran, and its cumulative duration."""

    count: int = 0
    ns: int = 0


class InferStatistics(BaseModel):
    """Cumulative per-request stages (Triton's ``inference_stats``)."""

    success: StatisticDuration
    fail: StatisticDuration
    queue: StatisticDuration
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration


class InferBatchStatistics(BaseModel):
    """Executions of one batch size: ``count`` is the number of executions."""

    batch_size: int
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration


class ModelStatistics(BaseModel):
    """One model's (loss's) statistics since the process started."""

    name: str
    version: str
    last_inference: int = Field(description="Milliseconds since the epoch; 0: never.")
    inference_count: int = Field(description="Inferences that succeeded.")
    execution_count: int = Field(
        description="Computations run: fewer than inferences when dynamic batching merged them."
    )
    inference_stats: InferStatistics
    batch_stats: list[InferBatchStatistics]


class ModelStatisticsResponse(BaseModel):
    """``GET /v2/models/stats`` and ``GET /v2/models/{name}[/versions/{v}]/stats``."""

    model_stats: list[ModelStatistics]


class ModelConfigTensor(BaseModel):
    """An input or output in a model configuration (``dims`` ``-1``: any size)."""

    name: str
    data_type: str = Field(examples=["TYPE_FP32"])
    dims: list[int]
    optional: bool | None = None


class ModelDynamicBatching(BaseModel):
    """Present when dynamic batching is on (``LOSSREG_BATCH_MAX_SIZE`` > 1)."""

    max_queue_delay_microseconds: int = 0


class ModelConfigResponse(BaseModel):
    """``GET /v2/models/{name}/config``: a minimal Triton model configuration."""

    name: str
    platform: str = ""
    backend: str = "lossreg"
    max_batch_size: int = 0
    input: list[ModelConfigTensor]
    output: list[ModelConfigTensor]
    dynamic_batching: ModelDynamicBatching | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "mse_loss",
                "platform": "",
                "backend": "lossreg",
                "max_batch_size": 0,
                "input": [
                    {"name": "input", "data_type": "TYPE_FP32", "dims": [-1], "optional": False}
                ],
                "output": [{"name": "loss", "data_type": "TYPE_FP32", "dims": [-1]}],
                "dynamic_batching": {"max_queue_delay_microseconds": 0},
            }
        }
    )


class RepositoryIndexRequest(BaseModel):
    """``POST /v2/repository/index`` body: ``ready`` true lists only the ready models."""

    ready: bool = False
    repository_name: str = ""


class RepositoryIndexEntry(BaseModel):
    """One registered loss: ``READY``, or ``UNAVAILABLE`` with its plugin's error."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = ""
