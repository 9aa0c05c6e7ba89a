"""A server restarted in the middle of training is survived: the client's retries carry on.

The server is stopped after some steps and a new one is started on the same port a moment
later; meanwhile the training loop's requests are refused, retried with backoff, and the run
ends exactly where an uninterrupted local run does.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossreg import Client, RemoteLoss, Retries, _retry, errors
from lossreg_service.settings import Settings
from tests.support import server as _server

STEPS = 30
RESTART_AT = 10


def _model() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _train(loss_fn: nn.Module, on_step: object = None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(STEPS):
        if callable(on_step):
            on_step(step)
        x = torch.randn(32, 4, generator=g)
        y = x.sum(1, keepdim=True)
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_training_survives_a_server_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _server.free_port()
    monkeypatch.setattr(_server, "free_port", lambda: port)  # both servers on one port
    settings = Settings(device="cpu", log_level="warning")
    retry_waits: list[float] = []
    real_sleep = _retry.sleep

    def recording_sleep(seconds: float) -> None:
        retry_waits.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(_retry, "sleep", recording_sleep)

    with contextlib.ExitStack() as servers:
        url = servers.enter_context(_server.serve(settings))
        restarted = threading.Event()
        failed: list[BaseException] = []

        def start_again() -> None:
            time.sleep(0.5)  # the client meets a closed port meanwhile
            try:
                servers.enter_context(_server.serve(settings))
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                failed.append(exc)
            restarted.set()

        def restart(step: int) -> None:
            if step == RESTART_AT:
                servers.close()  # stop the first server now
                threading.Thread(target=start_again, daemon=True).start()

        retries = Retries(40, backoff=0.05, max_backoff=0.5)
        with Client(url, retries=retries) as client:
            loss_fn = RemoteLoss("mse_loss", client=client)
            remote = _train(loss_fn, on_step=restart)
        assert restarted.wait(30) and not failed
        assert retry_waits, "the restart must have been noticed and retried"

    local = _train(_LocalMSE())
    for got, expected in zip(remote, local):
        torch.testing.assert_close(got, expected)


def test_without_retries_a_down_server_is_a_transport_error() -> None:
    port = _server.free_port()  # nothing listens there
    with Client(f"http://127.0.0.1:{port}", retries=0) as client:
        with pytest.raises(errors.TransportError) as info:
            client.spec("mse_loss")
    assert info.value.details["attempts"] == 1


class _LocalMSE(nn.Module):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(input, target)
