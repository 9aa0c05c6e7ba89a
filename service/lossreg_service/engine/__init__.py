"""The value+gradient engine: validation, devices, and autograd on the registry's losses."""

from __future__ import annotations

from lossreg.protocol.checks import check_shapes

from ._compute import Evaluation, Term, evaluate, evaluate_terms
from .devices import dtype_name, parse_dtype, resolve_device

__all__ = [
    "Evaluation",
    "Term",
    "check_shapes",
    "dtype_name",
    "evaluate",
    "evaluate_terms",
    "parse_dtype",
    "resolve_device",
]
