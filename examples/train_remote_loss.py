"""Train a small MLP with a loss computed by a lossreg server, in a plain PyTorch loop.

Start a server, then run this script::

    lossreg serve --port 8000 &
    python examples/train_remote_loss.py --url http://127.0.0.1:8000 --loss cross_entropy

It trains the same model twice from the same weights and data, once with the server's loss
(``RemoteLoss``) and once with the local ``torch.nn.functional`` one, and prints how far apart the
final parameters are: float rounding, nothing more. The only line that differs between the two
runs is the one that makes the loss.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lossreg import Client, RemoteLoss

LOCAL: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse_loss": F.mse_loss,
}


def synthetic_data(loss: str, steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of 32 points in 8 dimensions: 4 classes, or 4 regression targets."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        x = torch.randn(32, 8, generator=g)
        if loss == "cross_entropy":
            y = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
        else:
            y = x[:, :4].tanh() + 0.1 * torch.randn(32, 4, generator=g)
        batches.append((x, y))
    return batches


def train(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    seed: int = 0,
) -> nn.Module:
    """An ordinary training loop; ``loss_fn`` may be local or remote."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step, (x, y) in enumerate(batches):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()  # for RemoteLoss: the gradient computed by the server
        optimizer.step()
        if step % 20 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    return model


def main(argv: Sequence[str] | None = None) -> float:
    """Train remotely and locally; return the largest parameter difference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("LOSSREG_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--loss", choices=sorted(LOCAL), default="cross_entropy")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)

    batches = synthetic_data(args.loss, args.steps)
    with Client(args.url, retries=5) as client:
        print(f"remote {args.loss} on {args.url}")
        remote = train(RemoteLoss(args.loss, client=client), batches)
    print(f"local {args.loss}")
    local = train(LOCAL[args.loss], batches)
    gap = max((a - b).abs().max().item() for a, b in zip(remote.parameters(), local.parameters()))
    print(f"largest parameter difference after {args.steps} steps: {gap:.2e}")
    return gap


if __name__ == "__main__":
    main()
