"""Values and gradients of the overlap and focal losses against MONAI, option by option.

Each case maps our options onto MONAI's (mode -> sigmoid/softmax/to_onehot_y, smooth ->
smooth_nr/smooth_dr, weight -> MONAI's weight without the background entry, ...) and compares
the unreduced loss, the 'mean' and 'sum' reductions, and the vector-Jacobian product with a
random upstream gradient. Only combinations both libraries support are compared: MONAI has no
ignore_index for GeneralizedDiceLoss, a different ignore semantic for multilabel targets, and
no per-class weight for a single channel.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from monai.losses import DiceLoss, FocalLoss, GeneralizedDiceLoss, TverskyLoss
from torch import Tensor

from lossreg_service.losses.zoo import dice, focal, generalized_dice, jaccard, tversky

B, C, H, W = 2, 3, 5, 4
MODES = ("binary", "multiclass", "multilabel")
CLASS_WEIGHT = (0.3, 1.5, 2.0)


def _case(mode: str, dtype: torch.dtype, seed: int) -> tuple[Tensor, Tensor]:
    """Random logits and a target for ``mode``."""
    g = torch.Generator().manual_seed(seed)
    channels = 1 if mode == "binary" else C
    x = torch.randn(B, channels, H, W, generator=g, dtype=torch.float64).to(dtype)
    if mode == "multiclass":
        t = torch.randint(0, C, (B, H, W), generator=g)
    elif mode == "binary":
        t = (torch.rand(B, H, W, generator=g) > 0.5).to(dtype)
    else:
        t = (torch.rand(B, C, H, W, generator=g) > 0.5).to(dtype)
    return x, t


def _ignore(t: Tensor, value: int, seed: int) -> Tensor:
    """Mark about a quarter of the pixels with ``value``."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.where(torch.rand(t.shape, generator=g) < 0.25, torch.full_like(t, value), t)


def _monai_target(mode: str, t: Tensor) -> Tensor:
    return t if mode == "multilabel" else t.unsqueeze(1)


def _options(**axes: tuple[Any, ...]) -> Iterator[dict[str, Any]]:
    names = list(axes)
    for values in itertools.product(*axes.values()):
        yield dict(zip(names, values))


def _ids(case: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items())


def _overlap_cases(*, squared: bool, weight: bool, ignore: bool) -> list[dict[str, Any]]:
    cases = []
    for mode in MODES:
        axes: dict[str, tuple[Any, ...]] = {
            "mode": (mode,),
            "from_logits": (True, False),
            "include_background": (True,) if mode == "binary" else (True, False),
            "batch": (False, True),
        }
        if squared:
            axes["squared_pred"] = (False, True)
        if weight and mode != "binary":  # MONAI ignores a weight on one channel
            axes["weight"] = (False, True)
        if ignore:
            axes["ignore_index"] = {
                "binary": (None, 255),
                "multiclass": (None, 255, 1),
                "multilabel": (None,),  # MONAI masks all-zero pixels there: another meaning
            }[mode]
        cases.extend(_options(**axes))
    return cases


def _compare(
    ours: Callable[[Tensor, str], Tensor],
    theirs: Callable[[Tensor, str], Tensor],
    x: Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
) -> None:
    """Same unreduced values, reductions and vector-Jacobian products."""
    for reduction in ("none", "mean", "sum"):
        leaf = x.detach().requires_grad_(True)
        a, b = ours(leaf, reduction), theirs(leaf, reduction)
        b = b.reshape(a.shape)
        torch.testing.assert_close(a, b.to(a.dtype), rtol=rtol, atol=atol)
        upstream = torch.randn(a.shape, generator=torch.Generator().manual_seed(7), dtype=a.dtype)
        (ga,) = torch.autograd.grad(a, leaf, upstream)
        (gb,) = torch.autograd.grad(b, leaf, upstream.to(b.dtype))
        torch.testing.assert_close(ga, gb.to(ga.dtype), rtol=rtol * 10, atol=atol * 10)


