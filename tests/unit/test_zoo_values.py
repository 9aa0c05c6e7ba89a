"""Zoo values against independent computations: plain torch, naive loops, known identities.

(Dice, Jaccard, Tversky, generalised Dice and focal are also checked against MONAI in
``test_zoo_monai.py``.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lossreg_service.losses import zoo


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- Lovasz: a naive transcription of Berman et al., and the identity at the vertices --------


def _lovasz_1d(errors: list[float], labels: list[float]) -> float:
    """Lovasz extension of the Jaccard loss at ``errors``, by the definition, in plain Python."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    positives = sum(labels)
    value, previous, hits, misses = 0.0, 0.0, 0.0, 0.0
    for i in order:
        hits += labels[i]
        misses += 1 - labels[i]
        jaccard = 1 - (positives - hits) / (positives + misses)
        value += errors[i] * (jaccard - previous)
        previous = jaccard
    return value


def _hinge_reference(x: Tensor, t: Tensor, ignore: float | None, batch: bool) -> list[float]:
    """One value per (sample, channel) row, or per channel over the batch."""
    rows = []
    samples = [range(x.shape[0])] if batch else [[b] for b in range(x.shape[0])]
    for group in samples:
        for c in range(x.shape[1]):
            errors, labels = [], []
            for b in group:
                for logit, label in zip(x[b, c].flatten().tolist(), t[b, c].flatten().tolist()):
                    if ignore is not None and label == ignore:
                        continue
                    errors.append(max(0.0, 1 - logit * (2 * label - 1)))
                    labels.append(label)
            rows.append(_lovasz_1d(errors, labels) if errors else 0.0)
    return rows


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("ignore", [None, 255.0])
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_lovasz_hinge_matches_the_definition(batch: bool, ignore: float | None, mode: str) -> None:
    channels = 1 if mode == "binary" else 3
    x = torch.randn(3, channels, 5, 4, generator=_gen(1), dtype=torch.float64) * 2
    t = (torch.rand(3, channels, 5, 4, generator=_gen(2)) > 0.6).double()
    if ignore is not None:
        t[torch.rand(t.shape, generator=_gen(3)) < 0.3] = ignore
    expected = _hinge_reference(x, t, ignore, batch)
    out = zoo.lovasz_hinge(x, t, mode=mode, ignore_index=ignore, batch=batch, reduction="none")
    torch.testing.assert_close(out.flatten(), torch.tensor(expected, dtype=torch.float64))


def _softmax_reference(
    p: Tensor, y: Tensor, ignore: int | None, classes: str, include_background: bool
) -> list[float]:
    values = []
    for b in range(p.shape[0]):
        labels = y[b].flatten().tolist()
        keep = [i for i, v in enumerate(labels) if v != ignore]
        losses = []
        for c in range(0 if include_background else 1, p.shape[1]):
            probs = p[b, c].flatten().tolist()
            fg = [1.0 if labels[i] == c else 0.0 for i in keep]
            if classes == "present" and not any(fg):
                continue
            errors = [abs(f - probs[i]) for f, i in zip(fg, keep)]
            losses.append(_lovasz_1d(errors, fg) if errors else 0.0)
        values.append(sum(losses) / len(losses) if losses else 0.0)
    return values


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("include_background", [True, False])
def test_lovasz_softmax_matches_the_definition(
    classes: str, ignore: int | None, include_background: bool
) -> None:
    x = torch.randn(3, 4, 5, 4, generator=_gen(4), dtype=torch.float64)
    y = torch.randint(0, 3, (3, 5, 4), generator=_gen(5))  # class 3 is never present
    if ignore is not None:
        y[torch.rand(y.shape, generator=_gen(6)) < 0.3] = ignore
    expected = _softmax_reference(x.softmax(1), y, ignore, classes, include_background)
    out = zoo.lovasz_softmax(
        x,
        y,
        classes=classes,
        ignore_index=ignore,
        include_background=include_background,
        reduction="none",
    )
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def _iou(pred: Tensor, gt: Tensor) -> float:
    union = (pred | gt).sum().item()
    return (pred & gt).sum().item() / union if union else 1.0


