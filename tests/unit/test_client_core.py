"""The clients' shared core: one retry loop (`_retry.Exchange`) that both clients drive, and
one binding of tensors to a loss's inputs (`_core.bind`) that the clients and RemoteLoss use."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import httpx
import numpy as np
import pytest

from lossreg import AsyncClient, Client, Retries, _retry, errors
from lossreg._core import bind
from lossreg._retry import Exchange
from lossreg._wire import Answer, new_buffer
from lossreg.protocol import LossSpecResponse, TensorSpecResponse

pytestmark = pytest.mark.timeout(30)

RETRIES = Retries(3, backoff=0.1, jitter=0.0)
LISTING = {"losses": [], "count": 0}


def _flaky() -> tuple[list[httpx.Request], Callable[[httpx.Request], httpx.Response]]:
    """A server that refuses one connection, answers 503 once, then lists no losses."""
    seen: list[httpx.Request] = []
    script: list[httpx.Response | Exception] = [
        httpx.ConnectError("refused"),
        httpx.Response(503, json=errors.ServerBusy("queue full").to_dict()),
        httpx.Response(200, json=LISTING),
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    return seen, answer


def test_both_clients_retry_with_the_same_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    sync_waits: list[float] = []
    async_waits: list[float] = []

    async def record(seconds: float) -> None:
        async_waits.append(seconds)

    monkeypatch.setattr(_retry, "sleep", sync_waits.append)
    monkeypatch.setattr(_retry, "async_sleep", record)

    sync_seen, sync_answer = _flaky()
    sync_transport = httpx.MockTransport(sync_answer)
    with Client("http://lossreg.test", retries=RETRIES, transport=sync_transport) as c:
        assert c.losses() == []

    async_seen, async_answer = _flaky()

    async def handle(request: httpx.Request) -> httpx.Response:
        return async_answer(request)

    async def run() -> list[LossSpecResponse]:
        transport = httpx.MockTransport(handle)
        async with AsyncClient("http://lossreg.test", retries=RETRIES, transport=transport) as c:
            return await c.losses()

    assert anyio.run(run) == []
    assert sync_waits == async_waits == pytest.approx([0.1, 0.2])
    for seen in (sync_seen, async_seen):
        assert len(seen) == 3
        assert len({r.headers["X-Request-ID"] for r in seen}) == 1  # one logical request


def _answer(status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> Answer:
    buffer = new_buffer(len(body), None)
    buffer[:] = np.frombuffer(body, dtype=np.uint8)
    return Answer(httpx.Response(status, headers=headers), buffer)


def _exchange(retries: Retries) -> Exchange[bytes]:
    request = httpx.Request("GET", "http://lossreg.test/v2/health/live")
    return Exchange(lambda: request, retries, lambda a: bytes(a.body), rng=lambda: 0.5)


def test_an_exchange_waits_backs_off_and_returns_the_parsed_answer() -> None:
    exchange = _exchange(Retries(3, backoff=1.0, jitter=0.5))
    outcomes = [
        httpx.ConnectError("refused"),
        _answer(503, b'{"error": "busy", "code": "server_busy"}', {"Retry-After": "5"}),
        _answer(200, b'{"live": true}'),
    ]
    waits = []
    for wait, request in exchange:
        waits.append(wait)
        assert request.url.path == "/v2/health/live"
        exchange.record(outcomes.pop(0))
    # first attempt: no wait; then 1.0 * (1 - 0.5 * 0.5); then Retry-After beats 2.0 * 0.75
    assert waits == [None, 0.75, 5.0]
    assert exchange.result() == b'{"live": true}'


def test_an_exchange_gives_up_with_the_servers_error_or_a_transport_error() -> None:
    exchange = _exchange(Retries(1, backoff=0.0))
    with pytest.raises(errors.ServerNotReady):
        for _, _request in exchange:
            exchange.record(_answer(503, b'{"error": "starting", "code": "server_not_ready"}'))
    exchange = _exchange(Retries(2, backoff=0.0))
    with pytest.raises(errors.TransportError, match="after 3 attempts") as info:
        for _, _request in exchange:
            exchange.record(httpx.ConnectError("refused"))
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    exchange = _exchange(Retries(5))
    with pytest.raises(errors.InvalidParameter):  # a 4xx is never retried
        for _, _request in exchange:
            exchange.record(_answer(422, b'{"error": "bad", "code": "invalid_parameter"}'))


def test_an_exchange_refuses_to_go_on_without_an_outcome() -> None:
    exchange = _exchange(Retries(3))
    with pytest.raises(RuntimeError, match="record"):
        for _ in exchange:
            pass
    with pytest.raises(RuntimeError, match="no successful answer"):
        _exchange(Retries(3)).result()


def _tensor(name: str) -> TensorSpecResponse:
    return TensorSpecResponse(name=name, dtypes=["float32"], differentiable=True, optional=False)


SPEC = LossSpecResponse(
    name="mse_loss",
    qualified_name="mse_loss",
    summary="",
    doc="",
    inputs=[_tensor("input"), _tensor("target")],
    tensor_params=[_tensor("weight")],
    params_schema={"properties": {"reduction": {"default": "mean"}}},
    tags=[],
    style="functional",
    entry_point="x:y",
    distribution=None,
    version=None,
    available=True,
)


def test_bind_names_positional_tensors_then_keywords_and_leaves_none_out() -> None:
    assert bind("mse_loss", SPEC, [1, 2], {"weight": 3}) == {"input": 1, "target": 2, "weight": 3}
    assert bind("mse_loss", SPEC, [1, None], {"target": 2, "weight": None}) == {
        "input": 1,
        "target": 2,
    }
    assert bind("mse_loss", None, [], {"anything": 1}) == {"anything": 1}
    with pytest.raises(TypeError, match="at most 3 tensors \\(input, target, weight\\), got 4"):
        bind("mse_loss", SPEC, [1, 2, 3, 4], {})
    with pytest.raises(TypeError, match="two values for input 'input'"):
        bind("mse_loss", SPEC, [1], {"input": 2})


def test_bind_known_only_names_what_the_loss_takes() -> None:
    with pytest.raises(errors.InvalidInput, match="reduction") as info:
        bind("mse_loss", SPEC, [1], {"targte": 2}, known_only=True)
    assert info.value.field == "targte"
    assert bind("mse_loss", SPEC, [1], {"target": 2}, known_only=True) == {"input": 1, "target": 2}