def _prepare(case: dict[str, Any], seed: int) -> tuple[Tensor, Tensor, dict[str, Any], dict]:
    """Our input, target, keyword arguments, and MONAI's constructor arguments."""
    mode = case["mode"]
    x, t = _case(mode, torch.float64, seed)
    ignore_index = case.get("ignore_index")
    if ignore_index is not None:
        t = _ignore(t, ignore_index, seed)
    if not case["from_logits"]:
        x = x.softmax(1) if mode == "multiclass" else x.sigmoid()
    include_background = case["include_background"]
    ours = {
        "mode": mode,
        "from_logits": case["from_logits"],
        "include_background": include_background,
        "ignore_index": ignore_index,
    }
    theirs: dict[str, Any] = {
        "include_background": include_background,
        "to_onehot_y": mode == "multiclass",
        "softmax": case["from_logits"] and mode == "multiclass",
        "sigmoid": case["from_logits"] and mode != "multiclass",
    }
    if ignore_index is not None:
        theirs["ignore_index"] = ignore_index
    if case.get("weight"):
        weight = torch.tensor(CLASS_WEIGHT, dtype=torch.float64)
        ours["weight"] = weight
        theirs["weight"] = weight if include_background else weight[1:]
    return x, t, ours, theirs


DICE_CASES = _overlap_cases(squared=True, weight=True, ignore=True)


@pytest.mark.parametrize("case", DICE_CASES, ids=[_ids(c) for c in DICE_CASES])
@pytest.mark.parametrize("smooth", [1e-5, 0.5])
def test_dice_matches_monai(case: dict[str, Any], smooth: float) -> None:
    x, t, ours, theirs = _prepare(case, seed=1)
    squared, batch = case["squared_pred"], case["batch"]

    def run_ours(leaf: Tensor, reduction: str) -> Tensor:
        return dice(
            leaf, t, **ours, smooth=smooth, squared_pred=squared, batch=batch, reduction=reduction
        )

    def run_monai(leaf: Tensor, reduction: str) -> Tensor:
        loss = DiceLoss(
            **theirs,
            squared_pred=squared,
            batch=batch,
            smooth_nr=smooth,
            smooth_dr=smooth,
            reduction=reduction,
        )
        return loss(leaf, _monai_target(case["mode"], t))

    _compare(run_ours, run_monai, x)


@pytest.mark.parametrize("case", DICE_CASES, ids=[_ids(c) for c in DICE_CASES])
def test_jaccard_matches_monai(case: dict[str, Any]) -> None:
    x, t, ours, theirs = _prepare(case, seed=2)
    squared, batch, smooth = case["squared_pred"], case["batch"], 0.1

    def run_ours(leaf: Tensor, reduction: str) -> Tensor:
        return jaccard(
            leaf, t, **ours, smooth=smooth, squared_pred=squared, batch=batch, reduction=reduction
        )

    def run_monai(leaf: Tensor, reduction: str) -> Tensor:
        # MONAI's Jaccard is (2 TP + s) / (2 union + s): our smooth is half of its own.
        loss = DiceLoss(
            **theirs,
            jaccard=True,
            squared_pred=squared,
            batch=batch,
            smooth_nr=2 * smooth,
            smooth_dr=2 * smooth,
            reduction=reduction,
        )
        return loss(leaf, _monai_target(case["mode"], t))

    _compare(run_ours, run_monai, x)


TVERSKY_CASES = [
    {**c, "alpha_beta": ab}
    for c in _overlap_cases(squared=False, weight=False, ignore=True)
    for ab in ((0.5, 0.5), (0.3, 0.7), (0.9, 0.2))
]


@pytest.mark.parametrize("case", TVERSKY_CASES, ids=[_ids(c) for c in TVERSKY_CASES])
def test_tversky_matches_monai(case: dict[str, Any]) -> None:
    x, t, ours, theirs = _prepare(case, seed=3)
    (alpha, beta), batch = case["alpha_beta"], case["batch"]

    def run_ours(leaf: Tensor, reduction: str) -> Tensor:
        return tversky(
            leaf, t, **ours, alpha=alpha, beta=beta, smooth=1e-3, batch=batch, reduction=reduction
        )

    def run_monai(leaf: Tensor, reduction: str) -> Tensor:
        loss = TverskyLoss(
            **theirs,
            alpha=alpha,
            beta=beta,
            smooth_nr=1e-3,
            smooth_dr=1e-3,
            batch=batch,
            reduction=reduction,
        )
        return loss(leaf, _monai_target(case["mode"], t))

    _compare(run_ours, run_monai, x)


