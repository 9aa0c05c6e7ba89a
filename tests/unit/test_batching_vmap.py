"""The common losses batch under ``torch.func.vmap``, with each request's own answer.

Every case runs a batch of requests with different data (different ignored pixels, class
counts, weights) through `evaluate_batch` with vmap forced on, as the server does on CUDA, and
compares each request's value and gradients with the loss called alone in plain torch
(``torch.nn.functional`` or the zoo function, and autograd). `Evaluation.vmapped` and the
registry entry's ``vmappable`` show that the vmap path ran, not the one-by-one fallback.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lossreg.errors import InvalidInput
from lossreg_service.engine import evaluate
from lossreg_service.engine.batching import evaluate_batch
from lossreg_service.engine.checks import BatchCheckFailed, any_true
from lossreg_service.losses import zoo
from lossreg_service.registry import Loss, LossRegistry
from tests.support.loss_cases import CASES, make_case, zoo_case

Tensors = dict[str, torch.Tensor]
Maker = Callable[[torch.Generator], Tensors]

README = Path(__file__).resolve().parents[2] / "README.md"


def _fresh(name: str) -> Loss:
    """The loss from a registry of its own: nothing learned yet about vmap."""
    return LossRegistry.from_entry_points().get(name)


def _logits(*shape: int) -> Maker:
    return lambda g: {"input": torch.randn(*shape, generator=g)}


def _classes(n: int, c: int, *spatial: int, high: int | None = None, weight: bool = False,
             log_softmax: bool = False) -> Maker:  # fmt: skip
    """Logits ``[n, c, *spatial]`` and class indices in ``[0, high)`` (``high > c``: some
    requests hold the ignore_index, each a different number of times)."""

    def make(g: torch.Generator) -> Tensors:
        x = torch.randn(n, c, *spatial, generator=g)
        out = {"input": x.log_softmax(1) if log_softmax else x,
               "target": torch.randint(0, high or c, (n, *spatial), generator=g)}  # fmt: skip
        if weight:
            out["weight"] = torch.rand(c, generator=g) + 0.5
        return out

    return make


def _masks(n: int, c: int, *spatial: int, weight: bool = False) -> Maker:
    def make(g: torch.Generator) -> Tensors:
        out = {"input": torch.randn(n, c, *spatial, generator=g),
               "target": (torch.rand(n, c, *spatial, generator=g) > 0.5).float()}  # fmt: skip
        if weight:
            out["weight"] = torch.rand(c, generator=g) + 0.5
        return out

    return make


def _probabilities(g: torch.Generator) -> Tensors:
    return {"input": torch.randn(6, 4, generator=g),
            "target": torch.randn(6, 4, generator=g).softmax(1)}  # fmt: skip


# (loss, parameters, inputs of one request): the common losses in the forms users send.
VMAP_CASES: dict[str, tuple[str, dict[str, Any], Maker]] = {
    "ce": ("cross_entropy", {}, _classes(8, 5)),
    "ce weighted smoothed": ("cross_entropy", {"label_smoothing": 0.1},
                             _classes(8, 5, weight=True)),
    "ce ignore_index": ("cross_entropy", {"ignore_index": 5}, _classes(8, 5, high=6)),
    "ce ignore_index weighted": ("cross_entropy", {"ignore_index": 5, "label_smoothing": 0.1},
                                 _classes(8, 5, high=6, weight=True)),
    "ce spatial": ("cross_entropy", {}, _classes(2, 4, 3, 3)),
    "ce probabilities": ("cross_entropy", {"label_smoothing": 0.2}, _probabilities),
    "ce sum": ("cross_entropy", {"reduction": "sum"}, _classes(8, 5)),
    "nll ignore_index weighted": ("nll_loss", {"ignore_index": 4},
                                  _classes(8, 4, high=5, weight=True, log_softmax=True)),
    "multi_margin": ("multi_margin_loss", {"p": 1, "margin": 0.5}, _classes(6, 4)),
    "focal multiclass": ("focal", {"gamma": 2.0, "alpha": 0.25, "ignore_index": 3},
                         _classes(2, 3, 4, 4, high=4, weight=True)),
    "focal binary": ("focal", {"mode": "binary", "alpha": 0.25}, _masks(2, 1, 5, 5)),
    "focal multilabel": ("focal", {"mode": "multilabel", "include_background": False},
                         _masks(2, 3, 4, 4, weight=True)),
    "dice multiclass": ("dice", {"include_background": False}, _classes(2, 3, 4, 4, weight=True)),
    "dice ignore_index": ("dice", {"ignore_index": 3}, _classes(2, 3, 4, 4, high=4)),
    "dice binary batch": ("dice", {"mode": "binary", "batch": True}, _masks(2, 1, 6, 6)),
    "jaccard multilabel": ("jaccard", {"mode": "multilabel", "squared_pred": True},
                           _masks(2, 3, 4, 4)),
    "tversky": ("tversky", {"alpha": 0.3, "beta": 0.7}, _classes(2, 3, 4, 4)),
    "generalized_dice": ("generalized_dice", {"mode": "multilabel"}, _masks(2, 3, 4, 4)),
    "dice_cross_entropy": ("dice_cross_entropy", {}, _classes(2, 3, 4, 4, weight=True)),
    "weighted_cross_entropy": ("weighted_cross_entropy", {"ignore_index": 3},
                               _classes(2, 3, 4, 4, high=4)),
    "lovasz_softmax": ("lovasz_softmax", {"ignore_index": 3}, _classes(2, 3, 4, 4, high=4)),
    "lovasz_hinge": ("lovasz_hinge", {"mode": "multilabel"}, _masks(2, 3, 4, 4)),
}  # fmt: skip


def _plain(name: str, tensors: Tensors, params: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """The loss called alone in plain torch, and autograd: value, then d loss / d input."""
    fn = getattr(zoo, name) if name in zoo.__all__ else getattr(F, name)
    leaf = tensors["input"].detach().clone().requires_grad_(True)
    value = fn(**{**tensors, "input": leaf}, **params)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


def _items(make: Maker, n: int, seed: int = 0) -> list[tuple[Tensors, None]]:
    g = torch.Generator().manual_seed(seed)
    return [(make(g), None) for _ in range(n)]


@pytest.mark.parametrize("case", list(VMAP_CASES))
@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # multi_margin
def test_each_request_of_a_vmapped_batch_gets_its_own_answer(case: str) -> None:
    name, params, make = VMAP_CASES[case]
    loss = _fresh(name)
    items = _items(make, 5)
    results = evaluate_batch(loss, items, params, grad=["input"], vmap=True)
    assert loss.vmappable is True
    answers = []
    for (tensors, _), result in zip(items, results, strict=True):
        assert not isinstance(result, Exception), result
        assert result.vmapped  # one vmap for the whole batch, not the one-by-one fallback
        value, grad = _plain(name, tensors, params)
        torch.testing.assert_close(result.loss, value)
        torch.testing.assert_close(result.grads["input"], grad)
        answers.append(float(value))
    assert len(set(answers)) == len(answers)  # the requests really differ


@pytest.mark.parametrize("name", ["cross_entropy", "focal", "dice"])
def test_unreduced_losses_take_each_requests_upstream_gradient(name: str) -> None:
    loss = _fresh(name)
    params = {"reduction": "none", **({"ignore_index": 3} if name != "cross_entropy" else {})}
    g = torch.Generator().manual_seed(4)
    items = []
    for tensors, _ in _items(_classes(2, 3, 4, 4, high=4 if name != "cross_entropy" else 3), 4):
        shape = _plain_none_shape(name, tensors, params)
        items.append((tensors, torch.randn(shape, generator=g)))
    results = evaluate_batch(loss, items, params, grad=["input"], vmap=True)
    for (tensors, upstream), result in zip(items, results, strict=True):
        assert not isinstance(result, Exception) and result.vmapped
        alone = evaluate(loss, tensors, params, grad=["input"], grad_loss=upstream)
        torch.testing.assert_close(result.loss, alone.loss)
        torch.testing.assert_close(result.grads["input"], alone.grads["input"])


def _plain_none_shape(name: str, tensors: Tensors, params: dict[str, Any]) -> torch.Size:
    fn = getattr(zoo, name) if name in zoo.__all__ else getattr(F, name)
    return fn(**tensors, **params).shape


@pytest.mark.parametrize(
    ("name", "params", "make", "spoil", "field"),
    [
        ("cross_entropy", {}, _classes(8, 5), lambda t: t["target"].__setitem__(3, 9), "target"),
        ("focal", {"ignore_index": 3}, _classes(2, 3, 4, 4, high=4),
         lambda t: t["target"].__setitem__((1, 2, 2), 7), "target"),
        ("dice", {"mode": "multilabel"}, _masks(2, 3, 4, 4),
         lambda t: t["target"].__setitem__((0, 1, 1, 1), 2.0), "target"),
        ("dice", {}, _classes(2, 3, 4, 4, weight=True),
         lambda t: t["weight"].__setitem__(1, -1.0), "weight"),
    ],
)  # fmt: skip
def test_a_request_failing_a_value_check_gets_its_error_alone(
    name: str, params: dict[str, Any], make: Maker, spoil: Callable[[Tensors], None], field: str
) -> None:
    """The loss's own check runs under vmap for the whole batch; the batch then runs one by
    one, so the spoiled request gets the error it gets alone and the others their answers;
    the next good batch is vmapped again."""
    loss = _fresh(name)
    items = _items(make, 4, seed=7)
    assert all(r.vmapped for r in evaluate_batch(loss, items, params, grad=["input"], vmap=True))
    spoil(items[2][0])
    results = evaluate_batch(loss, items, params, grad=["input"], vmap=True)
    for i, ((tensors, _), result) in enumerate(zip(items, results, strict=True)):
        if i == 2:
            assert isinstance(result, InvalidInput) and result.field == field
            with pytest.raises(InvalidInput) as alone:
                evaluate(loss, tensors, params, grad=["input"])
            assert str(result) == str(alone.value)
        else:
            assert not isinstance(result, Exception)
            value, grad = _plain(name, tensors, params)
            torch.testing.assert_close(result.loss, value)
            torch.testing.assert_close(result.grads["input"], grad)
    assert loss.vmappable is True  # bad data does not mark the loss as unvmappable
    good = [item for i, item in enumerate(items) if i != 2]
    assert all(r.vmapped for r in evaluate_batch(loss, good, params, grad=["input"], vmap=True))


def test_a_loss_that_cannot_vmap_answers_through_the_fallback() -> None:
    loss = _fresh("gaussian_nll_loss")  # torch's own code asks torch.any(var < 0)
    g = torch.Generator().manual_seed(5)
    items = [({"input": torch.randn(4, 3, generator=g), "target": torch.randn(4, 3, generator=g),
               "var": torch.rand(4, 3, generator=g) + 0.1}, None) for _ in range(4)]  # fmt: skip
    results = evaluate_batch(loss, items, {"full": True}, grad=["input"], vmap=True)
    assert loss.vmappable is False
    for (tensors, _), result in zip(items, results, strict=True):
        assert not isinstance(result, Exception) and not result.vmapped
        leaf = tensors["input"].clone().requires_grad_(True)
        value = F.gaussian_nll_loss(leaf, tensors["target"], tensors["var"], full=True)
        (grad,) = torch.autograd.grad(value, leaf)
        assert torch.equal(result.loss, value.detach())  # one by one: bit for bit
        assert torch.equal(result.grads["input"], grad)


def test_any_true_asks_the_whole_batch_under_vmap_only() -> None:
    masks = torch.tensor([[False, False], [False, True]])
    assert any_true(masks[1]) and not any_true(masks[0])
    assert torch.func.vmap(lambda m: torch.tensor(any_true(m)))(masks[:1]).tolist() == [False]
    with pytest.raises(BatchCheckFailed):  # one request's True fails the vmapped batch
        torch.func.vmap(lambda m: torch.tensor(any_true(m)))(masks)

    def checked_square(x: torch.Tensor) -> torch.Tensor:  # torch.func.grad alone: no batch
        assert any_true(x > 0) == bool(x > 0)
        return x * x

    assert float(torch.func.grad(checked_square)(torch.tensor(3.0))) == 6.0
    assert float(torch.func.grad(checked_square)(torch.tensor(-2.0))) == -4.0


# -- the README's list ------------------------------------------------------------------------


def _probe(name: str) -> tuple[bool, bool]:
    """(whether a batch of the loss's example requests runs vmapped, whether torch's vmap
    loops over the batch inside it for want of a batching rule), found by running it."""
    loss = _fresh(name)
    cases = [make_case(name, seed=s) if name in CASES else zoo_case(name, seed=s)
             for s in range(3)]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = evaluate_batch(loss, [(t, None) for t, _ in cases], cases[0][1], vmap=True)
    for (tensors, params), result in zip(cases, results, strict=True):
        assert not isinstance(result, Exception), (name, result)
        alone = evaluate(loss, tensors, params)
        torch.testing.assert_close(result.loss, alone.loss)
        for input_name, grad in alone.grads.items():
            torch.testing.assert_close(result.grads[input_name], grad)
    loops = any("batching rule" in str(w.message) for w in caught)
    return all(r.vmapped for r in results), loops


def _readme_list(label: str) -> set[str]:
    """The names in the README's list item starting with ``label`` (continuation lines too)."""
    text = README.read_text()
    start = text.index(label)
    end = text.find("\n  - ", start + 1)
    item = text[start : end if end != -1 else None].split("\n\n")[0]
    return set(re.findall(r"`(\w+)`", item))


def test_the_readme_lists_the_losses_that_batch_with_vmap() -> None:
    names = [spec.name for spec in LossRegistry.from_entry_points().list()
             if spec.entry_point.startswith("lossreg_service.losses.")]  # fmt: skip
    assert set(names) == set(CASES) | set(zoo.__all__)  # every built-in has example inputs
    probed = {name: _probe(name) for name in names}
    vmapped = {n for n, (ok, _) in probed.items() if ok}
    looping = {n for n, (ok, loops) in probed.items() if ok and loops}
    one_by_one = set(names) - vmapped
    assert {"cross_entropy", "nll_loss", "focal", "dice"} <= vmapped
    assert _readme_list("  - Batch with vmap:") == vmapped, sorted(vmapped)
    assert _readme_list("  - Of those, torch loops inside") == looping, sorted(looping)
    assert _readme_list("  - One by one:") == one_by_one, sorted(one_by_one)
