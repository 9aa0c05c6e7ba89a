"""Losses written the way custom-loss tutorials write them, served as a plugin in the tests.

`losses.py` needs only torch; `fastai_losses.py` needs fastai (its tests skip without it).
`install` registers them through the ``lossreg.losses`` entry-point group of a real (tiny)
installed distribution, exactly as ``pip install`` of a plugin would.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.plugins import make_distribution

DISTRIBUTION = "lossreg-tutorial-losses"

ENTRY_POINTS = {
    "tutorial_mse": "tests.tutorials.losses:my_loss",
    "tutorial_dice": "tests.tutorials.losses:DiceLoss",
    "weighted_ce": "tests.tutorials.losses:WeightedCrossEntropy",
    "clipped_mse": "tests.tutorials.losses:ClippedMSE",
    "accelerate_mse": "tests.tutorials.losses:MSELoss",
    "per_sample_mse": "tests.tutorials.losses:per_sample_mse",
    "flat_ce": "tests.tutorials.losses:FlatCrossEntropy",
    "broken_custom": "tests.tutorials.losses:CustomLoss",
}

FASTAI_ENTRY_POINTS = {
    "fastai_ce_flat": "fastai.losses:CrossEntropyLossFlat",
    "fastai_bce_flat": "fastai.losses:BCEWithLogitsLossFlat",
    "fastai_focal_flat": "fastai.losses:FocalLossFlat",
    "fastai_custom": "tests.tutorials.fastai_losses:SmoothedCELossFlat",
    "fastai_broken_custom": "tests.tutorials.fastai_losses:CustomLoss",
}


def install(root: Path, *, fastai: bool = False) -> Path:
    """Write the distribution's metadata under ``root`` (put ``root`` on sys.path)."""
    entry_points = {**ENTRY_POINTS, **(FASTAI_ENTRY_POINTS if fastai else {})}
    return make_distribution(root, DISTRIBUTION, entry_points)
