"""Small computations of first-party losses run on the event loop (no worker hand-off), and
everything else keeps the worker and its timeout: a hanging plugin loss still answers 504 at
its timeout while small built-in requests go on being answered."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lossreg import Client
from lossreg_service.registry import LossRegistry
from lossreg_service.server import scheduler
from lossreg_service.settings import Settings
from tests.support.server import serve

RELEASE = threading.Event()  # lets the hanging loss's abandoned thread end with the test


def hanging_loss(input: Tensor) -> Tensor:
    """A plugin loss that hangs (until the test releases it)."""
    RELEASE.wait(30)
    return input.sum()


def plain_loss(input: Tensor) -> Tensor:
    """A plugin loss that does nothing odd: plugins never compute on the loop."""
    return (input * input).sum()


class PluginSettings(Settings):
    def build_registry(self) -> LossRegistry:
        registry = super().build_registry()
        registry.register(hanging_loss, "hanging_loss", distribution="lossreg-tests")
        registry.register(plain_loss, "plain_loss", distribution="lossreg-tests")
        return registry


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = PluginSettings(
        device="cpu", log_level="critical", compute_threads=1, compute_timeout_s=2.0
    )
    with serve(settings) as base:
        yield base
    RELEASE.set()


@pytest.fixture
def on_loop(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[bool]]:
    """Per loss, whether each of its computations ran on a thread with a running event loop
    (the server runs in this process, in a thread of its own)."""
    seen: dict[str, list[bool]] = {}

    def record(name: str) -> None:
        try:
            asyncio.get_running_loop()
            loop = True
        except RuntimeError:
            loop = False
        seen.setdefault(name, []).append(loop)

    compute, compute_batch = scheduler.compute, scheduler.compute_batch

    def one(computation: Any, device: torch.device) -> Any:
        record(computation.terms[0].loss.spec.name)
        return compute(computation, device)

    def batch(loss: Any, computations: Any, device: torch.device, **kwargs: Any) -> Any:
        record(loss.spec.name)
        return compute_batch(loss, computations, device, **kwargs)

    monkeypatch.setattr(scheduler, "compute", one)
    monkeypatch.setattr(scheduler, "compute_batch", batch)
    return seen


def test_small_builtin_requests_are_computed_inline_and_answered_correctly(
    url: str, on_loop: dict[str, list[bool]]
) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 10, generator=g), torch.randint(0, 10, (32,), generator=g)
    expected = x.clone().requires_grad_()
    value = F.cross_entropy(expected, y)
    value.backward()
    big = torch.randn(256, 100, generator=g)  # 100 kB: over the inline bound
    with Client(url) as client:
        for _ in range(3):
            result = client.evaluate("cross_entropy", x, y, grad=["input"])
            assert torch.equal(result.loss, value.detach())
            assert torch.equal(result.grads["input"], expected.grad)
        client.evaluate("plain_loss", torch.ones(4))  # a plugin: on a worker
        assert client.evaluate("mse_loss", big, big).item() == 0.0
    # the JSON API takes the same path
    r = httpx.post(
        f"{url}/v1/losses/l1_loss/evaluate",
        json={"inputs": {"input": [1.0, -2.0], "target": [0.0, 0.0]}, "grad": ["input"]},
    )
    assert (
        r.status_code == 200
        and r.json()["loss"] == 1.5
        and r.json()["grads"]["input"]
        == [
            0.5,
            -0.5,
        ]
    )
    assert on_loop["cross_entropy"] == [True] * 3
    assert on_loop["l1_loss"] == [True]
    assert on_loop["plain_loss"] == [False]
    assert on_loop["mse_loss"] == [False]


def test_inline_off_computes_every_request_on_a_worker(on_loop: dict[str, list[bool]]) -> None:
    with serve(Settings(device="cpu", log_level="warning", inline_max_bytes=0)) as base:
        with Client(base) as client:
            assert client.evaluate("mse_loss", torch.ones(3), torch.zeros(3)).item() == 1.0
    assert on_loop["mse_loss"] == [False]


def _running(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("lossreg_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_hanging_plugin_gets_its_504_while_small_builtin_requests_are_answered(
    url: str,
) -> None:
    outcome: dict[str, Any] = {}

    def hang() -> None:
        start = time.monotonic()
        with httpx.Client(base_url=url, timeout=30) as own:
            r = own.post("/v1/losses/hanging_loss/evaluate", json={"inputs": {"input": [1.0]}})
        outcome["status"], outcome["code"] = r.status_code, r.json()["code"]
        outcome["seconds"] = time.monotonic() - start

    hanging = threading.Thread(target=hang)
    hanging.start()
    deadline = time.monotonic() + 10
    while _running(url) != 1:  # it reached the only worker
        assert time.monotonic() < deadline
        time.sleep(0.02)
    x, y = torch.randn(32, 10), torch.randint(0, 10, (32,))
    answered = 0
    with Client(url, retries=0) as client:
        while "status" not in outcome:  # the one worker is stuck all along
            assert client.evaluate("cross_entropy", x, y, grad=["input"]).loss.isfinite()
            answered += 1
            assert time.monotonic() < deadline
    hanging.join()
    assert outcome["status"] == 504 and outcome["code"] == "compute_timeout"
    assert outcome["seconds"] < 2.0 + 1.0  # at its timeout, not when the loss ends
    assert answered >= 5  # small built-in requests kept being answered meanwhile
    with Client(url) as client:  # and the worker was replaced: plugins compute again
        assert client.evaluate("plain_loss", torch.ones(2)).item() == 2.0
