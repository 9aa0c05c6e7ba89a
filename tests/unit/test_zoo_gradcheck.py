"""Every zoo loss passes float64 ``torch.autograd.gradcheck`` in each of its modes.

Inputs are small and random, so no two Lovasz errors tie and no hinge sits on its kink (both
are checked, since gradcheck's finite differences would straddle them).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from lossreg_service.losses import zoo

B, C, H, W = 2, 3, 3, 3


def _inputs(mode: str, seed: int, *, probabilities: bool = False) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    channels = 1 if mode == "binary" else C
    x = torch.randn(B, channels, H, W, generator=g, dtype=torch.float64)
    if probabilities:
        x = x.softmax(1) if mode == "multiclass" else x.sigmoid()
    if mode == "multiclass":
        t = torch.randint(0, C, (B, H, W), generator=g)
        t[0, 0, 0] = 255  # one ignored pixel, exercised where the case asks for ignore_index
    else:
        shape = (B, H, W) if mode == "binary" else (B, C, H, W)
        t = (torch.rand(shape, generator=g) > 0.5).double()
    return x, t


CASES: list[tuple[str, str, dict[str, Any]]] = []
for _name in ("dice", "jaccard", "tversky", "generalized_dice", "dice_cross_entropy", "focal"):
    for _mode in ("binary", "multiclass", "multilabel"):
        for _logits in (True, False):
            CASES.append((_name, _mode, {"from_logits": _logits}))
    CASES.append((_name, "multiclass", {"ignore_index": 255, "include_background": False}))
for _opts in ({}, {"batch": True}, {"smooth": 0.0}):
    CASES.append(("dice", "multiclass", _opts))
CASES += [
    ("jaccard", "multilabel", {"squared_pred": True, "batch": True}),
    ("tversky", "binary", {"alpha": 0.2, "beta": 0.8, "batch": True}),
    ("generalized_dice", "multiclass", {"weight_type": "simple", "batch": True}),
    ("focal", "multiclass", {"gamma": 0.5, "alpha": 0.25}),
    ("focal", "multilabel", {"gamma": 0.0, "alpha": 0.75}),
    ("dice_cross_entropy", "multiclass", {"dice_weight": 0.3, "ce_weight": 2.0, "batch": True}),
]


def _ids(case: tuple[str, str, dict[str, Any]]) -> str:
    name, mode, opts = case
    return "-".join([name, mode, *(f"{k}={v}" for k, v in opts.items())])


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_mode_losses(case: tuple[str, str, dict[str, Any]]) -> None:
    name, mode, opts = case
    x, t = _inputs(mode, seed=len(CASES), probabilities=not opts.get("from_logits", True))
    if "ignore_index" not in opts and mode == "multiclass":
        t[0, 0, 0] = 0
    fn = getattr(zoo, name)
    weight = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)[: x.shape[1]]
    extra = {} if name == "generalized_dice" else {"weight": weight}

    def f(leaf: Tensor) -> Tensor:
        return fn(leaf, t, mode=mode, **extra, **opts)

    assert torch.autograd.gradcheck(f, (x.requires_grad_(True),))


def test_weighted_cross_entropy() -> None:
    x, t = _inputs("multiclass", seed=3)
    for balance in ("inverse", "inverse_sqrt", "none"):
        for reduction in ("mean", "none"):

            def f(leaf: Tensor, balance: str = balance, reduction: str = reduction) -> Tensor:
                return zoo.weighted_cross_entropy(
                    leaf, t, balance=balance, ignore_index=255, reduction=reduction
                )

            assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(True),))


def test_log_cosh() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64) * 30  # far into the linear part too
    y = torch.randn(4, 5, generator=g, dtype=torch.float64)
    w = torch.rand(4, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda leaf: zoo.log_cosh(leaf, y, w, reduction="sum"), (x.requires_grad_(True),)
    )


def _min_gap(values: Tensor) -> float:
    flat = values.reshape(-1).sort().values
    return float((flat[1:] - flat[:-1]).min())


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"batch": True},
        {"ignore_index": 255},
        {"mode": "multilabel", "include_background": False},
    ],
    ids=["per-sample", "batch", "ignore", "multilabel"],
)
def test_lovasz_hinge(opts: dict[str, Any]) -> None:
    mode = opts.get("mode", "binary")
    x, t = _inputs(mode, seed=5)
    x = x * 2
    if "ignore_index" in opts:
        t[0, 0, 0] = 255
    errors = 1 - x.reshape(t.shape) * (2 * t.clamp(max=1) - 1)
    assert _min_gap(errors) > 1e-5 and float(errors.abs().min()) > 1e-5  # gradcheck eps: 1e-6

    def f(leaf: Tensor) -> Tensor:
        return zoo.lovasz_hinge(leaf, t, **{"mode": mode, **opts}, reduction="sum")

    assert torch.autograd.gradcheck(f, (x.requires_grad_(True),))


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"batch": True, "classes": "all"},
        {"ignore_index": 255, "include_background": False},
        {"from_logits": False},
    ],
    ids=["per-sample", "batch-all", "ignore", "probabilities"],
)
def test_lovasz_softmax(opts: dict[str, Any]) -> None:
    probabilities = not opts.get("from_logits", True)
    x, t = _inputs("multiclass", seed=6, probabilities=probabilities)
    if "ignore_index" not in opts:
        t[0, 0, 0] = 0
    p = x if probabilities else x.softmax(1)
    assert _min_gap(p) > 1e-5  # errors |1[y = c] - p_c| do not tie

    def f(leaf: Tensor) -> Tensor:
        return zoo.lovasz_softmax(leaf, t, **opts, reduction="none")

    assert torch.autograd.gradcheck(f, (x.requires_grad_(True),))