def test_lovasz_softmax_at_one_hot_predictions_is_one_minus_iou() -> None:
    y = torch.randint(0, 3, (1, 6, 6), generator=_gen(7))
    guess = torch.randint(0, 3, (1, 6, 6), generator=_gen(8))
    probs = F.one_hot(guess, 3).permute(0, 3, 1, 2).double()
    expected = np.mean([1 - _iou(guess == c, y == c) for c in range(3) if (y == c).any()])
    out = zoo.lovasz_softmax(probs, y, from_logits=False)
    assert out.item() == pytest.approx(expected)


def test_lovasz_hinge_at_unit_logits_is_twice_one_minus_iou() -> None:
    t = torch.rand(1, 1, 6, 6, generator=_gen(9)) > 0.5
    pred = torch.rand(1, 1, 6, 6, generator=_gen(10)) > 0.5
    logits = pred.double() * 2 - 1
    out = zoo.lovasz_hinge(logits, t.double())
    assert out.item() == pytest.approx(2 * (1 - _iou(pred, t)))


# -- focal: gamma = 0 is cross-entropy; probabilities and logits agree ------------------------


def test_focal_without_focusing_is_cross_entropy() -> None:
    x = torch.randn(2, 4, 3, 3, generator=_gen(11), dtype=torch.float64)
    y = torch.randint(0, 4, (2, 3, 3), generator=_gen(12))
    w = torch.tensor([0.2, 1.0, 3.0, 0.7], dtype=torch.float64)
    torch.testing.assert_close(zoo.focal(x, y, gamma=0.0), F.cross_entropy(x, y))
    torch.testing.assert_close(
        zoo.focal(x, y, w, gamma=0.0, reduction="none"),
        F.cross_entropy(x, y, weight=w, reduction="none"),
    )
    t = (torch.rand(2, 4, 3, 3, generator=_gen(13)) > 0.5).double()
    torch.testing.assert_close(
        zoo.focal(x, t, mode="multilabel", gamma=0.0), F.binary_cross_entropy_with_logits(x, t)
    )


def test_focal_soft_targets_use_the_interpolated_p_t() -> None:
    x = torch.randn(2, 3, 4, generator=_gen(14), dtype=torch.float64)
    t = torch.rand(2, 3, 4, generator=_gen(15), dtype=torch.float64)
    p = x.sigmoid()
    miss = t * (1 - p) + (1 - t) * p
    expected = (miss**2 * F.binary_cross_entropy(p, t, reduction="none")).mean()
    torch.testing.assert_close(zoo.focal(x, t, mode="multilabel"), expected)
    torch.testing.assert_close(zoo.focal(p, t, mode="multilabel", from_logits=False), expected)


@pytest.mark.parametrize(
    "name", ["dice", "jaccard", "tversky", "generalized_dice", "dice_cross_entropy", "focal"]
)
@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_probabilities_and_logits_agree(name: str, mode: str) -> None:
    channels = 1 if mode == "binary" else 3
    x = torch.randn(2, channels, 4, 4, generator=_gen(16), dtype=torch.float64)
    if mode == "multiclass":
        t = torch.randint(0, 3, (2, 4, 4), generator=_gen(17))
        p = x.softmax(1)
    else:
        t = (torch.rand(x.shape, generator=_gen(17)) > 0.5).double()
        p = x.sigmoid()
    fn = getattr(zoo, name)
    torch.testing.assert_close(fn(p, t, mode=mode, from_logits=False), fn(x, t, mode=mode))


def test_tversky_with_equal_halves_is_dice() -> None:
    x = torch.randn(2, 3, 4, 4, generator=_gen(18), dtype=torch.float64)
    y = torch.randint(0, 3, (2, 4, 4), generator=_gen(19))
    torch.testing.assert_close(zoo.tversky(x, y, smooth=0.0), zoo.dice(x, y, smooth=0.0))