GDL_CASES = [
    {**c, "weight_type": w}
    for c in _overlap_cases(squared=False, weight=False, ignore=False)
    for w in ("square", "simple", "uniform")
]


@pytest.mark.parametrize("case", GDL_CASES, ids=[_ids(c) for c in GDL_CASES])
def test_generalized_dice_matches_monai(case: dict[str, Any]) -> None:
    x, t, ours, theirs = _prepare(case, seed=4)
    if case["mode"] == "multiclass":
        t[0][t[0] == 2] = 1  # one class absent from sample 0: the weight fallback is exercised
    batch, weight_type = case["batch"], case["weight_type"]

    def run_ours(leaf: Tensor, reduction: str) -> Tensor:
        return generalized_dice(
            leaf, t, **ours, weight_type=weight_type, batch=batch, reduction=reduction
        )

    def run_monai(leaf: Tensor, reduction: str) -> Tensor:
        loss = GeneralizedDiceLoss(**theirs, w_type=weight_type, batch=batch, reduction=reduction)
        return loss(leaf, _monai_target(case["mode"], t))

    _compare(run_ours, run_monai, x)


def _focal_cases() -> list[dict[str, Any]]:
    cases = []
    for mode in MODES:
        for case in _options(
            mode=(mode,),
            gamma=(0.0, 0.5, 2.0),
            alpha=(None, 0.25),
            weight=(False,) if mode == "binary" else (False, True),
            include_background=(True,) if mode == "binary" else (True, False),
            ignore_index={"binary": (None, 255), "multiclass": (None, 255, 1)}.get(mode, (None,)),
        ):
            cases.append(case)
    return cases


FOCAL_CASES = _focal_cases()


@pytest.mark.parametrize("case", FOCAL_CASES, ids=[_ids(c) for c in FOCAL_CASES])
def test_focal_matches_monai(case: dict[str, Any]) -> None:
    mode = case["mode"]
    x, t = _case(mode, torch.float32, seed=5)  # MONAI's focal loss computes in float32
    ignore_index = case["ignore_index"]
    if ignore_index is not None:
        t = _ignore(t, ignore_index, seed=5)
    weight = torch.tensor(CLASS_WEIGHT) if case["weight"] else None
    include_background = case["include_background"]
    # Pixels that count ([B, H, W]; binary and multiclass targets are [B, H, W] here).
    valid = torch.ones(B, H, W) if ignore_index is None else (t != ignore_index).float()
    monai_t, monai_ignore, monai_background = t, ignore_index, include_background
    if mode == "multiclass" and not include_background:
        # Ours keeps the softmax over all C classes and leaves the class-0 pixels out; MONAI
        # would drop the background logit before its softmax. The same loss in MONAI's terms:
        # all channels, with the class-0 pixels ignored (they still count in our mean).
        monai_ignore = 255 if ignore_index is None else ignore_index
        monai_t, monai_background = torch.where(t == 0, monai_ignore, t), True
    monai = FocalLoss(
        include_background=monai_background,
        to_onehot_y=mode == "multiclass",
        gamma=case["gamma"],
        alpha=case["alpha"],
        weight=None if weight is None else (weight if monai_background else weight[1:]),
        reduction="none",
        use_softmax=mode == "multiclass",
        ignore_index=monai_ignore,
    )

    def per_element(leaf: Tensor) -> Tensor:
        out = monai(leaf, _monai_target(mode, monai_t))
        return out.sum(1) if mode == "multiclass" else out  # our multiclass loss is per pixel

    def run_monai(leaf: Tensor, reduction: str) -> Tensor:
        out = per_element(leaf)
        if reduction == "none":
            return out
        if reduction == "sum":
            return out.sum()
        # Ours averages over the pixels (elements, in sigmoid modes) that are not ignored.
        count = valid.sum() * (1 if mode == "multiclass" else out.shape[1])
        return out.sum() / count

    def run_ours(leaf: Tensor, reduction: str) -> Tensor:
        return focal(
            leaf,
            t,
            weight,
            mode=mode,
            gamma=case["gamma"],
            alpha=case["alpha"],
            ignore_index=ignore_index,
            include_background=include_background,
            reduction=reduction,
        )

    _compare(run_ours, run_monai, x, rtol=1e-5, atol=1e-6)
