"""Server errors come back as the classes the server raised; transport failures as their own."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from lossreg import Client, errors
from tests.support.client_fakes import FakeServer


def _leaf_classes(cls: type[errors.LossRegError]) -> list[type[errors.LossRegError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _leaf_classes(sub)
    return out


SERVER_CLASSES = [c for c in _leaf_classes(errors.LossRegError) if c.status_code >= 400]


@pytest.mark.parametrize("cls", SERVER_CLASSES, ids=lambda c: c.__name__)
def test_every_server_error_comes_back_as_its_class(cls: type[errors.LossRegError]) -> None:
    raised = cls("it went wrong", field="input", suggestions=["a", "b"])
    answer = httpx.Response(raised.status_code, json=raised.to_dict())
    fake = FakeServer()
    fake.queue.append(answer)
    with Client("http://lossreg.test", transport=fake.transport(), retries=0) as client:
        with pytest.raises(cls) as info:
            client.spec("mse_loss")
    got = info.value
    assert type(got) is cls
    assert (got.message, got.field) == ("it went wrong", "input")
    assert got.details["suggestions"] == ["a", "b"]


def test_a_real_server_error_names_the_field_and_suggests() -> None:
    with Client("http://lossreg.test", transport=FakeServer().transport()) as client:
        with pytest.raises(errors.LossNotFound) as info:
            client.spec("cross_entropyy")
    assert info.value.suggestions[0] == "cross_entropy"
    assert "cross_entropyy" in str(info.value)


def test_a_foreign_error_body_maps_by_status() -> None:
    fake = FakeServer()
    fake.queue += [
        httpx.Response(404, text="<html>not here</html>"),
        httpx.Response(400, json={"error": "bad tensor"}),  # a plain KServe server
        httpx.Response(502, text="bad gateway"),
    ]
    with Client("http://lossreg.test", transport=fake.transport(), retries=0) as client:
        with pytest.raises(errors.LossNotFound, match="not here"):
            client.spec("x")
        with pytest.raises(errors.InvalidRequest, match="bad tensor"):
            client.spec("x")
        with pytest.raises(errors.LossRegError, match="bad gateway") as info:
            client.spec("x")
    assert type(info.value) is errors.LossRegError


def test_retry_after_header_lands_in_the_error() -> None:
    fake = FakeServer()
    fake.queue.append(httpx.Response(503, json={"error": "busy"}, headers={"Retry-After": "7"}))
    with Client("http://lossreg.test", transport=fake.transport(), retries=0) as client:
        with pytest.raises(errors.ServerBusy) as info:
            client.spec("x")
    assert info.value.retry_after == 7.0


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectTimeout("no answer"), errors.TimeoutError),
        (httpx.ReadTimeout("slow"), errors.TimeoutError),
        (httpx.WriteTimeout("slow"), errors.TimeoutError),
        (httpx.PoolTimeout("pool"), errors.TimeoutError),
        (httpx.ConnectError("refused"), errors.TransportError),
        (httpx.ReadError("reset"), errors.TransportError),
        (httpx.RemoteProtocolError("closed"), errors.TransportError),
        (httpx.UnsupportedProtocol("gopher"), errors.TransportError),
    ],
)
def test_httpx_failures_are_mapped_most_specific_first(
    raised: httpx.RequestError, expected: type[errors.ClientError]
) -> None:
    fake = FakeServer()
    fake.queue.append(raised)
    with Client("http://lossreg.test", transport=fake.transport(), retries=0) as client:
        with pytest.raises(expected) as info:
            client.spec("mse_loss")
    assert type(info.value) is expected
    assert info.value.__cause__ is raised
    assert isinstance(info.value, errors.ClientError)
    assert "http://lossreg.test/v1/losses/mse_loss" in str(info.value)


def test_the_client_error_classes_are_distinct_from_builtins() -> None:
    assert issubclass(errors.TimeoutError, errors.LossRegError)
    assert errors.TimeoutError is not TimeoutError
    import lossreg

    assert lossreg.TimeoutError is errors.TimeoutError
    assert "TimeoutError" not in lossreg.__all__  # `import *` keeps the builtin


def test_a_malformed_answer_is_a_transport_error() -> None:
    fake = FakeServer()
    with Client("http://lossreg.test", transport=fake.transport()) as client:
        client.spec("mse_loss")
        fake.queue.append(httpx.Response(200, content=b"{not json"))
        with pytest.raises(errors.TransportError, match="malformed"):
            client.evaluate("mse_loss", np.zeros(2), np.zeros(2))
        fake.queue.append(httpx.Response(200, json={"model_name": "mse_loss", "outputs": []}))
        with pytest.raises(errors.TransportError, match="no 'loss' output"):
            client.evaluate("mse_loss", np.zeros(2), np.zeros(2))