def test_dice_by_hand() -> None:
    """Two pixels, probabilities given: 1 - 2*0.8 / (1.0 + 1) for the foreground."""
    p = torch.tensor([[[0.8, 0.2]]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    out = zoo.dice(p, t, mode="binary", from_logits=False, smooth=0.0)
    assert out.item() == pytest.approx(1 - 1.6 / 2.0)
    out = zoo.jaccard(p, t, mode="binary", from_logits=False, smooth=0.0)
    assert out.item() == pytest.approx(1 - 0.8 / (1.0 + 1.0 - 0.8))


# -- dice_cross_entropy = dice + torch's cross-entropy ---------------------------------------


def test_dice_cross_entropy_is_the_weighted_sum_multiclass() -> None:
    x = torch.randn(2, 3, 4, 4, generator=_gen(20), dtype=torch.float64)
    y = torch.randint(0, 3, (2, 4, 4), generator=_gen(21))
    y[0, 0] = 255
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    common = {"ignore_index": 255, "include_background": False}
    expected = 0.7 * zoo.dice(x, y, w, **common) + 1.3 * F.cross_entropy(
        x, y, weight=w, ignore_index=255
    )
    out = zoo.dice_cross_entropy(x, y, w, dice_weight=0.7, ce_weight=1.3, **common)
    torch.testing.assert_close(out, expected)


def test_dice_cross_entropy_is_the_weighted_sum_multilabel() -> None:
    x = torch.randn(2, 3, 4, 4, generator=_gen(22), dtype=torch.float64)
    t = (torch.rand(x.shape, generator=_gen(23)) > 0.5).double()
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    bce = F.binary_cross_entropy_with_logits(x, t, weight=w.view(1, 3, 1, 1), reduction="sum")
    expected = zoo.dice(x, t, w, mode="multilabel", batch=True, reduction="sum") + bce
    out = zoo.dice_cross_entropy(x, t, w, mode="multilabel", batch=True, reduction="sum")
    torch.testing.assert_close(out, expected)


# -- weighted_cross_entropy: weights from numpy counts, fed to torch's cross_entropy ---------


def _numpy_weights(y: np.ndarray, channels: int, balance: str) -> np.ndarray:
    counts = np.bincount(y.ravel(), minlength=channels).astype(np.float64)
    raw = np.zeros(channels)
    present = counts > 0
    raw[present] = 1 / counts[present] if balance == "inverse" else 1 / np.sqrt(counts[present])
    return raw * counts.sum() / (counts * raw).sum()


@pytest.mark.parametrize("balance", ["inverse", "inverse_sqrt"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_cross_entropy_matches_torch(balance: str, reduction: str) -> None:
    x = torch.randn(2, 4, 6, 5, generator=_gen(24), dtype=torch.float64)
    y = torch.randint(0, 3, (2, 6, 5), generator=_gen(25))  # class 3 absent
    y[y == 2] = torch.randint(0, 2, (int((y == 2).sum()),), generator=_gen(26))  # class 2 rare
    y[0, 0, :3] = 2
    y[1, 1] = 255
    kept = y.numpy()[y.numpy() != 255]
    w = torch.from_numpy(_numpy_weights(kept, 4, balance))
    given = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    expected = F.cross_entropy(x, y, weight=w * given, ignore_index=255, reduction=reduction)
    out = zoo.weighted_cross_entropy(
        x, y, given, balance=balance, ignore_index=255, reduction=reduction
    )
    torch.testing.assert_close(out, expected)


def test_inverse_balance_is_the_mean_of_per_class_means() -> None:
    x = torch.randn(1, 3, 8, 8, generator=_gen(27), dtype=torch.float64)
    y = (torch.rand(1, 8, 8, generator=_gen(28)) > 0.9).long() * 2  # classes 0 and 2 only
    per_pixel = F.cross_entropy(x, y, reduction="none")
    expected = np.mean([per_pixel[y == c].mean().item() for c in (0, 2)])
    assert zoo.weighted_cross_entropy(x, y).item() == pytest.approx(expected)
    torch.testing.assert_close(
        zoo.weighted_cross_entropy(x, y, balance="none"), F.cross_entropy(x, y)
    )


# -- log_cosh ---------------------------------------------------------------------------------


def test_log_cosh_matches_its_definition_and_does_not_overflow() -> None:
    x = torch.randn(4, 5, generator=_gen(29), dtype=torch.float64) * 5
    y = torch.randn(4, 5, generator=_gen(30), dtype=torch.float64)
    w = torch.rand(4, 5, generator=_gen(31), dtype=torch.float64)
    torch.testing.assert_close(zoo.log_cosh(x, y, reduction="none"), torch.log(torch.cosh(x - y)))
    torch.testing.assert_close(zoo.log_cosh(x, y, w), (w * torch.log(torch.cosh(x - y))).mean())
    far = torch.tensor([-1000.0, 1000.0])  # cosh overflows float32 beyond ~89
    assert torch.isinf(torch.cosh(far)).all()
    out = zoo.log_cosh(far, torch.zeros(2), reduction="none")
    torch.testing.assert_close(out, torch.full((2,), 1000.0 - math.log(2.0)))
