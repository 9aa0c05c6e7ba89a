"""lossreg: evaluate registered PyTorch losses, and their gradients, on a lossreg server.

from lossreg import Client, RemoteLoss
"""

from __future__ import annotations

from . import errors
from .errors import LossRegError

__version__ = "0.1.0"

__all__ = ["LossRegError", "__version__", "errors"]
