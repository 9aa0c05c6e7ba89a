"""Retries: exponential backoff with jitter, Retry-After, and what is (not) retried."""

from __future__ import annotations

import email.utils
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from lossreg import Client, Retries, _retry, errors
from lossreg._retry import RetryState, is_retryable, parse_retry_after
from tests.support.client_fakes import FakeServer


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the client's waits instead of waiting."""
    waited: list[float] = []
    monkeypatch.setattr(_retry, "sleep", waited.append)
    return waited


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(fake: FakeServer) -> Iterator[Client]:
    with Client("http://lossreg.test", transport=fake.transport(), retries=3) as c:
        yield c


def _busy(retry_after: str | None = None, code: type[errors.ServerBusy] = errors.ServerBusy):
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(503, json=code("queue full").to_dict(), headers=headers)


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    state = RetryState(Retries(10, backoff=0.5, max_backoff=3.0, jitter=0.0))
    delays = [state.next_delay(errors.ServerBusy("x")) for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_draws_below_the_computed_wait() -> None:
    draws = iter([0.0, 0.5, 0.999])
    state = RetryState(Retries(5, backoff=1.0, jitter=0.5), rng=lambda: next(draws))
    delays = [state.next_delay(httpx.ConnectError("refused")) for _ in range(3)]
    assert delays == pytest.approx([1.0, 2.0 * 0.75, 4.0 * (1 - 0.4995)])


def test_jitter_is_random_by_default() -> None:
    seen = {RetryState(Retries(1, backoff=1.0, jitter=1.0)).backoff() for _ in range(20)}
    assert len(seen) > 1 and all(0.0 <= d <= 1.0 for d in seen)


def test_retry_after_overrides_a_shorter_backoff_and_is_capped() -> None:
    state = RetryState(Retries(5, backoff=0.1, jitter=0.0, max_retry_after=4.0))
    assert state.next_delay(errors.ServerBusy("x"), retry_after=2.0) == 2.0
    assert state.next_delay(errors.ServerBusy("x"), retry_after=100.0) == 4.0
    assert state.next_delay(errors.ServerBusy("x"), retry_after=0.0) == pytest.approx(0.4)


def test_gives_up_after_total_retries() -> None:
    state = RetryState(Retries(2, backoff=0.0))
    assert state.next_delay(errors.ServerBusy("x")) == 0.0
    assert state.next_delay(errors.ServerBusy("x")) == 0.0
    assert state.next_delay(errors.ServerBusy("x")) is None


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (errors.ServerBusy("busy"), True),
        (errors.ServerNotReady("starting"), True),
        (errors.DeviceOutOfMemory("oom"), True),
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("no answer"), True),
        (httpx.RemoteProtocolError("closed"), True),
        (httpx.ReadError("reset"), True),
        (httpx.ReadTimeout("slow"), False),
        (errors.LossUnavailable("plugin broken"), False),
        (errors.InvalidInput("bad"), False),
        (errors.ComputeError("bug"), False),
    ],
)
def test_what_is_retryable(error: BaseException, retryable: bool) -> None:
    assert is_retryable(error) is retryable


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-2") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    date = email.utils.formatdate(1_000_010.0, usegmt=True)
    assert parse_retry_after(date, now=1_000_000.0) == pytest.approx(10.0)


def test_503_is_retried_until_it_succeeds(
    client: Client, fake: FakeServer, sleeps: list[float]
) -> None:
    client.spec("mse_loss")
    fake.queue += [_busy("2"), _busy()]
    result = client.evaluate("mse_loss", np.ones(3, np.float32), np.zeros(3, np.float32))
    assert float(result.loss) == 1.0
    infer = [p for p in fake.paths() if p.endswith("/infer")]
    assert len(infer) == 3
    assert len(sleeps) == 2 and sleeps[0] >= 2.0  # Retry-After honoured
    assert sleeps[1] < 2.0  # then the computed backoff


def test_503_gives_up_after_retries_with_the_servers_error(
    client: Client, fake: FakeServer, sleeps: list[float]
) -> None:
    client.spec("mse_loss")
    fake.queue += [_busy("1", errors.ServerNotReady) for _ in range(4)]
    with pytest.raises(errors.ServerNotReady, match="queue full") as info:
        client.evaluate("mse_loss", np.ones(3, np.float32), np.zeros(3, np.float32))
    assert info.value.retry_after == 1.0
    assert len(sleeps) == 3 and len(fake.requests) == 1 + 4


def test_connection_errors_are_retried(
    client: Client, fake: FakeServer, sleeps: list[float]
) -> None:
    client.spec("mse_loss")
    fake.queue += [httpx.ConnectError("refused"), httpx.RemoteProtocolError("dropped")]
    result = client.evaluate("mse_loss", np.ones(2, np.float64), np.ones(2, np.float64))
    assert float(result.loss) == 0.0 and len(sleeps) == 2


def test_a_request_is_resent_whole_and_with_the_same_request_id(
    client: Client, fake: FakeServer, sleeps: list[float]
) -> None:
    client.spec("mse_loss")
    fake.queue += [httpx.ConnectError("refused")]
    client.evaluate("mse_loss", np.arange(4.0), np.zeros(4))
    first, second = fake.requests[-2:]
    assert fake.bodies[-2] == fake.bodies[-1] and len(fake.bodies[-1]) > 64
    assert first.headers["X-Request-ID"] == second.headers["X-Request-ID"]


def test_connection_errors_give_up_as_transport_error(
    client: Client, fake: FakeServer, sleeps: list[float]
) -> None:
    fake.queue += [httpx.ConnectError("refused") for _ in range(4)]
    with pytest.raises(errors.TransportError, match="after 4 attempts") as info:
        client.spec("mse_loss")
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.details["attempts"] == 4
    assert len(sleeps) == 3


@pytest.mark.parametrize(
    "answer",
    [
        httpx.ReadTimeout("slow"),
        httpx.Response(503, json=errors.LossUnavailable("plugin failed").to_dict()),
        httpx.Response(422, json=errors.InvalidParameter("bad", field="gamma").to_dict()),
        httpx.Response(500, json=errors.ComputeError("bug").to_dict()),
    ],
)
def test_not_retried(client: Client, fake: FakeServer, sleeps: list[float], answer: object) -> None:
    fake.queue.append(answer)  # type: ignore[arg-type]
    with pytest.raises(errors.LossRegError):
        client.spec("mse_loss")
    assert sleeps == [] and len(fake.requests) == 1


def test_retries_zero_never_retries(fake: FakeServer, sleeps: list[float]) -> None:
    fake.queue.append(_busy("1"))
    with Client("http://lossreg.test", transport=fake.transport(), retries=0) as client:
        with pytest.raises(errors.ServerBusy):
            client.spec("mse_loss")
    assert sleeps == []


def test_health_probes_are_not_retried(fake: FakeServer, sleeps: list[float]) -> None:
    fake.queue += [httpx.ConnectError("refused"), _busy("1", errors.ServerNotReady)]
    with Client("http://lossreg.test", transport=fake.transport(), retries=5) as client:
        with pytest.raises(errors.TransportError):
            client.health()
        assert client.ready() is False
        assert client.ready() is True and client.health() is True
    assert sleeps == []
