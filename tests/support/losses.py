"""Test plugin losses: computations whose behaviour a test chooses, registered as a plugin's."""

from __future__ import annotations

import time

from torch import Tensor

from lossreg_service.registry import LossRegistry
from lossreg_service.settings import Settings

__all__ = ["SlowSettings", "slow_loss"]


def slow_loss(input: Tensor, *, seconds: float = 0.0) -> Tensor:
    """Sleeps, then sums squares: a loss whose duration the test chooses."""
    time.sleep(seconds)
    return (input * input).sum()


class SlowSettings(Settings):
    """Settings whose registry also holds `slow_loss` (a plugin's, so it runs on a worker)."""

    def build_registry(self) -> LossRegistry:
        registry = super().build_registry()
        registry.register(slow_loss, "slow_loss", distribution="lossreg-tests")
        return registry
