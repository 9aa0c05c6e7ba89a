"""AsyncClient mirrors Client: same methods, same requests, same results and errors."""

from __future__ import annotations

import inspect

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossreg import AsyncClient, Client, _retry, errors
from tests.support.client_fakes import FakeServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member)
    }


async def test_the_two_clients_mirror_each_other_method_for_method() -> None:
    sync, async_ = _public(Client), _public(AsyncClient)
    assert set(sync) - {"close"} == set(async_) - {"aclose"}
    for name, signature in sync.items():
        if name == "close":
            continue
        assert async_[name].parameters.keys() == signature.parameters.keys(), name
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
    assert inspect.iscoroutinefunction(AsyncClient.aclose)


async def test_evaluate_and_catalog() -> None:
    fake = FakeServer()
    x = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1])
    async with AsyncClient("http://lossreg.test", transport=fake.async_transport()) as client:
        assert await client.health() is True and await client.ready() is True
        names = {s.name for s in await client.losses(pattern="cross*")}
        assert names == {"cross_entropy"}
        result = await client.evaluate("cross_entropy", x, y, grad=["input"])
    F.cross_entropy(x, y).backward()
    assert torch.allclose(result.grads["input"], x.grad)
    with Client("http://lossreg.test", transport=fake.transport()) as sync:
        same = sync.evaluate("cross_entropy", x, y, grad=["input"])
    infer = [b for r, b in zip(fake.requests, fake.bodies) if r.url.path.endswith("/infer")]
    assert infer[0] == infer[1], "both clients send the same bytes"
    assert torch.equal(same.grads["input"], result.grads["input"])


async def test_errors_validation_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[float] = []

    async def record(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(_retry, "async_sleep", record)
    fake = FakeServer()
    async with AsyncClient("http://lossreg.test", transport=fake.async_transport()) as client:
        with pytest.raises(errors.LossNotFound):
            await client.spec("no_such_loss")
        with pytest.raises(errors.ShapeMismatch, match="does not match"):
            await client.evaluate("mse_loss", np.zeros(3), np.zeros(4))
        fake.queue += [
            httpx.ConnectError("refused"),
            httpx.Response(503, json={"error": "busy", "code": "server_busy"}),
        ]
        result = await client.evaluate("mse_loss", np.ones(3), np.zeros(3))
        assert float(result.loss) == 1.0
        assert len(waited) == 2
        fake.queue.append(httpx.ReadTimeout("slow"))
        with pytest.raises(errors.TimeoutError):
            await client.evaluate("mse_loss", np.ones(3), np.zeros(3))
