"""Use a lossreg server's loss as a fastai ``Learner``'s ``loss_func``.

``RemoteLoss`` is an ``nn.Module`` whose forward returns a tensor in the autograd graph, which is
all a ``Learner`` asks of its ``loss_func``: fastai calls ``loss_func(preds, *targets)`` in
training (then ``loss.backward()``) and under ``torch.no_grad()`` in validation, where
``RemoteLoss`` asks the server for the value only. ``learn.export()`` pickles the learner; the
loss travels as its name, parameters and URL, and opens its own connection when used again.

    lossreg serve --port 8000 &
    pip install fastai
    python examples/fastai_remote_loss.py --url http://127.0.0.1:8000

Beyond ``fit``: a callback sets ``learn.loss_func.weight`` (a tensor parameter) every epoch,
and ``get_preds(with_loss=True)`` gives probabilities (``RemoteLoss.activation``) and per-sample
losses (``RemoteLoss.reduction``), as fastai's own losses do.

Note: installing fastai pulls in torchvision, which may require another torch release than the
one installed. lossreg's CI runs this example in an environment of its own (``.ci/fastai.sh``:
torch 2.14.1, torchvision 0.29.1, fastai), with the fastai tests.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from lossreg import RemoteLoss


def data(n: int, seed: int) -> TensorDataset:
    """Points in 8 dimensions, 4 classes from the signs of the first two coordinates."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def main(argv: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    import fastai.callback.schedule  # noqa: F401 - adds Learner.fit_one_cycle
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.metrics import accuracy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("LOSSREG_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    # fastai's own loaders over plain datasets (get_preds needs fastai loaders).
    dls = DataLoaders.from_dsets(data(1024, seed=0), data(256, seed=1), bs=64, device="cpu")
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

    # The one lossreg line: the loss (and its gradient) is computed by the server.
    loss_func = RemoteLoss("cross_entropy", url=args.url, label_smoothing=0.05)

    class Reweight(Callback):
        """Class weights that change every epoch: set as an attribute, sent with every step."""

        def before_epoch(self) -> None:
            self.learn.loss_func.weight = torch.linspace(1.0, 1.0 + self.epoch, 4)

    learn = Learner(dls, model, loss_func=loss_func, metrics=accuracy, cbs=[Reweight()])
    learn.fit_one_cycle(args.epochs, 1e-2)

    # A schedule can change the loss between epochs without redeploying anything:
    loss_func.label_smoothing = 0.0
    learn.fit(1, 1e-3)

    probs, targets, losses = learn.get_preds(with_loss=True)
    print(f"validation: {len(losses)} losses, mean {losses.mean():.4f}; "
          f"probabilities sum to {probs.sum(1).mean():.4f}")  # fmt: skip
    return probs, losses


if __name__ == "__main__":
    main()
