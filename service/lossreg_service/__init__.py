"""lossreg's service side: the registry, the value+gradient engine, the HTTP server and the CLI.

Needs the ``server`` extra (``pip install "lossreg[server]"``).
"""

from __future__ import annotations

from .registry import LossDefinition, LossRegistry, TensorSpec, loss

__all__ = ["LossDefinition", "LossRegistry", "TensorSpec", "loss"]
