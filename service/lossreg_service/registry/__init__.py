"""The loss registry: discovery through entry points, specs, and the query API."""

from __future__ import annotations

from ._build import Loss, build_loss
from ._discovery import GROUP, Failure
from ._registry import LossRegistry
from .spec import (
    BOOL_DTYPES,
    FLOAT_DTYPES,
    INT_DTYPES,
    TAGS,
    LossDefinition,
    LossSpec,
    Reduction,
    TensorSpec,
    loss,
)

__all__ = [
    "BOOL_DTYPES",
    "FLOAT_DTYPES",
    "GROUP",
    "INT_DTYPES",
    "TAGS",
    "Failure",
    "Loss",
    "LossDefinition",
    "LossRegistry",
    "LossSpec",
    "Reduction",
    "TensorSpec",
    "build_loss",
    "loss",
]
