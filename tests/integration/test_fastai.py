"""fastai beyond ``fit``, with a real `Learner`, against the same run with the local loss.

`fit_one_cycle` with a callback that changes a loss parameter every epoch, `get_preds` with
losses and decoded predictions, `ClassificationInterpretation`, `export`/`load_learner`; and
real `fastai.losses.BaseLoss` subclasses (fastai's own and a tutorial's) served as a plugin.

fastai pins a torch other than the CPU wheel of the default test environment, so these tests
run in their own environment (`.ci/fastai.sh`) and skip where fastai is not importable.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lossreg import Client, RemoteLoss
from lossreg_service.settings import Settings
from tests.support.server import serve
from tests.tutorials import install
from tests.tutorials.losses import WeightedCrossEntropy

with warnings.catch_warnings():  # fastai's imports trip deprecation warnings we do not own
    warnings.simplefilter("ignore")
    pytest.importorskip("fastai")
    import fastai.callback.progress  # noqa: F401 - Learner.no_bar
    import fastai.callback.schedule  # noqa: F401 - Learner.fit_one_cycle
    from fastai.callback.core import Callback
    from fastai.data.core import Datasets
    from fastai.data.transforms import Categorize, ItemGetter
    from fastai.interpret import ClassificationInterpretation
    from fastai.learner import Learner, load_learner
    from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat, FocalLossFlat

    from tests.tutorials.fastai_losses import SmoothedCELossFlat

pytestmark = [
    pytest.mark.fastai,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

CLASSES = 3
EPOCHS = 3
WEIGHTS = [torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.3, 1.0, 4.0]), torch.ones(3)]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = install(tmp_path_factory.mktemp("tutorial-plugin"), fastai=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        with serve(Settings(device="cpu", log_level="warning")) as base:
            yield base


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[Client]:
    with Client(url) as c:
        yield c


def _dls() -> Any:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = ((x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()).tolist()
    items = list(zip(x, y))
    splits = [list(range(96)), list(range(96, 128))]
    tfms = [[ItemGetter(0)], [ItemGetter(1), Categorize(vocab=list(range(CLASSES)))]]
    return Datasets(items, tfms=tfms, splits=splits).dataloaders(bs=16, shuffle=False, device="cpu")


def _learner(loss_func: Any, cbs: list[Any] | None = None) -> Learner:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, CLASSES))
    return Learner(_dls(), model, loss_func=loss_func, cbs=cbs or [])


class ReweightEveryEpoch(Callback):
    """The tutorial's callback: new class weights on the loss at the start of each epoch."""

    def before_epoch(self) -> None:
        self.learn.loss_func.weight = WEIGHTS[self.epoch]


def _fit(loss_func: Any, cbs: list[Any] | None = None) -> Learner:
    learn = _learner(loss_func, cbs)
    with learn.no_logging(), learn.no_bar():
        learn.fit_one_cycle(EPOCHS, 1e-2)
    return learn


def _same_weights(a: Learner, b: Learner) -> None:
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("remote", "local"),
    [
        (lambda c: RemoteLoss("weighted_ce", client=c, weight=WEIGHTS[0]),
         lambda: WeightedCrossEntropy(weight=WEIGHTS[0])),
        (lambda c: RemoteLoss("cross_entropy", client=c, weight=WEIGHTS[0]),
         lambda: nn.CrossEntropyLoss(weight=WEIGHTS[0])),
    ],
    ids=["tutorial-weighted-ce", "cross_entropy"],
)  # fmt: skip
def test_fit_one_cycle_with_a_callback_changing_the_weight_matches_local(
    client: Client, remote: Callable[[Client], RemoteLoss], local: Callable[[], nn.Module]
) -> None:
    remote_learn = _fit(remote(client), [ReweightEveryEpoch()])
    local_learn = _fit(local(), [ReweightEveryEpoch()])
    assert torch.equal(remote_learn.loss_func.weight, WEIGHTS[-1])
    _same_weights(remote_learn, local_learn)
    # and the weight really mattered: without the callback training ends elsewhere
    constant = _fit(local())
    assert not torch.allclose(
        next(constant.model.parameters()), next(local_learn.model.parameters()), atol=1e-4
    )


