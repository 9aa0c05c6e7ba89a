"""Training with RemoteLoss through a live server ends where training with the local loss does.

A small MLP on synthetic data, trained for N steps twice from the same initial weights: once
with the plain local loss (``torch.nn.functional``, or the zoo's own function run in-process),
once with ``RemoteLoss`` against a real uvicorn server. The final parameters must agree to
float tolerance. Also: gradcheck in float64 through the server, unreduced losses, parameter
schedules and a GradScaler-style scaled backward.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossreg import Client, RemoteLoss
from lossreg_service.registry import LossRegistry
from lossreg_service.settings import Settings

STEPS = 25
BATCH = 16
FEATURES = 8

Batches = list[tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as c:
        yield c


@functools.cache
def _registry() -> LossRegistry:
    return Settings().build_registry()


def _zoo(name: str) -> Callable[..., torch.Tensor]:
    """The zoo loss run in-process: the same function the server runs, without the wire."""
    loss = _registry().get(name)

    def local(input: torch.Tensor, target: torch.Tensor, **params: Any) -> torch.Tensor:
        return loss({"input": input, "target": target}, loss.validate_params(params))

    return local


@dataclasses.dataclass(frozen=True)
class Task:
    """A loss, its local twin (None: the zoo's function in-process), the head size, and a
    synthetic target for a batch."""

    loss: str
    local: Callable[..., torch.Tensor] | None
    outputs: int
    target: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    reshape: tuple[int, ...] = ()  # view the head's output as [B, *reshape]


def _classes(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 4, (x.shape[0],), generator=g)


def _regression(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x[:, :3] * 0.5 + 0.1 * torch.randn(x.shape[0], 3, generator=g)


def _masks(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 3, (x.shape[0], 2, 2), generator=g)


TASKS = {
    "cross_entropy": Task("cross_entropy", F.cross_entropy, 4, _classes, {"label_smoothing": 0.05}),
    "mse_loss": Task("mse_loss", F.mse_loss, 3, _regression),
    "huber_loss": Task("huber_loss", F.huber_loss, 3, _regression, {"delta": 0.5}),
    "dice": Task("dice", None, 12, _masks, {"mode": "multiclass"}, (3, 2, 2)),
    "focal": Task("focal", None, 12, _masks, {"gamma": 2.0}, (3, 2, 2)),
}


def _batches(task: Task, seed: int = 0) -> Batches:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(STEPS):
        x = torch.randn(BATCH, FEATURES, generator=g)
        out.append((x, task.target(x, g)))
    return out


def _model(outputs: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(1234)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, outputs)).to(dtype)


def _train(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Batches,
    reshape: tuple[int, ...] = (),
) -> list[torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    for x, y in batches:
        optimizer.zero_grad()
        out = model(x.to(next(model.parameters()).dtype))
        if reshape:
            out = out.view(out.shape[0], *reshape)
        loss_fn(out, y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def _local_loss(task: Task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    local = _zoo(task.loss) if task.local is None else task.local
    return functools.partial(local, **task.params)


@pytest.mark.parametrize("name", list(TASKS))
def test_training_with_remote_loss_matches_local(client: Client, name: str) -> None:
    task = TASKS[name]
    batches = _batches(task)
    local = _train(_model(task.outputs), _local_loss(task), batches, task.reshape)
    remote_fn = RemoteLoss(task.loss, client=client, **task.params)
    remote = _train(_model(task.outputs), remote_fn, batches, task.reshape)
    initial = [p.detach() for p in _model(task.outputs).parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(initial, local)), "training moved"
    for got, expected in zip(remote, local):
        torch.testing.assert_close(got, expected)


def test_unreduced_loss_with_per_sample_weights_trains_like_local(client: Client) -> None:
    task = TASKS["mse_loss"]
    batches = _batches(task, seed=3)
    weights = torch.linspace(0.1, 2.0, BATCH).unsqueeze(1)

    def weighted(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        return lambda out, y: (fn(out, y) * weights).mean()

    local = _train(_model(3), weighted(functools.partial(F.mse_loss, reduction="none")), batches)
    remote_fn = RemoteLoss("mse_loss", client=client, reduction="none")
    remote = _train(_model(3), weighted(remote_fn), batches)
    for got, expected in zip(remote, local):
        torch.testing.assert_close(got, expected)


def test_a_parameter_schedule_changes_the_loss_every_step(client: Client) -> None:
    task = TASKS["cross_entropy"]
    batches = _batches(task, seed=5)
    schedule = [0.3 * (1 - step / STEPS) for step in range(STEPS)]

    def run(loss_for_step: Callable[[int], Callable[..., torch.Tensor]]) -> list[torch.Tensor]:
        model = _model(4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
        for step, (x, y) in enumerate(batches):
            optimizer.zero_grad()
            loss_for_step(step)(model(x), y).backward()
            optimizer.step()
        return [p.detach() for p in model.parameters()]

    remote_fn = RemoteLoss("cross_entropy", client=client)

    def remote(step: int) -> Callable[..., torch.Tensor]:
        remote_fn.params["label_smoothing"] = schedule[step]
        return remote_fn

    def local(step: int) -> Callable[..., torch.Tensor]:
        return functools.partial(F.cross_entropy, label_smoothing=schedule[step])

    for got, expected in zip(run(remote), run(local)):
        torch.testing.assert_close(got, expected)


def test_scaled_backward_like_a_grad_scaler(client: Client) -> None:
    """fp16 training scales the loss before backward and unscales the gradients after."""
    scale = 2.0**12
    task = TASKS["cross_entropy"]
    (x, y), *_ = _batches(task)
    grads = []
    for loss_fn in (F.cross_entropy, RemoteLoss("cross_entropy", client=client)):
        model = _model(4)
        (loss_fn(model(x), y) * scale).backward()
        grads.append([p.grad / scale for p in model.parameters()])
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("cross_entropy", {"label_smoothing": 0.1}),
        ("mse_loss", {"reduction": "none"}),
        ("smooth_l1_loss", {"beta": 0.5}),
        ("kl_div", {"reduction": "batchmean"}),
    ],
)
def test_gradcheck_through_the_server(client: Client, name: str, params: dict[str, Any]) -> None:
    loss_fn = RemoteLoss(name, client=client, **params)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    if name == "cross_entropy":
        target: torch.Tensor = torch.tensor([0, 3, 1])
    elif name == "kl_div":
        x = x.log_softmax(1)
        target = torch.randn(3, 4, generator=g, dtype=torch.float64).softmax(1)
    else:
        target = torch.randn(3, 4, generator=g, dtype=torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: loss_fn(a, target), (x,))


def test_gradcheck_two_differentiable_inputs(client: Client) -> None:
    loss_fn = RemoteLoss("gaussian_nll_loss", client=client)
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    var = (torch.rand(4, 2, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    target = torch.randn(4, 2, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m, v: loss_fn(m, target, v), (mean, var))
