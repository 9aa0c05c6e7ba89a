"""The loss zoo: segmentation and imbalance losses people keep rewriting, written once.

Each loss is a plain function registered through the ``lossreg.losses`` entry-point group in
lossreg's own ``pyproject.toml``, like any plugin. The mode-aware ones (``mode`` binary,
multiclass or multilabel) share their input checks, one-hot encoding, masking and reductions
in `_common`; their values and gradients are cross-checked against MONAI in the tests.
"""

from __future__ import annotations

from .dice import dice, jaccard, tversky
from .dice_cross_entropy import dice_cross_entropy
from .focal import focal
from .generalized_dice import generalized_dice
from .lovasz import lovasz_hinge, lovasz_softmax
from .regression import log_cosh
from .segmentation_ce import weighted_cross_entropy

__all__ = [
    "dice",
    "dice_cross_entropy",
    "focal",
    "generalized_dice",
    "jaccard",
    "log_cosh",
    "lovasz_hinge",
    "lovasz_softmax",
    "tversky",
    "weighted_cross_entropy",
]
