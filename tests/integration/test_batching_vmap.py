"""A real server with ``batch_vmap="on"`` on CPU: concurrent requests of the common losses share
vmapped batches, and each gets the answer plain torch gives it alone.

Requests differ in their data and, per loss, in their parameters (which keeps them in separate
batches). That the vmap path ran is read from the server's own registry entries
(``Loss.vmappable``, set by the engine when a vmapped batch succeeds), that requests shared
computations from ``/metrics``.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F
from fastapi import FastAPI

from lossreg import Client
from lossreg_service.losses import zoo
from lossreg_service.server import create_app
from lossreg_service.settings import Settings
from tests.support.server import serve

Request = tuple[str, dict[str, torch.Tensor], dict[str, Any]]


def _burst() -> list[Request]:
    """Four requests for each (loss, parameters) pair, each with its own data."""
    g = torch.Generator().manual_seed(11)

    def classes(n: int, c: int, *spatial: int, high: int) -> dict[str, torch.Tensor]:
        return {"input": torch.randn(n, c, *spatial, generator=g),
                "target": torch.randint(0, high, (n, *spatial), generator=g)}  # fmt: skip

    out: list[Request] = []
    for _ in range(4):
        out += [
            ("cross_entropy", classes(16, 10, high=10), {}),
            ("cross_entropy", classes(16, 10, high=11), {"ignore_index": 10,
                                                          "label_smoothing": 0.1}),
            ("nll_loss", {**classes(16, 10, high=10), "weight": torch.rand(10, generator=g)}, {}),
            ("focal", classes(2, 3, 8, 8, high=4), {"gamma": 2.0, "ignore_index": 3}),
            ("dice", classes(2, 3, 8, 8, high=3), {"include_background": False}),
            ("gaussian_nll_loss", {"input": torch.randn(8, 4, generator=g),
                                   "target": torch.randn(8, 4, generator=g),
                                   "var": torch.rand(8, 4, generator=g) + 0.1}, {}),
        ]  # fmt: skip
    return out


def _plain(name: str, tensors: dict[str, torch.Tensor], params: dict[str, Any]) -> tuple[Any, Any]:
    """Value and input gradient of the loss called alone in plain torch."""
    fn = getattr(zoo, name) if name in zoo.__all__ else getattr(F, name)
    leaf = tensors["input"].clone().requires_grad_(True)
    value = fn(**{**tensors, "input": leaf}, **params)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FastAPI]]:
    settings = Settings(device="cpu", log_level="warning", batch_vmap="on",
                        batch_max_delay_us=20_000)  # fmt: skip
    app = create_app(settings)
    with serve(app=app) as url:
        yield url, app


def _computations(url: str, loss: str) -> tuple[float, float]:
    """(computations run, requests answered) for ``loss``, from /metrics."""
    text = httpx.get(url + "/metrics").text
    runs = re.search(rf'^lossreg_compute_duration_seconds_count\{{device="cpu",loss="{loss}"\}} '
                     r"(\S+)", text, re.M)  # fmt: skip
    done = re.search(rf'^lossreg_requests_total\{{loss="{loss}",outcome="success"\}} (\S+)',
                     text, re.M)  # fmt: skip
    return float(runs.group(1)) if runs else 0.0, float(done.group(1)) if done else 0.0


def test_concurrent_requests_are_vmapped_and_answered_as_alone(
    server: tuple[str, FastAPI],
) -> None:
    url, app = server
    burst = _burst()
    with Client(url) as client, concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda r: client.evaluate(r[0], params=r[2], grad=["input"], **r[1]), burst)
        )
    for (name, tensors, params), answer in zip(burst, answers, strict=True):
        value, grad = _plain(name, tensors, params)
        torch.testing.assert_close(answer.loss, value, msg=name)
        torch.testing.assert_close(answer.grads["input"], grad, msg=name)
    registry = app.state.registry
    for name in ("cross_entropy", "nll_loss", "focal", "dice"):
        assert registry.get(name).vmappable is True, name  # a vmapped batch of it succeeded
    assert registry.get("gaussian_nll_loss").vmappable is not True  # fallback, or never batched
    runs, done = _computations(url, "cross_entropy")
    assert done == 8 and runs < done  # the eight requests shared computations


def test_a_bad_request_in_a_vmapped_batch_fails_alone(server: tuple[str, FastAPI]) -> None:
    url, app = server
    g = torch.Generator().manual_seed(12)
    good = torch.randint(0, 3, (2, 8, 8), generator=g)
    bad = good.clone()
    bad[1, 4, 4] = 9

    def send(target: torch.Tensor) -> Any:
        with Client(url) as client:
            try:
                return client.evaluate("focal", torch.randn(2, 3, 8, 8), target, grad=["input"])
            except Exception as exc:  # noqa: BLE001 - the outcome under test
                return exc

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(send, [bad if i == 5 else good for i in range(8)]))
    assert [isinstance(o, Exception) for o in outcomes] == [i == 5 for i in range(8)]
    assert getattr(outcomes[5], "status_code", None) == 422
    assert "class index 9" in str(outcomes[5])
    assert app.state.registry.get("focal").vmappable is not False  # bad data is not a vmap failure
