"""The wire schema of ``POST /v1/losses/{name}/sweep``: a loss's value and gradient along one axis.

A sweep takes the same inputs as ``/evaluate`` and replaces one element of one input by each of
N values in turn; the answer is the loss and the gradient with respect to that element at each
value: the curve a plot needs, in one request and one batched computation.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .schemas import NonFiniteMode, TensorValue

__all__ = [
    "MAX_SWEEP_ELEMENTS",
    "MAX_SWEEP_POINTS",
    "SweepAxis",
    "SweepRequest",
    "SweepResponse",
]

MAX_SWEEP_POINTS = 2048
"""The most points one sweep evaluates; more is a 400 naming ``sweep.points``/``sweep.values``."""
MAX_SWEEP_ELEMENTS = 1 << 22
"""points x the elements of all inputs (each point is a copy of them): past it, a 422 naming
``sweep.points``, so a sweep's memory stays bounded whatever the body cap."""


class SweepAxis(BaseModel):
    """Which element moves, and through which values (``values``, or ``start``/``stop``/``points``
    evenly spaced, both ends included)."""

    input: str = Field(description="the floating-point input whose element is swept")
    index: list[int] = Field(
        default_factory=list,
        description="the element's position in that input, one index per dimension ([] for 0-d)",
    )
    start: float | None = None
    stop: float | None = None
    points: int | None = Field(None, ge=2, le=MAX_SWEEP_POINTS)
    values: list[float] | None = Field(None, min_length=1, max_length=MAX_SWEEP_POINTS)

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _one_way(self) -> SweepAxis:
        ranged = (self.start, self.stop, self.points)
        if self.values is not None and any(v is not None for v in ranged):
            raise ValueError("give either values, or start, stop and points, not both")
        if self.values is None and any(v is None for v in ranged):
            raise ValueError("give values, or all of start, stop and points")
        return self

    def grid(self) -> list[float]:
        """The swept values, in order."""
        if self.values is not None:
            return list(self.values)
        assert self.start is not None and self.stop is not None and self.points is not None
        step = (self.stop - self.start) / (self.points - 1)
        return [self.start + i * step for i in range(self.points - 1)] + [self.stop]


class SweepRequest(BaseModel):
    """``POST /v1/losses/{name}/sweep``: ``inputs`` and ``params`` as in `EvaluateRequest`."""

    inputs: dict[str, TensorValue] = Field(
        description="tensors by input name; the swept element's own value is ignored"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="scalar parameters")
    sweep: SweepAxis
    nonfinite: NonFiniteMode | None = Field(
        None,
        description="NaN/Inf in the inputs or at any point: 'reject' (422 non_finite naming the "
        "point) or 'allow' (such values read null); omitted: the server's LOSSREG_NONFINITE",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "inputs": {"input": [[2.0, 0.5, -1.0]], "target": [0]},
                "params": {"label_smoothing": 0.1},
                "sweep": {"input": "input", "index": [0, 0], "start": -4, "stop": 4, "points": 9},
            }
        },
    )


class SweepResponse(BaseModel):
    """The loss and d loss / d element at each swept value (null where non-finite)."""

    name: str
    input: str
    index: list[int]
    dtype: str = Field(description="the loss's dtype")
    x: list[float]
    loss: list[float | None]
    grad: list[float | None] | None = Field(
        description="d loss / d swept element; null for an input that is not differentiable"
    )
    nonfinite: list[str] = Field(
        default_factory=list, description="outputs with NaN/Inf at some point ('loss', 'grad')"
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "cross_entropy",
                "input": "input",
                "index": [0, 0],
                "dtype": "float32",
                "x": [-1.0, 0.0, 1.0],
                "loss": [2.1755, 1.3490, 0.6790],
                "grad": [-0.8864, -0.7405, -0.4929],
                "nonfinite": [],
            }
        }
    )
