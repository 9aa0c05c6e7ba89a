"""The one shape every codec hands on: a decoded tensor as its array and its KServe datatype."""

from __future__ import annotations

from typing import TypeAlias

import numpy as np

__all__ = ["TypedArray"]

TypedArray: TypeAlias = tuple[np.ndarray, str]
"""``(array, datatype)``: the datatype (``FP32``, ``INT64``, ...) says what the bytes are where
numpy cannot (``BF16`` travels as ``uint16`` words)."""
