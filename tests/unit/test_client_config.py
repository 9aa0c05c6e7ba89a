"""Timeout and Retries: the shorthands, equality, repr, and refusal of nonsense."""

from __future__ import annotations

import httpx
import pytest

from lossreg import Client, Retries, Timeout
from lossreg._config import DEFAULT_RETRIES, DEFAULT_TIMEOUT


def test_timeout_shorthands() -> None:
    assert Timeout(5.0).as_dict() == {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}
    assert Timeout(None).as_dict() == {"connect": None, "read": None, "write": None, "pool": None}
    mixed = Timeout(60.0, connect=2.0)
    assert (mixed.connect, mixed.read, mixed.write, mixed.pool) == (2.0, 60.0, 60.0, 60.0)
    assert Timeout(connect=1.0, read=2.0, write=3.0, pool=4.0).pool == 4.0
    assert Timeout(mixed) == mixed and Timeout(mixed) is not mixed


def test_timeout_equality_and_repr() -> None:
    assert Timeout(5.0) == Timeout(5.0, connect=5.0)
    assert Timeout(5.0) != Timeout(5.0, read=6.0)
    assert Timeout(5.0) != 5.0
    assert hash(Timeout(3.0)) == hash(Timeout(3.0))
    assert repr(Timeout(5.0)) == "Timeout(timeout=5.0)"
    assert repr(Timeout(60.0, connect=5.0)) == (
        "Timeout(connect=5.0, read=60.0, write=60.0, pool=60.0)"
    )


def test_timeout_as_httpx() -> None:
    assert Timeout(60.0, connect=5.0).as_httpx() == httpx.Timeout(60.0, connect=5.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Timeout(),
        lambda: Timeout(connect=1.0),
        lambda: Timeout(-1.0),
        lambda: Timeout(5.0, read="1"),
        lambda: Timeout(Timeout(1.0), connect=2.0),
    ],
)
def test_timeout_refuses_nonsense(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_retries_shorthands_equality_repr() -> None:
    assert Retries(5).total == 5 and Retries(0).total == 0
    assert Retries(Retries(2, backoff=0.1)) == Retries(2, backoff=0.1)
    assert Retries(2) != Retries(3)
    assert Retries(2) != 2
    assert repr(Retries(1)) == (
        "Retries(total=1, backoff=0.25, max_backoff=10.0, jitter=0.5, max_retry_after=60.0)"
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"total": -1}, {"total": 1.5}, {"total": True}, {"backoff": -0.1}, {"jitter": 1.5}],
)
def test_retries_refuse_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Retries(**kwargs)  # type: ignore[arg-type]


def test_client_normalises_its_config() -> None:
    with Client("http://127.0.0.1:9", timeout=2.0, retries=4) as client:
        assert client.timeout == Timeout(2.0)
        assert client.retries == Retries(4)
        assert repr(client) == "Client('http://127.0.0.1:9')"
    with Client("http://127.0.0.1:9") as client:
        assert client.timeout == DEFAULT_TIMEOUT and client.retries == DEFAULT_RETRIES


def test_client_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSSREG_URL", "http://lossreg.internal:8000/prefix")
    monkeypatch.setenv("LOSSREG_API_KEY", "secret")
    with Client() as client:
        assert str(client.url) == "http://lossreg.internal:8000/prefix/"
        assert client.api_key == "secret"


def test_client_refuses_a_non_http_url() -> None:
    with pytest.raises(ValueError, match="http"):
        Client("ftp://example.org")