def test_get_preds_with_loss_interpretation_and_export(client: Client, tmp_path: Path) -> None:
    remote_learn = _fit(RemoteLoss("cross_entropy", client=client))
    local_learn = _fit(CrossEntropyLossFlat())  # fastai's own: softmax activation, argmax
    _same_weights(remote_learn, local_learn)
    with remote_learn.no_bar(), local_learn.no_bar():
        preds, targs, decoded, losses = remote_learn.get_preds(with_loss=True, with_decoded=True)
        l_preds, l_targs, l_decoded, l_losses = local_learn.get_preds(
            with_loss=True, with_decoded=True
        )
    assert remote_learn.loss_func.reduction == "mean", "get_preds restores the reduction"
    torch.testing.assert_close(preds, l_preds)  # probabilities, as fastai's loss gives
    torch.testing.assert_close(preds.sum(1), torch.ones(len(preds)))
    assert torch.equal(decoded, l_decoded) and torch.equal(targs, l_targs)
    torch.testing.assert_close(losses, l_losses)
    assert losses.shape == (32,)

    with remote_learn.no_bar(), local_learn.no_bar():
        interp = ClassificationInterpretation.from_learner(remote_learn)
        l_interp = ClassificationInterpretation.from_learner(local_learn)
    top, idx = interp.top_losses(5)
    l_top, l_idx = l_interp.top_losses(5)
    torch.testing.assert_close(top, l_top)
    assert torch.equal(
        torch.as_tensor(interp.confusion_matrix()), torch.as_tensor(l_interp.confusion_matrix())
    )

    remote_learn.path = tmp_path
    remote_learn.export("remote.pkl")
    loaded = load_learner(tmp_path / "remote.pkl")
    assert isinstance(loaded.loss_func, RemoteLoss)
    x = torch.randn(4, 8)
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        out = loaded.model(x)
    torch.testing.assert_close(loaded.loss_func(out, y), nn.functional.cross_entropy(out, y))


def test_fastai_baseloss_subclasses_served_as_plugins_match_local(client: Client) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, CLASSES, generator=g)
    y = torch.randint(0, CLASSES, (6,), generator=g)
    cases = [
        ("fastai_custom", SmoothedCELossFlat(), y, {}),
        ("fastai_ce_flat", CrossEntropyLossFlat(), y, {}),
        ("fastai_focal_flat", FocalLossFlat(gamma=1.5), y, {"gamma": 1.5}),
        ("fastai_bce_flat", BCEWithLogitsLossFlat(), torch.rand(6, CLASSES, generator=g), {}),
    ]
    for name, local, target, params in cases:
        spec = client.spec(name)
        assert spec.available, spec.error
        xr, xl = x.clone().requires_grad_(), x.clone().requires_grad_()
        value = RemoteLoss(name, client=client, **params)(xr, target)
        value.backward()
        expected = local(xl, target)
        expected.backward()
        torch.testing.assert_close(value, expected.as_subclass(torch.Tensor), msg=name)
        torch.testing.assert_close(xr.grad, xl.grad, msg=name)


def test_a_tutorial_baseloss_that_cannot_be_built_is_unavailable(client: Client) -> None:
    spec = client.spec("fastai_broken_custom")
    assert not spec.available and "loss_cls" in (spec.error or "")


def test_a_learner_trains_with_a_served_baseloss_subclass(client: Client) -> None:
    remote_learn = _fit(RemoteLoss("fastai_custom", client=client))
    local_learn = _fit(SmoothedCELossFlat())
    _same_weights(remote_learn, local_learn)


def test_the_fastai_example_runs(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    example_path = Path(__file__).resolve().parents[2] / "examples" / "fastai_remote_loss.py"
    spec = importlib.util.spec_from_file_location("fastai_remote_loss", example_path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    probs, losses = example.main(["--url", url, "--epochs", "1"])
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))
    assert losses.shape == (256,) and bool((losses > 0).all())
    assert "validation: 256 losses" in capsys.readouterr().out
