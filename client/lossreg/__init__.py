"""lossreg: evaluate registered PyTorch losses, and their gradients, on a lossreg server.

    from lossreg import Client, RemoteLoss

    loss_fn = RemoteLoss("cross_entropy", url="http://127.0.0.1:8000", label_smoothing=0.1)
    loss = loss_fn(logits, labels)  # a tensor in the autograd graph
    loss.backward()                 # gradients computed by the server

Importing lossreg does not import torch: `RemoteLoss` is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors
from ._client import DEFAULT_URL, AsyncClient, Client
from ._config import Retries, Timeout
from ._models import ComposeResult, EvaluateResult
from .errors import *  # noqa: F403
from .errors import __all__ as _error_names
from .protocol import ComposeTerm, LossSpecResponse

if TYPE_CHECKING:
    from .remote import RemoteLoss

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "ComposeResult",
    "ComposeTerm",
    "EvaluateResult",
    "LossSpecResponse",
    "RemoteLoss",
    "Retries",
    "Timeout",
    "__version__",
    "errors",
    # lossreg.TimeoutError stays out of __all__: ``import *`` must not shadow the builtin.
    *(n for n in _error_names if n != "TimeoutError"),
]


def __getattr__(name: str) -> Any:
    """Load `RemoteLoss` (and with it torch) only when it is asked for."""
    if name == "RemoteLoss":
        from .remote import RemoteLoss

        return RemoteLoss
    raise AttributeError(f"module 'lossreg' has no attribute {name!r}")
