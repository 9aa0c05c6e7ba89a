"""Use a lossreg server's loss as a fastai ``Learner``'s ``loss_func``.

``RemoteLoss`` is an ``nn.Module`` whose forward returns a tensor in the autograd graph, which is
all a ``Learner`` asks of its ``loss_func``: fastai calls ``loss_func(preds, *targets)`` in
training (then ``loss.backward()``) and under ``torch.no_grad()`` in validation, where
``RemoteLoss`` asks the server for the value only. ``learn.export()`` pickles the learner; the
loss travels as its name, parameters and URL, and opens its own connection when used again.

    lossreg serve --port 8000 &
    pip install fastai
    python examples/fastai_remote_loss.py --url http://127.0.0.1:8000

Note: installing fastai pulls in torchvision, which may require another torch release than the
one installed (``pip install fastai "torch==$(python -c 'import torch; print(torch.__version__)')"``
keeps yours). lossreg's test suite does not run this example for that reason; the Accelerate
and Lightning loops are tested instead.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lossreg import RemoteLoss


def data(n: int, seed: int) -> TensorDataset:
    """Points in 8 dimensions, 4 classes from the signs of the first two coordinates."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def main(argv: Sequence[str] | None = None) -> None:
    import fastai.callback.schedule  # noqa: F401 - adds Learner.fit_one_cycle
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.metrics import accuracy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("LOSSREG_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    # Plain PyTorch DataLoaders work with fastai's DataLoaders wrapper.
    dls = DataLoaders(
        DataLoader(data(1024, seed=0), batch_size=64, shuffle=True),
        DataLoader(data(256, seed=1), batch_size=128),
    )
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

    # The one lossreg line: the loss (and its gradient) is computed by the server.
    loss_func = RemoteLoss("cross_entropy", url=args.url, label_smoothing=0.05)

    learn = Learner(dls, model, loss_func=loss_func, metrics=accuracy)
    learn.fit_one_cycle(args.epochs, 1e-2)

    # A schedule can change the loss between epochs without redeploying anything:
    loss_func.params["label_smoothing"] = 0.0
    learn.fit(1, 1e-3)


if __name__ == "__main__":
    main()
